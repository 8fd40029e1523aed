"""The sampling sweep: how sample quality moves with the number of steps.

`quality_vs_steps` runs the sampler (`tdlib.canvas.generate`) over a grid of
strategies, schedules and step counts, with the same seed in every cell, and
scores each cell with the text metrics of `tdlib.metrics`; `steps_table` prints
the rows as Markdown and `tdlib.plots.quality_vs_steps_figure` draws them.

This module neither defines metrics nor draws figures; it runs the grid.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tdlib.canvas import build_canvas, generate
from tdlib.errors import UserError, require
from tdlib.metrics import generative_perplexity, sample_metrics, unigram_entropy
from tdlib.sample import SamplerConfig, sampler_config
from tdlib.strategies import STRATEGIES

# What each metric of a steps sweep means, for tables (the figures in `tdlib.plots` say the same).
STEP_METRIC_NOTES = {
    "generative_perplexity": "perplexity under the causal reference; lower = more fluent, but also lower for dull, repetitive text",
    "unigram_entropy": "entropy of the pooled word distribution, bits; higher = more varied words",
    "distinct_1": "distinct words / all words; higher = more diverse",
    "distinct_2": "distinct bigrams / all bigrams; higher = more diverse",
    "distinct_3": "distinct trigrams / all trigrams; higher = more diverse",
    "repetition_rate_4": "share of 4-grams repeating an earlier one in the same sample; lower = fewer loops",
    "self_bleu": "BLEU of each sample against the others; lower = samples less alike",
    "mean_words": "words per sample",
    "grammatical_share": "share of sentences the toy language can produce (exact); higher = more grammatical",
    "possible_share": "share of samples with probability > 0 under the toy language (exact)",
    "true_nll_per_token": "-log p(sample) per word under the toy language, nats, possible samples only (exact); "
                          "lower = more likely text, but also lower for dull text",
    "seconds": "sampling time of the cell (all samples), seconds",
}


def _generated_positions(tokenizer: Any, prefix: str, max_length: int) -> int:
    """How many canvas positions `tdlib.canvas.generate` will write for this prefix and length."""
    canvas, _ = build_canvas(tokenizer, prefix, max_length)
    return sum(i == tokenizer.mask_token_id for i in canvas)


def _scores(texts: list[str], reference: tuple[Any, Any] | None, language: Any = None) -> dict[str, float]:
    """`sample_metrics` of one cell's texts, their generative perplexity under ``reference`` and the exact
    scores of ``language`` (a `tdlib.toylang.ToyLanguage`), each if given."""
    scores = sample_metrics(texts)
    if language is not None:
        scores.update(language.score(texts))
    if reference is not None:
        ref_model, ref_tokenizer = reference
        try:
            scores["generative_perplexity"] = generative_perplexity(texts, ref_model, ref_tokenizer)
        except UserError:  # no text has a token to score
            scores["generative_perplexity"] = math.nan
    return scores


def quality_vs_steps(
    model: Any,
    tokenizer: Any,
    config: SamplerConfig | None = None,
    *,
    steps: Sequence[int] = (4, 8, 16, 32, 64),
    strategies: Sequence[str] = STRATEGIES,
    schedules: Sequence[str] = ("linear", "cosine", "exponential"),
    num_samples: int = 8,
    max_length: int = 64,
    prefix: str = "",
    seed: int = 0,
    reference: tuple[Any, Any] | None = None,
    language: Any = None,
    progress: bool = False,
    **options: Any,
) -> list[dict]:
    """Sample metrics for every (strategy, schedule, steps) cell: how quality moves with forward passes.

    Each cell is one `tdlib.canvas.generate` call of ``num_samples`` texts with
    ``steps`` denoiser forward passes, the same ``seed`` and every other setting of
    ``config`` (default: nucleus sampling, top-p 0.9) with ``options`` by name equal,
    so cells differ only by strategy, schedule and steps. A row holds
    ``strategy``, ``schedule``, ``steps``, ``forward_passes``, ``seconds`` (the
    sampler's time), ``texts``, the keys of `sample_metrics` and, when
    ``reference=(causal_model, causal_tokenizer)`` is given,
    ``generative_perplexity`` (nan if no text has a token to score), and with
    ``language`` (the toy language) its exact scores (`ToyLanguage.score`).

    Steps are clipped to the number of generated positions n (``max_length`` - 2
    - prefix tokens, or the mask tokens of an infilling prefix): beyond one token
    per step the extra steps reveal nothing yet still cost a forward pass. The
    clipped values are deduplicated and sorted, so ``steps=(4, 64)`` with n = 30
    sweeps 4 and 30. Rows come strategy by strategy, then schedule, then steps.
    ``progress`` shows a bar on stderr.
    """
    from tqdm.auto import tqdm

    require(bool(steps) and all(s >= 1 for s in steps), f"steps must be a non-empty list of values >= 1, got {steps}")
    require(bool(strategies) and bool(schedules), "give at least one strategy and one schedule")
    config = sampler_config(config or SamplerConfig(sampling="nucleus"), **options)
    for strategy in strategies:  # every cell's options are checked before the first one runs
        for schedule in schedules:
            replace(config, num_steps=min(steps), schedule=schedule, strategy=strategy)
    positions = _generated_positions(tokenizer, prefix, max_length)
    sweep = sorted({min(s, max(positions, 1)) for s in steps})
    cells = [(st, sc, s) for st in strategies for sc in schedules for s in sweep]
    rows = []
    with tqdm(total=len(cells), desc="quality vs steps", disable=not progress, file=sys.stderr) as bar:
        for strategy, schedule, num_steps in cells:
            bar.set_postfix_str(f"{strategy} {schedule} {num_steps}")
            cell = replace(config, strategy=strategy, schedule=schedule, num_steps=num_steps)
            texts, trajectory = generate(model, tokenizer, cell, prefix=prefix,
                                         num_samples=num_samples, max_length=max_length, seed=seed)
            row = {"strategy": strategy, "schedule": schedule, "steps": num_steps,
                   "forward_passes": trajectory.forward_passes, "seconds": trajectory.seconds}
            rows.append({**row, **_scores(texts, reference, language), "texts": texts})
            bar.update()
    return rows


def toy_cell(denoiser: Any, tokenizer: Any, language: Any, *, length: int, num_steps: int, strategy: str,
             block_length: int | None = None, num_samples: int = 200, seed: int = 0, label: str | None = None,
             **knobs: float) -> dict[str, Any]:
    """One `generate` call of ``num_samples`` toy canvases of ``length`` words, scored exactly by ``language``.

    ``denoiser`` is a network or the language itself (its exact denoiser); ``knobs`` are
    other `tdlib.sample.SamplerConfig` fields (``threshold``, ``entropy_bound``, ``remask_eta``,
    ``min_gap``, ...). The row holds the mean forward passes per sample (an adaptive
    strategy decides them), the grammatical and possible shares, the true NLL per token
    and the unigram entropy, and the first text. With the exact denoiser only the
    possible share is a finding: text written after a clash is noise (`tdlib.toylang`).
    """
    texts, trajectory = generate(denoiser, tokenizer, num_samples=num_samples, max_length=length + 2,
                                 num_steps=num_steps, strategy=strategy, sampling="nucleus", top_p=1.0, seed=seed,
                                 block_length=block_length, **knobs)
    return {"setting": label or strategy, "strategy": strategy, "block_length": block_length, "num_steps": num_steps,
            **knobs, "passes": float(trajectory.passes_per_row.double().mean()), **language.score(texts),
            "unigram_entropy": unigram_entropy(texts), "example": texts[0]}


def _cell(value: Any) -> str:
    """A table cell: 4 significant digits, but no exponent for large numbers (perplexities)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if math.isfinite(value) and abs(value) >= 1000 else f"{value:.4g}"


def steps_table(
    rows: Sequence[dict],
    metrics: Sequence[str] = (
        "generative_perplexity", "unigram_entropy", "distinct_2", "repetition_rate_4", "self_bleu", "seconds",
    ),
) -> str:
    """Markdown tables of `quality_vs_steps` rows: one per metric, strategy x schedule down, steps across.

    Each metric present in the rows gets a bold heading with what it means
    (`STEP_METRIC_NOTES`), then a table with one line per (strategy, schedule)
    and one column per number of steps (one forward pass each, at most, for the adaptive
    strategies), so a line reads as
    that setting's curve. Metrics absent from every row are left out (e.g.
    generative perplexity without a reference); a missing cell shows as "-".
    """
    sweep = sorted({r["steps"] for r in rows})
    settings = list(dict.fromkeys((r["strategy"], r["schedule"]) for r in rows))
    by_cell = {(r["strategy"], r["schedule"], r["steps"]): r for r in rows}
    parts = []
    for metric in metrics:
        if not any(metric in r for r in rows):
            continue
        note = STEP_METRIC_NOTES.get(metric, "")
        lines = [
            f"**{metric}**: " + (f"{note}. " if note else "") + "Columns: steps (a forward pass each; adaptive strategies may use fewer).",
            "",
            "| strategy | schedule | " + " | ".join(str(s) for s in sweep) + " |",
            "|---|---|" + "---:|" * len(sweep),
        ]
        for strategy, schedule in settings:
            values = [_cell(by_cell[strategy, schedule, s][metric]) if metric in by_cell.get((strategy, schedule, s), {})
                      else "-" for s in sweep]
            lines.append(f"| {strategy} | {schedule} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
