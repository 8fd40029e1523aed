"""Every sampler at matched forward passes on the toy language, judged by its exact answers.

For the language's exact denoiser and for a trained ``toy`` model (``--run-dir``),
every strategy of `tdlib.strategies` writes ``--num-samples`` canvases of L generated
words (L = the model's ``max_length`` - 2) with pass budgets P = L, L/2, L/4,
L/8, L/16 (and 2L, where remasking can take tokens back), nucleus p = 1 at
temperature 1, the same seed in every cell. Each cell is scored exactly
(`tdlib.toylang.ToyLanguage.score`): the share of grammatical sentences, the true
NLL per word (nats, over the possible samples) and the unigram entropy (bits)
beside that of text drawn from the language itself.

Fixed-pass strategies run ``num_steps = P``. ``threshold`` and ``entropy-bound``
decide their own passes: each runs once per knob value of a grid with at most
one forward pass per word (``num_steps = L``), and the cell of budget P is the
strictest knob whose mean passes per sample (`Trajectory.passes_per_row`) are at
most P; the table shows the knob and the passes it used. Three more rows generate
blocks of 8 words left to right (``block_length``; semi-autoregressive, as in LLaDA):
``random``, ``confidence`` and ``threshold`` within blocks. The exact denoiser is wrapped
(`ToyLanguage.guarded`) so that a canvas made impossible by parallel reveals goes on being filled.

    python bench/toy_samplers.py --run-dir /tmp/exp/toy2400 --num-samples 200

Writes ``toy_samplers.md``, ``.json`` and ``.png`` to ``--out`` and prints the
figures last as ``name: value`` lines, among them ``best_gain_at_quarter_passes``
(the best strategy's grammatical share minus ``random``'s, exact denoiser, L/4
passes, in points) and ``threshold_pass_fraction`` (the fewest mean passes, as a
fraction of L, with which ``threshold`` decoding matches the grammatical share of
``random`` at L passes, trained model; nan if no knob does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from _common import print_figures, setup_threads

from tdlib.checkpoint import training_config
from tdlib.errors import check
from tdlib.metrics import unigram_entropy
from tdlib.model import load_checkpoint
from tdlib.strategies import ADAPTIVE, REMASKING, STRATEGIES
from tdlib.sweep import toy_cell
from tdlib.toylang import ToyLanguage

KNOBS = {  # strict (few tokens per pass) to loose
    "threshold": ("threshold", (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)),
    "entropy-bound": ("entropy_bound", (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)),
}
LABELS = ("L", "L/2", "L/4", "L/8", "L/16", "2L")  # the pass budgets, in this order
BLOCK = 8  # semi-autoregressive rows: blocks of this many words, left to right
# the rows of the comparison: (label, strategy, block_length)
SETTINGS = [(s, s, None) for s in STRATEGIES] + [
    (f"{s}, blocks of {BLOCK}", s, BLOCK) for s in ("random", "confidence", "threshold")]
METRICS = ("grammatical_share", "true_nll_per_token", "unigram_entropy")
NOTES = {
    "grammatical_share": "share of sentences the language can produce; higher is better, the language's own text has 1",
    "true_nll_per_token": "-log p(sample) per word, nats, possible samples only; the language's own text sets the mark "
                          "(below it: too predictable, above: too unlikely)",
    "unigram_entropy": "entropy of the pooled word distribution, bits; the language's own text sets the mark",
}


def parse_args() -> argparse.Namespace:
    """The bench's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a trained toy run (or its final-model directory)")
    parser.add_argument("--out", default="runs/bench-toy-samplers", help="folder for the reports")
    parser.add_argument("--num-samples", type=int, default=200, help="samples per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    return parser.parse_args()


def model_dir(run_dir: str) -> Path:
    """The model directory of a run directory, or the directory itself."""
    path = Path(run_dir)
    return path / "final-model" if (path / "final-model").is_dir() else path


def run_cell(denoiser, tokenizer, language: ToyLanguage, length: int, setting: tuple, num_steps: int,
             args: argparse.Namespace, knobs: dict) -> dict:
    """One cell for ``setting`` (label, strategy, blocks): `tdlib.sweep.toy_cell` with the bench's samples and seed."""
    label, strategy, block_length = setting
    return toy_cell(denoiser, tokenizer, language, length=length, num_steps=num_steps, strategy=strategy,
                    block_length=block_length, num_samples=args.num_samples, seed=args.seed, label=label, **knobs)


def sweep(denoiser, tokenizer, language: ToyLanguage, length: int, budgets: list[int],
          args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Cells {(setting, budget): row} at matched passes, and every row of the adaptive knob grids."""
    cells, grid = {}, []
    for setting in SETTINGS:
        label, strategy, block_length = setting
        if strategy in ADAPTIVE:
            name, values = KNOBS[strategy]
            rows = [run_cell(denoiser, tokenizer, language, length, setting, length, args, {name: v})
                    for v in values]
            grid += rows
            for budget in budgets:
                fits = [r for r in rows if r["passes"] <= budget + 1e-9]
                if fits:
                    cells[label, budget] = fits[0]  # the strictest knob within the budget
        else:
            # 2L only where extra passes can change the result (random is the reference there);
            # blocks need at least one pass each
            for budget in budgets:
                if (budget > length and strategy not in (*REMASKING, "random")) or (
                        block_length and budget < -(-length // block_length)):
                    continue
                cells[label, budget] = run_cell(denoiser, tokenizer, language, length, setting, budget, args, {})
        print(f"  {label} done", file=sys.stderr, flush=True)
    return cells, grid


def table(cells: dict, budgets: list[int], metric: str, length: int) -> str:
    """One Markdown table of ``metric``: strategies down, pass budgets across; adaptive cells say knob and passes."""
    names = dict(zip(budgets, (f"{label} = {b}" for label, b in zip(LABELS, budgets, strict=True)), strict=True))
    lines = [f"**{metric}**: {NOTES[metric]}.", "",
             "| strategy | " + " | ".join(names[b] for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for label, strategy, _ in SETTINGS:
        values = []
        for b in budgets:
            row = cells.get((label, b))
            if row is None:
                values.append("-")
                continue
            text = f"{row[metric]:.3f}"
            if strategy in ADAPTIVE:
                knob = KNOBS[strategy][0]
                text += f" ({knob} {row[knob]:g}, {row['passes']:.1f} passes)"
            values.append(text)
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def figure(results: dict, budgets: list[int], reference: dict, path: Path) -> None:
    """Grammatical share against forward passes, one panel per denoiser, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (name, (cells, grid)) in zip(axes, results.items(), strict=True):
        for label, strategy, block_length in SETTINGS:
            rows = ([r for r in grid if r["setting"] == label] if strategy in ADAPTIVE
                    else [cells[label, b] for b in budgets if (label, b) in cells])
            rows = sorted(rows, key=lambda r: r["passes"])
            style = ":" if block_length else "--" if strategy in ADAPTIVE else "-"
            ax.plot([r["passes"] for r in rows], [r["grammatical_share"] for r in rows], style, marker="o",
                    markersize=3, label=label)
        ax.axhline(reference["grammatical_share"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("forward passes per sample (mean)")
        ax.set_title(f"{name} denoiser")
    axes[0].set_ylabel("grammatical share of sentences")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def headline(results: dict, length: int, budgets: list[int]) -> dict:
    """The printed figures: gains at L/4 passes (exact), threshold's passes to match random at L (network)."""
    quarter = budgets[2]
    exact_cells, _ = results["exact"]
    at_quarter = {s: r["grammatical_share"] for (s, b), r in exact_cells.items() if b == quarter}
    best = max(at_quarter, key=at_quarter.get)
    net_cells, net_grid = results["network"]
    goal = net_cells["random", length]["grammatical_share"]
    out = {"generated_words_L": length, "quarter_passes": quarter,
           "best_strategy_at_quarter_passes": best,
           "best_gain_at_quarter_passes": 100 * (at_quarter[best] - at_quarter["random"]),
           "random_grammatical_share_at_quarter_passes_exact": at_quarter["random"],
           "random_grammatical_share_at_L_network": goal}
    for label, strategy, _ in SETTINGS:
        if strategy not in ADAPTIVE:
            continue
        matching = [r for r in net_grid if r["setting"] == label and r["grammatical_share"] >= goal]
        fewest = min(matching, key=lambda r: r["passes"]) if matching else None
        key = label.replace("-", "_").replace(", blocks of ", "_blocks")
        out[f"{key}_pass_fraction"] = fewest["passes"] / length if fewest else math.nan
        out[f"{key}_knob_at_match"] = fewest[KNOBS[strategy][0]] if fewest else math.nan
    for strategy in REMASKING:  # in points, against random at L (random at 2L wastes its extra passes)
        out[f"{strategy.replace('-', '_')}_gain_at_2L_network"] = 100 * (
            net_cells[strategy, 2 * length]["grammatical_share"] - goal)
    return out


def main() -> None:
    """Sweep both denoisers, write the reports, print the figures."""
    args = parse_args()
    setup_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = model_dir(args.run_dir)
    model, tokenizer = load_checkpoint(folder)
    config = training_config(folder)
    length, language = config["max_length"] - 2, ToyLanguage()
    budgets = [max(length // d, 1) for d in (1, 2, 4, 8, 16)] + [2 * length]  # as LABELS
    check(len(set(budgets)) == len(budgets), f"L = {length} words is too short for budgets down to L/16")
    results = {}
    for name, denoiser in (("exact", language), ("network", model)):
        print(f"{name} denoiser", file=sys.stderr, flush=True)
        results[name] = sweep(denoiser, tokenizer, language, length, budgets, args)
    own = language.sample_lines(args.num_samples, length, seed=args.seed + 1)
    reference = {**language.score(own), "unigram_entropy": unigram_entropy(own)}
    report = [f"# Samplers on the toy language at matched forward passes\n\nL = {length} generated words, "
              f"{args.num_samples} samples per cell, nucleus p = 1, seed {args.seed}. The exact denoiser falls back "
              "to the empty canvas's marginals once parallel reveals make a canvas impossible (`ToyLanguage.guarded`). "
              "The language's own text: "
              + ", ".join(f"{m} {reference[m]:.4g}" for m in METRICS) + "."]
    for name, (cells, _) in results.items():
        report.append(f"## {name} denoiser\n\n" + "\n\n".join(table(cells, budgets, m, length) for m in METRICS))
    (out / "toy_samplers.md").write_text("\n\n".join(report) + "\n")
    serial = {name: {"cells": list(cells.values()), "grid": grid} for name, (cells, grid) in results.items()}
    (out / "toy_samplers.json").write_text(json.dumps({"reference": reference, **serial}, indent=1))
    figure(results, budgets, reference, out / "toy_samplers.png")
    print("\n\n".join(report))
    print_figures(headline(results, length, budgets))


if __name__ == "__main__":
    main()
