"""Matplotlib figures of what training and sampling return.

Each function takes plain data (metrics records, read by `tdlib.runlog`,
schedule names, or the rows of a quality-versus-steps sweep) and returns a
`matplotlib.figure.Figure` built without pyplot, so nothing leaks into pyplot's
global state and a figure lives only as long as you hold it. Jupyter displays
a returned Figure inline; `save_figure` writes it.

This module is not a trainer or a sampler: it never runs a model. It draws.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib import cm, colors
from matplotlib.figure import Figure

from tdlib.errors import require
from tdlib.runlog import eval_records, read_metrics, train_records


def run_figure(run_dir: str | Path, *, log_scale: bool = False) -> Figure:
    """Training loss and eval loss by mask ratio of a run directory (or its metrics file)."""
    return run_summary_figure(read_metrics(run_dir), log_scale=log_scale)


def _ratios(evals: Sequence[dict]) -> list[float]:
    return sorted({float(k) for r in evals for k in r["eval_loss_by_ratio"]})


def _cmap() -> colors.Colormap:
    from matplotlib import colormaps

    return colormaps["viridis"]


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _label(ax, ylabel: str, title: str, log_scale: bool) -> None:
    """Label a panel drawn against training steps, log y axis if asked, with a light grid."""
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _loss_by_ratio_axes(fig: Figure, ax, records: Iterable[dict], log_scale: bool) -> None:
    evals = eval_records(records)
    ratios = _ratios(evals)
    if not ratios:
        _empty(ax, "no evaluation records yet")
        ax.set_title("Eval loss by mask ratio")
        return
    low, high = min(ratios), max(ratios)
    norm = colors.Normalize(
        vmin=low - 0.05 if low == high else low, vmax=high + 0.05 if low == high else high
    )
    cmap = _cmap()
    for ratio in ratios:
        points = [
            (r["step"], float(v))
            for r in evals
            for k, v in r["eval_loss_by_ratio"].items()
            if float(k) == ratio and v is not None
        ]
        steps, losses = zip(*points, strict=True) if points else ((), ())
        ax.plot(
            steps, losses, marker="o", markersize=3, color=cmap(norm(ratio)), label=f"t={ratio:g}"
        )
    _label(ax, "masked cross-entropy (nats)", "Eval loss by mask ratio t", log_scale)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="mask ratio t")


def _training_loss_axes(ax, records: Iterable[dict], log_scale: bool) -> None:
    train = train_records(records)
    if not train:
        _empty(ax, "no training records yet")
        ax.set_title("Training loss")
        return
    steps = [r["step"] for r in train]
    losses = [float(r["loss"]) for r in train]
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, label="loss")
    smooth, average = [], losses[0]
    for loss in losses:
        average = 0.9 * average + 0.1 * loss  # exponential moving average, weight 0.1 on the newest
        smooth.append(average)
    ax.plot(steps, smooth, color="tab:blue", label="moving average")
    _label(ax, "training loss", "Training loss", log_scale)
    ax.legend(loc="upper right")


def loss_by_ratio_figure(records: Iterable[dict], *, log_scale: bool = False) -> Figure:
    """One line per mask ratio: eval loss against step, coloured by ratio (colorbar)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    _loss_by_ratio_axes(fig, fig.add_subplot(), list(records), log_scale)
    return fig


def training_loss_figure(records: Iterable[dict], *, log_scale: bool = False) -> Figure:
    """Training loss against step, raw and smoothed."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    _training_loss_axes(fig.add_subplot(), list(records), log_scale)
    return fig


def final_loss_by_ratio_figure(records: Iterable[dict]) -> Figure:
    """Loss against mask ratio at the latest evaluation: harder (higher t) costs more."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    evals = eval_records(records)
    ax.set_title("Eval loss by mask ratio")
    if not evals:
        _empty(ax, "no evaluation records yet")
        return fig
    last = evals[-1]
    points = sorted(
        (float(k), float(v)) for k, v in last["eval_loss_by_ratio"].items() if v is not None
    )
    ratios, losses = zip(*points, strict=True)
    ax.plot(ratios, losses, marker="o", color="tab:purple")
    ax.set_xlabel("mask ratio t")
    ax.set_ylabel("masked cross-entropy (nats)")
    ax.set_title(f"Eval loss by mask ratio at step {last['step']}")
    ax.grid(alpha=0.3)
    return fig


def run_summary_figure(records: Iterable[dict], *, log_scale: bool = False) -> Figure:
    """Training loss and eval loss by ratio side by side, for looking at a run."""
    records = list(records)
    fig = Figure(figsize=(12, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _training_loss_axes(left, records, log_scale)
    _loss_by_ratio_axes(fig, right, records, log_scale)
    return fig


def schedule_figure(schedules: Sequence[str], num_steps: int, num_masked: int) -> Figure:
    """Fraction still masked after each step (left) and tokens revealed per step (right)."""
    from tdlib.schedules import masked_counts

    require(num_steps >= 1, f"num_steps must be at least 1, got {num_steps}")
    require(num_masked >= 0, f"num_masked must be non-negative, got {num_masked}")
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    width = 0.8 / max(len(schedules), 1)
    for i, name in enumerate(schedules):
        counts = masked_counts(name, num_masked, num_steps)  # length num_steps + 1
        steps = range(num_steps + 1)
        left.plot(
            steps, [c / max(num_masked, 1) for c in counts], marker="o", markersize=3, label=name
        )
        revealed = [counts[s - 1] - counts[s] for s in range(1, num_steps + 1)]
        offsets = [s + (i - (len(schedules) - 1) / 2) * width for s in range(1, num_steps + 1)]
        right.bar(offsets, revealed, width=width, label=name)
    left.set_xlabel("step s")
    left.set_ylabel("fraction still masked")
    left.set_ylim(-0.03, 1.03)
    left.set_title(f"Still masked after step s of {num_steps}")
    left.grid(alpha=0.3)
    left.legend()
    right.set_xlabel("step s")
    right.set_ylabel("tokens revealed at step s")
    right.set_title(f"Revealed per step ({num_masked} masked tokens)")
    right.grid(alpha=0.3, axis="y")
    right.legend()
    return fig


# metric -> (panel title, y label, log y axis if the values span a decade) for `quality_vs_steps_figure`
STEP_METRIC_LABELS = {
    "generative_perplexity": (
        "Fluency", "generative perplexity under the AR reference\n(lower = more fluent)", True,
    ),
    "unigram_entropy": ("Word variety", "unigram entropy, bits\n(higher = more varied words)", False),
    "distinct_1": ("Diversity", "distinct words / all words\n(higher = more diverse)", False),
    "distinct_2": ("Diversity", "distinct bigrams / all bigrams\n(higher = more diverse)", False),
    "distinct_3": ("Diversity", "distinct trigrams / all trigrams\n(higher = more diverse)", False),
    "repetition_rate_4": (
        "Repetition", "share of 4-grams repeated within a sample\n(lower = fewer loops)", False,
    ),
    "self_bleu": ("Sameness", "self-BLEU between samples\n(lower = samples less alike)", False),
    "mean_words": ("Length", "words per sample", False),
    "seconds": ("Cost", "sampling time (s)", True),
    # exact scores, when the text comes from a language with known answers (tdlib.toylang)
    "grammatical_share": ("Grammar", "share of sentences the language can produce\n(higher = better)", False),
    "possible_share": ("Possible", "share of samples with probability > 0", False),
    "true_nll_per_token": ("True likelihood", "exact -log p per token, nats\n(the language's own text sets the mark)",
                           False),
}
LINE_STYLES = ("-", "--", ":", "-.")


def quality_vs_steps_figure(
    rows: Sequence[dict],
    metrics: Sequence[str] = ("generative_perplexity", "unigram_entropy"),
    human: dict[str, float] | None = None,
) -> Figure:
    """One panel per metric of `tdlib.sweep.quality_vs_steps` rows against forward passes.

    x is the number of denoiser forward passes (log2 axis); each (strategy,
    schedule) is one line, coloured by strategy, dashed by schedule. Metrics not
    in the rows are left out (generative perplexity needs a reference model).
    Perplexity and time get a log y axis when their values span a decade.
    ``human`` maps a metric to its value on human text, drawn as a black line.
    """
    from matplotlib.lines import Line2D

    rows = list(rows)
    present = [m for m in metrics if any(m in r for r in rows)]
    fig = Figure(figsize=(5.5 * max(len(present), 1) + 2, 4.2), layout="constrained")
    if not present:
        ax = fig.add_subplot()
        _empty(ax, "none of these metrics is in the rows")
        ax.set_title("Quality against forward passes")
        return fig
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    palette = colors.TABLEAU_COLORS
    colour = {s: list(palette.values())[i % len(palette)] for i, s in enumerate(strategies)}
    style = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(schedules)}
    passes = sorted({r["forward_passes"] for r in rows})
    for ax, metric in zip(fig.subplots(1, len(present), squeeze=False)[0], present, strict=True):
        title, ylabel, log_y = STEP_METRIC_LABELS.get(metric, (metric, metric, False))
        for strategy in strategies:
            for schedule in schedules:
                cell = sorted((r["forward_passes"], float(r.get(metric, float("nan")))) for r in rows
                              if r["strategy"] == strategy and r["schedule"] == schedule)
                if cell:
                    x, y = zip(*cell, strict=True)
                    ax.plot(x, y, marker="o", markersize=3, color=colour[strategy],
                            linestyle=style[schedule], label=f"{strategy}, {schedule}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(passes, [str(p) for p in passes])
        ax.minorticks_off()
        values = [float(r[metric]) for r in rows if metric in r and float(r[metric]) > 0]
        if human and metric in human:
            ax.axhline(human[metric], color="0.55", linewidth=4, alpha=0.5, label="human text")
            values.append(float(human[metric]))
        if log_y and values and max(values) > 10 * min(values):  # log only when it spans a decade
            ax.set_yscale("log")
        ax.set_xlabel("denoiser forward passes (= sampling steps)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} against forward passes")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[s], marker="o", markersize=3, label=s) for s in strategies]
    handles += [Line2D([], [], color="black", linestyle=style[s], label=s) for s in schedules]
    if human:
        handles.append(Line2D([], [], color="0.55", linewidth=4, alpha=0.5, label="human text"))
    fig.legend(handles=handles, loc="outside right upper", title="strategy (colour)\nschedule (line)")
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for an ipywidgets Image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_html(fig: Figure, dpi: int = 100) -> str:
    """The figure as an HTML ``<img>`` with the PNG inline (a static snapshot that needs no kernel)."""
    data = base64.b64encode(figure_png(fig, dpi)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}"/>'


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure to `path` (format from the suffix), creating folders; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- the idea itself: forward and reverse process

PROCESS_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
_MASKED_FILL, _CLEAN_FILL, _NEW_FILL, _NEW_EDGE = "0.82", "white", "#ffd27f", "#d95f02"


def _token_row(ax, y: float, words: Sequence[str | None], new: Sequence[bool], width: float, label: str) -> None:
    """One canvas as a row of equal boxes at height ``y``: a word, or a grey `MASK_GLYPH` box where masked (None)."""
    from matplotlib.patches import FancyBboxPatch

    from tdlib.render import MASK_GLYPH

    for i, (word, fresh) in enumerate(zip(words, new, strict=True)):
        face = _MASKED_FILL if word is None else _NEW_FILL if fresh else _CLEAN_FILL
        ax.add_patch(FancyBboxPatch((i * width + 0.06, y - 0.34), width - 0.12, 0.68, boxstyle="round,pad=0,rounding_size=0.12",
                                    facecolor=face, edgecolor=_NEW_EDGE if fresh else "0.45",
                                    linewidth=2.0 if fresh else 0.8, gid="token-box"))
        ax.text(i * width + width / 2, y, MASK_GLYPH if word is None else word, ha="center", va="center",
                fontsize=11, color="0.35" if word is None else "black", weight="bold" if fresh else "normal")
    ax.text(-0.15, y, label, ha="right", va="center", fontsize=9.5, color="0.25")


def _band(ax, rows: Sequence[tuple[list, list, str]], width: float, arrow: str, colour: str) -> None:
    """Rows of canvases top to bottom in one axes, with a downward arrow and its label on the right."""
    count = len(rows[0][0])
    for k, (words, new, label) in enumerate(rows):
        _token_row(ax, -k, words, new, width, label)
    right = count * width
    ax.annotate("", xy=(right + 0.45, -(len(rows) - 1) - 0.2), xytext=(right + 0.45, 0.2),
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=2.5, mutation_scale=22))
    ax.text(right + 0.75, -(len(rows) - 1) / 2, arrow, rotation=-90, ha="left", va="center", fontsize=11,
            color=colour, weight="bold")
    ax.set_xlim(-3.4, right + 1.6)
    ax.set_ylim(-(len(rows) - 1) - 0.6, 0.6)
    ax.set_axis_off()


def process_figure(
    tokens: Sequence[str],
    mask_scores: Sequence[float],
    reverse_steps: Sequence[Sequence[str | None]],
    *,
    ratios: Sequence[float] = PROCESS_RATIOS,
) -> Figure:
    """Masked diffusion in one picture: the forward process hides tokens, the reverse process reveals them.

    Top band (forward, q(x_t | x_0)): the clean ``tokens`` masked at each of
    ``ratios``; position i is hidden at ratio t iff ``mask_scores[i] < t``, so one
    fixed set of uniforms (as `tdlib.masking.mask_tokens` draws them) gives nested
    masks: a random order in which the tokens disappear. Bottom band (reverse,
    p_theta): ``reverse_steps``, the canvases of one sampler run, from all masked
    to clean; each is a list of words with None where still masked (from a
    `tdlib.sample.Trajectory`: ``[None if i == mask_id else word ...]`` per step).
    Masked tokens are grey boxes holding `tdlib.render.MASK_GLYPH`; tokens revealed
    at a step are highlighted. Columns are positions, the same in every row.
    """
    tokens = list(tokens)
    steps = [list(step) for step in reverse_steps]
    require(len(tokens) >= 1 and len(mask_scores) == len(tokens),
          f"need one mask score per token: {len(tokens)} tokens, {len(mask_scores)} scores")
    require(len(steps) >= 2, "reverse_steps needs at least the initial canvas and one step after it")
    require(all(len(step) == len(steps[0]) for step in steps), "every reverse step must have the same length")
    longest = max(len(w) for w in [*tokens, *(w for step in steps for w in step if w is not None)])
    width = max(1.0, 0.2 * longest + 0.5)  # one column per position, wide enough for the longest word
    forward = []
    for t in ratios:
        hidden = [score < t for score in mask_scores]
        forward.append(([None if h else w for w, h in zip(tokens, hidden, strict=True)], [False] * len(tokens),
                        f"t = {t:g}  ({sum(hidden)} of {len(tokens)} hidden)"))
    reverse = []
    for s, step in enumerate(steps):
        new = [s > 0 and w is not None and steps[s - 1][i] is None for i, w in enumerate(step)]
        hidden = sum(w is None for w in step)
        name = "start: all masked" if s == 0 else f"step {s} of {len(steps) - 1}"
        reverse.append((step, new, f"{name}  ({hidden} hidden)"))
    columns = max(len(tokens), len(steps[0])) * width
    fig = Figure(figsize=(min(16.0, 2.2 + 0.55 * columns + 1.2), 1.3 + 0.42 * (len(forward) + len(reverse))),
                 layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[len(forward), len(reverse)])
    _band(top, forward, width, "hide tokens", "tab:red")
    top.set_title(r"forward $q(x_t \mid x_0)$: hide tokens (one fixed random order, nested masks)", loc="left",
                  fontsize=12)
    _band(bottom, reverse, width, "reveal tokens", "tab:blue")
    bottom.set_title(r"reverse $p_\theta$: reveal tokens (a sampler run from the fully masked canvas; "
                     "new tokens highlighted)", loc="left", fontsize=12)
    return fig
