"""The exact price of parallel reveals on the toy language: random against dilated order at matched passes.

On the course's canvas of L = 46 words from the start state, with the language's
exact denoiser, a sampler that reveals several words per pass writes text whose
distribution q differs from the language p; `tdlib.price.parallel_price` gives
KL(p || q) per word exactly for each draw, averaged here over ``--num-samples``
draws. ``random`` draws a new uniformly random reveal plan per draw (sizes of the
linear schedule), ``dilated`` is `tdlib.price.dilated_plan` (passes of words
about K apart, same sizes). Also the mutual information of two words d apart on
the empty canvas, d = 1..10, which is why spacing works.

    python bench/toy_price.py --num-samples 200 --passes 12,6

Writes ``toy_price.json`` and ``toy_price.png`` (price by passes) and
``toy_information.png`` to ``--out``; prints ``price_<order>_<K>``,
``price_<order>_<K>_se``, ``seconds_<order>_<K>`` and ``mi_d<d>`` lines last.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from _common import setup_threads

from tdlib.plots import save_figure
from tdlib.price import information_by_distance, parallel_price, random_plan
from tdlib.price_plots import information_by_distance_figure, price_by_plan_figure
from tdlib.schedules import dilated_plan
from tdlib.toylang import ToyLanguage


def parse_args() -> argparse.Namespace:
    """The bench's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench-toy-price", help="folder for the reports")
    parser.add_argument("--length", type=int, default=46, help="words per canvas")
    parser.add_argument("--passes", default="12,6", help="comma-separated pass counts")
    parser.add_argument("--num-samples", type=int, default=200, help="draws from the language per cell")
    parser.add_argument("--max-distance", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    return parser.parse_args()


def main() -> None:
    """Measure every (order, passes) cell, the information by distance, write the reports, print the figures."""
    args = parse_args()
    setup_threads(args.threads)
    language, figures, results = ToyLanguage(), {}, {"random": [], "dilated": []}
    for passes in [int(p) for p in args.passes.split(",")]:
        plans = {"random": functools.partial(random_plan, args.length, passes),
                 "dilated": dilated_plan(args.length, passes)}
        for order, plan in plans.items():
            start = time.perf_counter()
            price = parallel_price(language, plan, length=args.length, num_samples=args.num_samples, seed=args.seed)
            seconds = time.perf_counter() - start
            results[order].append((passes, price.bits_per_token, price.stderr))
            figures |= {f"price_{order}_{passes}": price.bits_per_token, f"price_{order}_{passes}_se": price.stderr,
                        f"seconds_{order}_{passes}": seconds}
            print(f"  {order} at {passes} passes done", file=sys.stderr, flush=True)
    start = time.perf_counter()
    info = information_by_distance(language, args.length, args.max_distance)
    figures["seconds_information"] = time.perf_counter() - start
    figures |= {f"mi_d{d}": float(v) for d, v in enumerate(info.tolist(), start=1)}
    rate = language.entropy_rate()["bits_per_token"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy_price.json").write_text(json.dumps({"args": vars(args), "results": results, "figures": figures,
                                                    "entropy_rate_bits_per_token": rate}, indent=1))
    save_figure(price_by_plan_figure(results, entropy_rate=None), out / "toy_price.png")
    save_figure(information_by_distance_figure(info, label=f"toy language, L = {args.length}"),
                out / "toy_information.png")
    figures["entropy_rate_bits_per_token"] = rate
    for name, value in figures.items():
        print(f"{name}: {value:.6g}")


if __name__ == "__main__":
    main()
