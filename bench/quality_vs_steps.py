"""Sample quality against the number of denoiser forward passes, for every strategy and schedule.

For each unmasking strategy (random, confidence, margin, entropy, resample),
each schedule (linear, cosine, exponential) and each step count, one
`tdlib.canvas.generate` call writes ``--num-samples`` texts with the same seed
(`tdlib.sweep.quality_vs_steps`); each cell is scored by the model-free sample
metrics (distinct-n, unigram entropy, repetition, self-BLEU) and, with
``--reference``, by generative perplexity under a causal LM (for example the
autoregressive baseline, ``tdlib train --objective causal``). Step counts above
the number of generated positions are clipped to it (one token per step).

Each metric is also computed on as many human texts of the same length: the
last blocks of the validation split of the corpus the checkpoint was trained on
(``--human-dataset`` to choose another), so every number has its reference.

Writes to ``--out``: ``quality_vs_steps.json`` (settings, the human reference and
one row per cell, texts included, nan written as null), ``quality_vs_steps.md`` (one table per metric: strategy x
schedule down, steps across) and ``quality_vs_steps.png`` (one panel per metric
against forward passes).

    python bench/quality_vs_steps.py --checkpoint runs/cpu --reference runs/cpu-ar --out runs/steps
    python bench/quality_vs_steps.py --checkpoint runs/cpu --steps 4,16 --num-samples 4   # a quick look

Prints its figures last as ``name: value`` lines: the cell count, the total
sampling time, and per strategy the best cell (schedule and steps; ties go to
fewer steps) by generative perplexity with ``--reference``, otherwise by the
lowest 4-gram repetition rate (a diversity measure, not fluency).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from _common import print_figures, setup_threads

from tdlib.errors import UserError


def best_cells(rows: list[dict], metric: str) -> dict[str, object]:
    """Per strategy, the lowest value of ``metric`` and its cell (``schedule@steps``); nan cells skipped."""
    figures: dict[str, object] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        scored = [r for r in rows if r["strategy"] == strategy and not math.isnan(r.get(metric, math.nan))]
        if not scored:
            continue
        best = min(scored, key=lambda r: (r[metric], r["steps"]))
        figures[f"best_{metric}_{strategy}"] = float(best[metric])
        figures[f"best_cell_{strategy}"] = f"{best['schedule']}@{best['steps']}"
    return figures


def json_safe(value: object) -> object:
    """``value`` with every nan float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def parse_steps(text: str) -> list[int]:
    """``"4,8,16"`` -> [4, 8, 16]; a UserError for anything else."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(f"--steps must be comma-separated integers, got {text!r}") from exc


def human_texts(tokenizer, dataset: str, data_dir: str | None, count: int, max_length: int) -> list[str]:
    """``count`` human texts as long as a sample: the last packed blocks of the dataset's validation split."""
    from tdlib.data import get_split, load_corpus, make_examples

    blocks = make_examples(get_split(load_corpus(dataset, data_dir), "valid"), tokenizer, max_length, "packed")
    if len(blocks) < count:
        raise UserError(f"the {dataset} validation split has {len(blocks)} blocks of {max_length} tokens; "
                        f"ask for at most that many samples")
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in blocks.input_ids[-count:]]


def main(argv: list[str] | None = None) -> int:
    """Run the sweep on a checkpoint and write its JSON, Markdown table and figure."""
    from tdlib.checkpoint import resolve_checkpoint, training_config
    from tdlib.draws import SAMPLINGS
    from tdlib.metrics import generative_perplexity, sample_metrics
    from tdlib.model import load_causal, load_checkpoint
    from tdlib.plots import quality_vs_steps_figure, save_figure
    from tdlib.strategies import STRATEGIES
    from tdlib.sweep import quality_vs_steps, steps_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="tdlib run directory or model directory")
    p.add_argument("--reference", help="causal LM run or model directory, for generative perplexity")
    p.add_argument("--steps", default="4,8,16,32,64", help="comma-separated step counts (forward passes)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--schedules", default="linear,cosine,exponential")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="canvas length in tokens, start and end included")
    p.add_argument("--prefix", default="")
    p.add_argument("--sampling", choices=SAMPLINGS, default="nucleus")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-gap", type=int, default=0,
                   help="space the reveals of one pass (random, dilated, confidence, margin, entropy only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--human-dataset", help="corpus of the human reference texts (default: the checkpoint's own)")
    p.add_argument("--data-dir", help="folder of --human-dataset's files (wikitext-2 and the like)")
    p.add_argument("--out", type=Path, default=Path("quality_vs_steps"), help="folder for the three output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    try:
        model, tokenizer = load_checkpoint(args.checkpoint)
        reference = load_causal(resolve_checkpoint(args.reference)) if args.reference else None
        trained = training_config(resolve_checkpoint(args.checkpoint))
        dataset = args.human_dataset or trained.get("dataset") or "pydoc"
        data_dir = args.data_dir or (None if args.human_dataset else trained.get("data_dir"))
        human = human_texts(tokenizer, dataset, data_dir, args.num_samples, args.max_length)
        human_metrics = sample_metrics(human)
        if reference is not None:
            human_metrics["generative_perplexity"] = generative_perplexity(human, *reference)
        rows = quality_vs_steps(
            model, tokenizer, steps=parse_steps(args.steps), strategies=args.strategies.split(","),
            schedules=args.schedules.split(","), num_samples=args.num_samples, max_length=args.max_length,
            prefix=args.prefix, sampling=args.sampling, top_k=args.top_k, top_p=args.top_p,
            temperature=args.temperature, seed=args.seed, reference=reference, progress=not args.quiet,
            min_gap=args.min_gap,
        )
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "quiet")}
    (args.out / "quality_vs_steps.json").write_text(
        json.dumps(json_safe({"settings": settings, "human": {"dataset": dataset, "texts": human, **human_metrics},
                              "rows": rows}), indent=1), encoding="utf-8"
    )
    reference_line = ", ".join(f"{k} {v:.3f}" for k, v in human_metrics.items())
    (args.out / "quality_vs_steps.md").write_text(
        f"Human text ({args.num_samples} blocks of {dataset}'s validation split): {reference_line}\n\n"
        + steps_table(rows), encoding="utf-8")
    metrics = ("generative_perplexity", "unigram_entropy", "repetition_rate_4")
    figure = quality_vs_steps_figure(rows, metrics=metrics, human=human_metrics)
    save_figure(figure, args.out / "quality_vs_steps.png")
    print(f"wrote {args.out}/quality_vs_steps.{{json,md,png}}", file=sys.stderr)
    figures: dict[str, object] = {
        "cells": len(rows),
        "seconds_total": sum(r["seconds"] for r in rows),
    }
    figures.update(best_cells(rows, "generative_perplexity" if reference else "repetition_rate_4"))
    figures.update({f"human_{k}": v for k, v in human_metrics.items() if k in metrics})
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
