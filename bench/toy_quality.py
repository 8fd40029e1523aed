"""The toy preset graded with exact answers: how close to the truth, and how grammatical, per sampler.

Trains the ``toy`` preset (or reuses ``--run-dir``), then

1. scores held-out lines of the toy language with the network's NELBO and
   with the language's exact negative log-likelihood (`tdlib.evaluate.bound_against_truth`);
2. samples with every unmasking strategy at L, L/4 and L/16 denoising steps
   (L = the generated positions of a canvas), once with the trained network
   and once with the language's exact denoiser, and scores each cell exactly
   (`tdlib.sweep.quality_vs_steps` with ``language``): the share of grammatical
   sentences, the samples' true NLL per word, and their unigram entropy and
   distinct-2 beside those of text drawn from the language itself.

Even the exact denoiser writes ungrammatical sentences when it reveals many
tokens per step: positions revealed together are drawn independently.

    python bench/toy_quality.py                        # trains the preset (a few minutes), then grades
    python bench/toy_quality.py --run-dir runs/demo-toy --num-samples 100

Writes ``toy_quality.json`` and ``toy_quality.md`` to ``--out`` and prints its
figures last as ``name: value`` lines: ``toy_train_seconds`` (wall-clock time of
training, nan when reused), ``toy_nelbo_over_entropy`` (NELBO / true NLL on the
same held-out lines), ``toy_grammatical_share`` and ``exact_grammatical_share``
(``random`` order, one token per step: the network and the exact denoiser).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from _common import print_figures, setup_threads

from tdlib.checkpoint import training_config
from tdlib.data import get_split, load_corpus, make_examples
from tdlib.evaluate import bound_against_truth
from tdlib.metrics import sample_metrics
from tdlib.model import as_denoiser, load_checkpoint
from tdlib.strategies import STRATEGIES
from tdlib.sweep import quality_vs_steps, steps_table
from tdlib.toylang import ToyLanguage
from tdlib.train import preset, train

METRICS = ("grammatical_share", "possible_share", "true_nll_per_token", "unigram_entropy", "distinct_2")


def parse_args() -> argparse.Namespace:
    """The bench's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="a trained toy run to grade (default: train the preset into OUT/run)")
    parser.add_argument("--out", default="runs/bench-toy-quality", help="folder for the run and the reports")
    parser.add_argument("--num-samples", type=int, default=200, help="samples per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def trained_run(args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    """The run directory to grade and the seconds its training took (nan when it was reused)."""
    if args.run_dir:
        return Path(args.run_dir), math.nan
    run = out / "run"
    if (run / "final-model").is_dir():
        return run, math.nan
    start = time.perf_counter()
    train(preset("toy", output_dir=str(run)), resume=run.exists() and any(run.glob("checkpoint-*")))
    return run, time.perf_counter() - start


def main() -> None:
    """Train or reuse, grade the bound, sweep the samplers, write the reports, print the figures."""
    args = parse_args()
    setup_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run, train_s = trained_run(args, out)
    model, tokenizer = load_checkpoint(run / "final-model")
    config = training_config(run / "final-model")
    length, language = config["max_length"], ToyLanguage()
    lines = get_split(load_corpus("toy", num_lines=1, num_words=length - 2), "valid")  # splits have their own seeds
    examples = make_examples(lines, tokenizer, length, "lines")
    bound = bound_against_truth(as_denoiser(model, masked_only=True), language, examples,
                                mask_id=tokenizer.mask_token_id, seed=args.seed)
    positions = length - 2
    steps = sorted({positions, max(positions // 4, 1), max(positions // 16, 1)})
    sweep = dict(steps=steps, strategies=STRATEGIES, schedules=("linear",), num_samples=args.num_samples,
                 max_length=length, sampling="nucleus", top_p=1.0, seed=args.seed, language=language, progress=True)
    rows = {"network": quality_vs_steps(model, tokenizer, **sweep),
            "exact": quality_vs_steps(language, tokenizer, **sweep)}
    reference_texts = language.sample_lines(args.num_samples, positions, seed=args.seed + 1)
    reference = {**sample_metrics(reference_texts), **language.score(reference_texts)}
    report = [f"# The toy preset graded exactly\n\nNELBO {bound['nelbo_bits_per_char']:.4f} +- "
              f"{bound['nelbo_bits_per_char_stderr']:.4f} bits/char against the true NLL "
              f"{bound['true_bits_per_char']:.4f} on {bound['sequences']} held-out lines (ratio {bound['ratio']:.4f}).",
              "Text drawn from the language itself: " + ", ".join(f"{m} {reference[m]:.4g}" for m in METRICS) + "."]
    for name, cells in rows.items():
        report.append(f"## {name} denoiser, {args.num_samples} samples per cell\n\n" + steps_table(cells, METRICS))
    (out / "toy_quality.md").write_text("\n\n".join(report) + "\n")
    (out / "toy_quality.json").write_text(json.dumps({"bound": bound, "reference": reference, "rows": rows},
                                                     indent=1, default=str))
    print("\n\n".join(report))

    def share(name: str) -> float:
        return next(r["grammatical_share"] for r in rows[name] if r["strategy"] == "random" and r["steps"] == positions)

    print_figures({"toy_train_seconds": train_s, "toy_nelbo_over_entropy": bound["ratio"],
                   "toy_grammatical_share": share("network"), "exact_grammatical_share": share("exact")})


if __name__ == "__main__":
    main()
