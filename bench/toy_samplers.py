"""Where to reveal: every order at matched forward passes on the toy language, judged exactly.

The canvas is L = 46 words from the start state (the ``toy`` preset's length), every
word drawn from its full conditional (nucleus p = 1, temperature 1), the same seed in
every cell, at P = L, L/2, L/4 and L/8 forward passes (rounded up: 46, 23, 12, 6).
The orders: ``random``, ``confidence``, ``dilated``, ``confidence`` with ``--min-gap``
(`GAP`), ``threshold``, ``entropy-bound`` and ``remask-conf``.

- **The exact denoiser** (the language itself, `tdlib.toylang.ToyLanguage`) is graded by
  the share of canvases that stay possible (`tdlib.price.possible_share`: no pass revealed
  words that cannot stand together), and, for the orders whose plan is fixed in advance
  (``random``, ``dilated``), by the exact price of parallel decoding,
  KL(p || q) per token in bits (`tdlib.price.parallel_price`). Text written after a
  clash is never graded.
- **The trained network** is graded by the share of grammatical sentences and by the
  unigram entropy of its words (diversity), beside the language's own text.

``threshold`` and ``entropy-bound`` decide their own passes: each runs once per knob
value with at most one pass per word, and the cell of budget P is the strictest knob
whose mean passes per sample lie in (P/2, P], so that the cells of a column are matched
(the table gives the knob and the passes used; "-" when no knob lands there).

    python bench/toy_samplers.py                     # trains the toy preset first (about 4 min)
    python bench/toy_samplers.py --run-dir runs/course-toy

Writes ``toy_samplers.md``, ``.json`` and ``.png`` to ``--out`` and prints, last, the
figures of the two budgets L/4 and L/8 as ``name: value`` lines:
``exact_random_price_*``, ``exact_dilated_price_*`` (bits per token),
``exact_dilated_possible_*``, ``net_random_grammatical_*``, ``net_dilated_grammatical_*``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

from _common import print_figures, setup_threads

from tdlib.checkpoint import training_config
from tdlib.metrics import unigram_entropy
from tdlib.model import load_checkpoint
from tdlib.price import parallel_price, random_plan
from tdlib.schedules import dilated_plan
from tdlib.strategies import ADAPTIVE
from tdlib.sweep import toy_cell
from tdlib.toylang import ToyLanguage

GAP = 4  # --min-gap of the spaced confidence row: words 4 apart share 0.17 bits, neighbours 2.2
ORDERS = [  # (label, strategy, options)
    ("random", "random", {}),
    ("confidence", "confidence", {}),
    ("dilated", "dilated", {}),
    (f"confidence, gap {GAP}", "confidence", {"min_gap": GAP}),
    ("threshold", "threshold", {}),
    ("entropy-bound", "entropy-bound", {}),
    ("remask-conf", "remask-conf", {}),
]
KNOBS = {  # strict (few tokens per pass) to loose
    "threshold": ("threshold", (0.9, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.005)),
    "entropy-bound": ("entropy_bound", (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)),
}
LABELS = ("L", "L/2", "L/4", "L/8")
PRICED = ("random", "dilated")  # the orders whose plan is fixed in advance
METRICS = {
    "exact": ("possible_share", "price_bits_per_token"),
    "network": ("grammatical_share", "unigram_entropy", "possible_share"),
}
NOTES = {
    "possible_share": "share of canvases the language can produce (no clash); the language's own text has 1",
    "price_bits_per_token": "exact KL(p || q) of the reveal plan, bits per word (the language: 4.18 bits per word)",
    "grammatical_share": "share of sentences the language can produce; its own text has 1",
    "unigram_entropy": "entropy of the pooled word distribution, bits; the language's own text sets the mark",
}


def parse_args() -> argparse.Namespace:
    """The bench's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=None,
                        help="a trained toy run or model directory (default: train the toy preset into OUT/toy-model)")
    parser.add_argument("--out", default="runs/bench-toy-samplers", help="folder for the reports")
    parser.add_argument("--num-samples", type=int, default=200, help="samples (and draws for the price) per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser.parse_args()


def trained_model(args: argparse.Namespace, out: Path) -> Path:
    """The model directory to grade: ``--run-dir``, or the toy preset trained now (kept for the next run)."""
    if args.run_dir:
        path = Path(args.run_dir)
        return path / "final-model" if (path / "final-model").is_dir() else path
    run = out / "toy-model"
    if not (run / "final-model").is_dir():
        from tdlib.train import preset, train

        print(f"training the toy preset into {run} (about 4 minutes on 2 cores)", file=sys.stderr, flush=True)
        train(preset("toy", output_dir=str(run), time_budget_s=None), progress=sys.stderr.isatty())
    return run / "final-model"


def cells_for(denoiser, tokenizer, language: ToyLanguage, length: int, budgets: list[int],
              args: argparse.Namespace) -> dict:
    """{(label, budget): row} for every order; adaptive orders take the strictest knob within the budget."""
    cells = {}
    for label, strategy, options in ORDERS:
        cell = functools.partial(toy_cell, denoiser, tokenizer, language, length=length, strategy=strategy,
                                 num_samples=args.num_samples, seed=args.seed, label=label, **options)
        if strategy in ADAPTIVE:
            name, values = KNOBS[strategy]
            grid = [cell(num_steps=length, **{name: v}) for v in values]
            for budget in budgets:  # matched: more than half the budget's passes, and no more than the budget
                fits = [r for r in grid if budget / 2 < r["passes"] <= budget + 1e-9]
                if fits:
                    cells[label, budget] = {**fits[0], "knob": f"{name} {fits[0][name]:g}"}
        else:
            for budget in budgets:
                cells[label, budget] = cell(num_steps=budget)
        print(f"  {label} done", file=sys.stderr, flush=True)
    return cells


def prices(language: ToyLanguage, length: int, budgets: list[int], args: argparse.Namespace) -> dict:
    """{(order, budget): PlanPrice} for the orders whose plan is fixed in advance."""
    out = {}
    for budget in budgets:
        out["random", budget] = parallel_price(language, lambda g, k=budget: random_plan(length, k, g), length=length,
                                               num_samples=args.num_samples, seed=args.seed)
        out["dilated", budget] = parallel_price(language, dilated_plan(length, budget),
                                                num_samples=args.num_samples, seed=args.seed)
    return out


def table(cells: dict, budgets: list[int], metric: str) -> str:
    """One Markdown table of ``metric``: orders down, pass budgets across."""
    lines = [f"**{metric}**: {NOTES[metric]}.", "",
             "| order | " + " | ".join(f"{lab} = {b}" for lab, b in zip(LABELS, budgets, strict=True)) + " |",
             "|---|" + "---:|" * len(budgets)]
    for label, _, _ in ORDERS:
        values = []
        for b in budgets:
            row = cells.get((label, b))
            value = None if row is None else row.get(metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                values.append("-")
                continue
            value = 0.0 if abs(value) < 5e-4 else value  # a price is >= 0; -0.000 is rounding
            text = f"{value:.3f}" + (f" ± {row['price_stderr']:.3f}" if metric == "price_bits_per_token" else "")
            if "knob" in row:
                text += f" ({row['knob']}, {row['passes']:.1f} passes)"
            values.append(text)
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def figure(results: dict, budgets: list[int], reference: dict, path: Path) -> None:
    """Three panels against forward passes: the exact price, the exact possible share, the network's grammar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("exact", "price_bits_per_token", "exact price, bits per word (lower is better)"),
              ("exact", "possible_share", "exact denoiser: canvases still possible"),
              ("network", "grammatical_share", "network: grammatical share of sentences"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (name, metric, title) in zip(axes, panels, strict=True):
        for label, _, _ in ORDERS:
            rows = sorted((r for (lab, _), r in results[name].items() if lab == label and metric in r
                           and not math.isnan(r[metric])), key=lambda r: r["passes"])
            if rows:
                ax.plot([r["passes"] for r in rows], [r[metric] for r in rows], marker="o", ms=3, label=label)
        if metric == "grammatical_share":
            ax.axhline(reference["grammatical_share"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set(xlabel="forward passes per sample", title=title)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def headline(results: dict, budgets: list[int]) -> dict:
    """The printed figures: every other order's share at L/4 and L/8 for context, then the ten targets, last."""
    exact, net = results["exact"], results["network"]
    context, targets = {}, {}
    for suffix, budget in (("quarter", budgets[2]), ("eighth", budgets[3])):
        for label, _, _ in ORDERS:
            if label in PRICED:
                continue
            key = label.replace("-", "_").replace(", gap ", "_gap")
            context[f"exact_{key}_possible_{suffix}"] = exact.get((label, budget), {}).get("possible_share", math.nan)
            context[f"net_{key}_grammatical_{suffix}"] = net.get((label, budget), {}).get("grammatical_share", math.nan)
        context[f"exact_random_possible_{suffix}"] = exact["random", budget]["possible_share"]
        targets |= {f"exact_random_price_{suffix}": exact["random", budget]["price_bits_per_token"],
                    f"exact_dilated_price_{suffix}": exact["dilated", budget]["price_bits_per_token"],
                    f"exact_dilated_possible_{suffix}": exact["dilated", budget]["possible_share"],
                    f"net_random_grammatical_{suffix}": net["random", budget]["grammatical_share"],
                    f"net_dilated_grammatical_{suffix}": net["dilated", budget]["grammatical_share"]}
    return {**context, **targets}


def main() -> None:
    """Train (if needed), sweep both denoisers, price the fixed plans, write the reports, print the figures."""
    args = parse_args()
    setup_threads(args.threads)
    began = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = trained_model(args, out)
    model, tokenizer = load_checkpoint(folder)
    length, language = training_config(folder)["max_length"] - 2, ToyLanguage()
    budgets = [math.ceil(length / d) for d in (1, 2, 4, 8)]  # as LABELS
    results = {}
    for name, denoiser in (("exact", language), ("network", model)):
        print(f"{name} denoiser", file=sys.stderr, flush=True)
        results[name] = cells_for(denoiser, tokenizer, language, length, budgets, args)
    for (order, budget), price in prices(language, length, budgets, args).items():
        results["exact"][order, budget] |= {"price_bits_per_token": price.bits_per_token,
                                            "price_stderr": price.stderr}
    own = language.sample_lines(args.num_samples, length, seed=args.seed + 1)
    reference = {**language.score(own), "unigram_entropy": unigram_entropy(own)}
    report = [f"# Where to reveal: orders on the toy language at matched forward passes\n\n"
              f"L = {length} words, {args.num_samples} samples (and draws of the price) per cell, nucleus p = 1, "
              f"seed {args.seed}, model `{folder}`. The language's own text: grammatical share "
              f"{reference['grammatical_share']:.3f}, unigram entropy {reference['unigram_entropy']:.3f} bits."]
    for name, cells in results.items():
        report.append(f"## {name} denoiser\n\n" + "\n\n".join(table(cells, budgets, m) for m in METRICS[name]))
    (out / "toy_samplers.md").write_text("\n\n".join(report) + "\n")
    serial = {name: [{**row, "budget": b} for (_, b), row in cells.items()] for name, cells in results.items()}
    (out / "toy_samplers.json").write_text(json.dumps({"reference": reference, **serial}, indent=1))
    figure(results, budgets, reference, out / "toy_samplers.png")
    print("\n\n".join(report))
    print(f"seconds: {time.perf_counter() - began:.0f}", file=sys.stderr)
    print_figures(headline(results, budgets))


if __name__ == "__main__":
    main()
