"""Notebook widgets that show what the core returns: trajectories, metrics, schedules.

Two layers, so everything is testable without a browser:

- pure renderers (`render_step_html`, `render_final_html`, `render_tokens_html`,
  `schedule_table_html`, `sampling_table_html`) turn recorded data into an HTML
  string;
- thin ipywidgets shells (`DenoisingScrubber`, `LiveLossView`, `ScheduleExplorer`,
  `SamplingExplorer`, `MaskingExplorer`) wire sliders to those renderers.

Following LLaDA's demo, a trajectory is recorded first by `tdlib.sample` and only
rendered here: no slider callback ever runs a model. This module does not train,
sample or mask on its own; the small amount of math it shows (`kept_distribution`,
`masked_at_ratio`) is reused from or checked against the core.

A trajectory is anything with the fields of `tdlib.sample.Trajectory`: tokens
(S+1, B, L), revealed (S+1, B, L), probs (S+1, B, L), mask_id, given (B, L).
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import HTML, display
from matplotlib.figure import Figure

from tdlib import plots
from tdlib.errors import check
from tdlib.masking import mask_tokens, protected_positions
from tdlib.sample import SAMPLINGS
from tdlib.schedules import SCHEDULES, masked_counts

HIDDEN_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"})
# WordPiece splits punctuation off; glue it back on: closers to the word before, openers to the
# word after, an apostrophe to both ("isn ' t" -> "isn't")
CLOSERS = frozenset(".,!?;:)]}%>")
OPENERS = frozenset("([{<$")
APOSTROPHES = frozenset({"'", "\u2019"})
MASK_TOKENS = frozenset({"[MASK]", "<mask>"})
MASK_GLYPH = "\u25af"  # ▯

FONT = "font-family:system-ui,sans-serif;"
FRAME_STYLE = f"{FONT}font-size:14px;line-height:2.0;"
STYLES = {
    "td-mask": (
        "display:inline-block;min-width:1.6em;text-align:center;line-height:1.4;"
        "background:#d4d4d4;color:#6b6b6b;border-radius:3px;font-family:monospace;"
    ),
    "td-new": "border-radius:3px;padding:1px 2px;outline:1px solid #d96c00;",
    "td-old": "color:#222;",
    "td-given": "font-weight:bold;text-decoration:underline;color:#123;",
    "td-final": "border-radius:3px;padding:1px 1px;",
}


# ---------------------------------------------------------------- token pieces


@dataclass(frozen=True)
class Piece:
    """One token as displayed: its text, whether it glues onto the previous token, hidden or not."""

    text: str
    joins: bool
    hidden: bool


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def _bpe_text(piece: str) -> str:
    decoder = _byte_decoder()
    if not all(ch in decoder for ch in piece):
        return piece
    return bytes(decoder[ch] for ch in piece).decode("utf-8", errors="replace")


def _guess_style(pieces: Sequence[str]) -> str:
    return "bpe" if any(p.startswith(("Ġ", "Ċ")) for p in pieces) else "wordpiece"


def display_pieces(
    pieces: Sequence[str], special_tokens: Collection[str] = HIDDEN_TOKENS, style: str = "auto"
) -> list[Piece]:
    """Turn tokenizer pieces into display pieces: WordPiece ("##") or byte-level BPE ("Ġ")."""
    check(style in ("auto", "wordpiece", "bpe"), f"unknown token style {style!r}")
    if style == "auto":
        style = _guess_style(pieces)
    shown = []
    glue_next = False
    for piece in pieces:
        if piece in special_tokens:
            shown.append(Piece(piece, joins=False, hidden=True))
        elif piece in MASK_TOKENS:
            shown.append(Piece(piece, joins=False, hidden=False))
        elif style == "bpe":
            text = _bpe_text(piece).replace("\n", "\u21b5")  # ↵ for a newline
            shown.append(Piece(text.lstrip(" "), joins=not text.startswith(" "), hidden=False))
        elif piece.startswith("##"):
            shown.append(Piece(piece[2:], joins=True, hidden=False))
        else:
            joins = glue_next or piece in CLOSERS or piece in APOSTROPHES
            shown.append(Piece(piece, joins=joins, hidden=False))
        glue_next = style == "wordpiece" and (piece in OPENERS or piece in APOSTROPHES)
    return shown


def display_words(
    pieces: Sequence[str], special_tokens: Collection[str] = HIDDEN_TOKENS, style: str = "auto"
) -> list[str]:
    """Join tokenizer pieces into the words a reader sees, dropping special tokens."""
    words: list[str] = []
    for piece in display_pieces(pieces, special_tokens, style):
        if piece.hidden:
            continue
        if piece.joins and words:
            words[-1] += piece.text
        else:
            words.append(piece.text)
    return words


def tokenizer_style(tokenizer) -> str:
    """'bpe' for a byte-level BPE tokenizer, 'wordpiece' for WordPiece, else 'auto'."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None))
    if "ByteLevel" in decoder:
        return "bpe"
    if "WordPiece" in decoder:
        return "wordpiece"
    return "auto"


def _special_pieces(tokenizer) -> frozenset[str]:
    ids = [
        i
        for i in getattr(tokenizer, "all_special_ids", ())
        if i != getattr(tokenizer, "mask_token_id", None)
    ]
    return frozenset(tokenizer.convert_ids_to_tokens(ids)) if ids else HIDDEN_TOKENS


def token_pieces(tokenizer, ids: Sequence[int]) -> list[Piece]:
    """Display pieces for a row of token ids, special tokens (but not the mask) hidden."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return display_pieces(pieces, _special_pieces(tokenizer), tokenizer_style(tokenizer))


# ---------------------------------------------------------------- HTML pieces


def _span(text: str, cls: str, style: str = "", title: str = "") -> str:
    title_attr = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="td-tok {cls}" style="{style}"{title_attr}>{html.escape(text)}</span>'


def _join_spans(items: Sequence[tuple[Piece, str]]) -> str:
    """Concatenate rendered spans, with a space before each piece that starts a word."""
    out = []
    for piece, span in items:
        if out and not piece.joins:
            out.append(" ")
        out.append(span)
    return "".join(out)


def _frame(body: str, head: str, legend: str = "") -> str:
    return (
        f'<div class="td-frame" style="{FRAME_STYLE}">'
        f'<div class="td-head" style="color:#555;font-size:12px;">{head}</div>{body}{legend}</div>'
    )


def _row(label: str, spans: str) -> str:
    label_style = "color:#888;font-size:11px;margin-right:6px;"
    label_html = f'<span class="td-label" style="{label_style}">{html.escape(label)}</span>'
    return f'<div class="td-sample" style="margin:2px 0 6px 0;">{label_html}{spans}</div>'


def _new_style(p: float) -> str:
    alpha = 0.6 if math.isnan(p) else 0.15 + 0.85 * p  # darker orange = the sampler was surer
    return f"{STYLES['td-new']}background:rgba(255,150,30,{alpha:.2f});"


def _prob_title(p: float) -> str:
    return "" if math.isnan(p) else f"p={p:.2f}"


# ---------------------------------------------------------------- trajectories


@dataclass
class _Arrays:
    tokens: np.ndarray  # (S+1, B, L)
    revealed: np.ndarray  # (S+1, B, L)
    probs: np.ndarray  # (S+1, B, L), nan where unknown
    given: np.ndarray  # (B, L)
    mask_id: int

    @property
    def num_steps(self) -> int:
        return self.tokens.shape[0] - 1


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _arrays(trajectory) -> _Arrays:
    tokens = _numpy(trajectory.tokens).astype(np.int64)
    check(tokens.ndim == 3, f"trajectory.tokens must be (S+1, B, L), got shape {tokens.shape}")
    probs = getattr(trajectory, "probs", None)
    given = getattr(trajectory, "given", None)
    return _Arrays(
        tokens=tokens,
        revealed=_numpy(trajectory.revealed).astype(bool),
        probs=np.full(tokens.shape, np.nan) if probs is None else _numpy(probs).astype(np.float64),
        given=np.zeros(tokens.shape[1:], bool) if given is None else _numpy(given).astype(bool),
        mask_id=int(trajectory.mask_id),
    )


def _samples(arrays: _Arrays, sample: int | None, max_samples: int) -> list[int]:
    batch = arrays.tokens.shape[1]
    if sample is None:
        return list(range(min(batch, max_samples)))
    check(
        0 <= sample < batch, f"sample {sample} is out of range; the trajectory has {batch} samples"
    )
    return [sample]


def _shown_note(arrays: _Arrays, samples: Sequence[int]) -> str:
    batch = arrays.tokens.shape[1]
    return f" &middot; showing {len(samples)} of {batch} samples" if len(samples) < batch else ""


def _mask_item() -> tuple[Piece, str]:
    return Piece(MASK_GLYPH, joins=False, hidden=False), _span(
        MASK_GLYPH, "td-mask", STYLES["td-mask"], "masked"
    )


def _legend(items: Sequence[str]) -> str:
    style = "color:#666;font-size:11px;border-top:1px solid #eee;margin-top:4px;"
    return (
        f'<div class="td-legend" style="{style}">' + " &nbsp;&middot;&nbsp; ".join(items) + "</div>"
    )


def _legend_step() -> str:
    return _legend(
        [
            _span(MASK_GLYPH, "td-mask", STYLES["td-mask"]) + " still masked",
            _span("word", "td-new", _new_style(0.9))
            + " revealed at this step (darker = more probable)",
            _span("word", "td-old", STYLES["td-old"]) + " revealed earlier",
            _span("word", "td-given", STYLES["td-given"]) + " given (prompt)",
        ]
    )


def _final_style(alpha: float) -> str:
    return f"{STYLES['td-final']}background:rgba(70,130,180,{alpha:.2f});"


def _legend_final() -> str:
    return _legend(
        [
            _span("early", "td-final", _final_style(0.7)) + " revealed early",
            _span("late", "td-final", _final_style(0.1)) + " revealed late",
            _span("word", "td-given", STYLES["td-given"]) + " given (prompt)",
        ]
    )


def render_step_html(
    trajectory, step: int, tokenizer, sample: int | None = None, *, max_samples: int = 8
) -> str:
    """HTML of the canvas after `step`: masks, tokens revealed now (shaded by p), earlier and given ones."""
    arrays = _arrays(trajectory)
    check(0 <= step <= arrays.num_steps, f"step {step} is outside 0..{arrays.num_steps}")
    tokens = arrays.tokens[step]  # (B, L)
    revealed = arrays.revealed[step]  # (B, L)
    probs = arrays.probs[step]  # (B, L)
    samples = _samples(arrays, sample, max_samples)
    rows = []
    for b in samples:
        items = []
        for j, piece in enumerate(token_pieces(tokenizer, tokens[b])):
            p = float(probs[b, j])
            if tokens[b, j] == arrays.mask_id:
                items.append(_mask_item())
            elif piece.hidden:
                continue
            elif arrays.given[b, j]:
                items.append((piece, _span(piece.text, "td-given", STYLES["td-given"], "given")))
            elif revealed[b, j]:
                items.append((piece, _span(piece.text, "td-new", _new_style(p), _prob_title(p))))
            else:
                items.append((piece, _span(piece.text, "td-old", STYLES["td-old"], _prob_title(p))))
        rows.append(_row(f"sample {b}", _join_spans(items)))
    head = (
        f"step {step} / {arrays.num_steps} &middot; {int(revealed[samples].sum())} revealed at this step"
        f" &middot; {int((tokens[samples] == arrays.mask_id).sum())} still masked{_shown_note(arrays, samples)}"
    )
    return _frame("".join(rows), head, _legend_step())


def _last_reveal(revealed: np.ndarray) -> np.ndarray:
    last_from_end = np.argmax(revealed[::-1], axis=0)  # (B, L) steps counted back from S
    return np.where(revealed.any(axis=0), revealed.shape[0] - 1 - last_from_end, 0)


def reveal_steps(trajectory) -> np.ndarray:
    """For each position, the last step at which it was revealed (0 if never), shape (B, L)."""
    return _last_reveal(_arrays(trajectory).revealed)


def render_final_html(
    trajectory, tokenizer, sample: int | None = None, *, max_samples: int = 8
) -> str:
    """Static HTML of the final text, each token shaded by when it was revealed (darker = earlier)."""
    arrays = _arrays(trajectory)
    num_steps = arrays.num_steps
    tokens, probs = arrays.tokens[-1], arrays.probs[-1]  # (B, L) each
    when = _last_reveal(arrays.revealed)  # (B, L)
    samples = _samples(arrays, sample, max_samples)
    rows = []
    for b in samples:
        items = []
        for j, piece in enumerate(token_pieces(tokenizer, tokens[b])):
            k = int(when[b, j])
            if tokens[b, j] == arrays.mask_id:
                items.append(_mask_item())
            elif piece.hidden:
                continue
            elif arrays.given[b, j] or k == 0:
                items.append((piece, _span(piece.text, "td-given", STYLES["td-given"], "given")))
            else:
                # shade from 0.7 (revealed at step 1) down to 0.1 (revealed at step S)
                alpha = 0.1 + 0.6 * (1 - (k - 1) / max(num_steps - 1, 1))
                title = ", ".join(
                    filter(None, [f"revealed at step {k}", _prob_title(float(probs[b, j]))])
                )
                items.append((piece, _span(piece.text, "td-final", _final_style(alpha), title)))
        rows.append(_row(f"sample {b}", _join_spans(items)))
    head = (
        f"final text after {num_steps} steps &middot; darker = revealed earlier"
        f" (hover for step and probability){_shown_note(arrays, samples)}"
    )
    return _frame("".join(rows), head, _legend_final())


def render_tokens_html(
    ids: Sequence[int],
    tokenizer,
    masked: Sequence[bool] | None = None,
    protected: Sequence[bool] | None = None,
) -> str:
    """HTML of one row of ids: masked positions as chips, protected (given) tokens bold."""
    ids = [int(i) for i in _numpy(ids).reshape(-1)]
    masked = np.zeros(len(ids), bool) if masked is None else _numpy(masked).reshape(-1).astype(bool)
    protected = (
        np.zeros(len(ids), bool)
        if protected is None
        else _numpy(protected).reshape(-1).astype(bool)
    )
    items = []
    for j, piece in enumerate(token_pieces(tokenizer, ids)):
        if masked[j]:
            items.append(_mask_item())
        elif piece.hidden:
            continue
        elif protected[j]:
            items.append((piece, _span(piece.text, "td-given", STYLES["td-given"], "protected")))
        else:
            items.append((piece, _span(piece.text, "td-old", STYLES["td-old"])))
    return f'<div class="td-sample" style="{FRAME_STYLE}">{_join_spans(items)}</div>'


class DenoisingScrubber:
    """Play/scrub through a recorded trajectory; the final frame is also shown as static HTML."""

    def __init__(self, trajectory, tokenizer, *, sample: int | None = None, interval_ms: int = 400):
        self.trajectory = trajectory
        self.tokenizer = tokenizer
        self.sample = sample
        self.num_steps = _arrays(trajectory).num_steps
        self._frames: dict[int, str] = {}
        self.final_html = render_final_html(trajectory, tokenizer, sample)
        self.play = widgets.Play(
            value=0, min=0, max=self.num_steps, step=1, interval=interval_ms, description="play"
        )
        self.slider = widgets.IntSlider(
            value=0, min=0, max=self.num_steps, description="step", continuous_update=True
        )
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.html = widgets.HTML(self.frame(0))
        self.slider.observe(self._on_step, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.html])

    def frame(self, step: int) -> str:
        """The HTML of one step (rendered once, then cached)."""
        if step not in self._frames:
            self._frames[step] = render_step_html(
                self.trajectory, step, self.tokenizer, self.sample
            )
        return self._frames[step]

    @property
    def step(self) -> int:
        """The step on show."""
        return self.slider.value

    def set_step(self, step: int) -> None:
        """Show `step` (as if the slider were moved)."""
        self.slider.value = step

    def _on_step(self, change: dict) -> None:
        self.html.value = self.frame(change["new"])

    def _ipython_display_(self) -> None:
        display(HTML(self.final_html))
        display(self.widget)


# ---------------------------------------------------------------- training metrics


FINAL_EVENTS = ("end", "stopped", "interrupted")  # tdlib.train's last record of a run


class LiveLossView:
    """A training callback that shows progress and redraws the loss figures at each evaluation."""

    def __init__(self, *, log_scale: bool = False):
        self.records: list[dict] = []
        self.log_scale = log_scale
        self.status = widgets.HTML("waiting for the first metrics record")
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([self.status, self.image])

    def __call__(self, record: dict) -> None:
        """Take one metrics record (as written to metrics.jsonl)."""
        self.records.append(dict(record))
        if "loss" in record:
            speed = (
                f" &middot; {record['tokens_per_s']:.0f} tokens/s"
                if "tokens_per_s" in record
                else ""
            )
            self.status.value = f"step {record['step']} &middot; loss {record['loss']:.4f}{speed}"
        if "eval_loss_by_ratio" in record:
            nelbo = record.get("nelbo_bits_per_char")
            suffix = f" &middot; NELBO {nelbo:.3f} bits/char" if nelbo is not None else ""
            self.status.value = f"step {record['step']} &middot; evaluated{suffix}"
            self.redraw()
        if record.get("event") in FINAL_EVENTS:
            self.status.value = f"step {record['step']} &middot; {record['event']}"
            self.redraw()

    def figure(self) -> Figure:
        """Training loss and eval loss by mask ratio for the records so far."""
        return plots.run_summary_figure(self.records, log_scale=self.log_scale)

    def redraw(self) -> None:
        """Draw the figure into the image widget."""
        self.image.value = plots.figure_png(self.figure())

    @classmethod
    def from_run(cls, run_dir, *, log_scale: bool = False) -> LiveLossView:
        """A view filled with the records of a finished (or running) run."""
        view = cls(log_scale=log_scale)
        view.records.extend(plots.read_metrics(run_dir))
        view.redraw()
        return view

    def _ipython_display_(self) -> None:
        display(self.widget)


def show_run(run_dir, *, log_scale: bool = False) -> Figure:
    """After the fact: training loss and eval loss by mask ratio of a run directory."""
    return plots.run_summary_figure(plots.read_metrics(run_dir), log_scale=log_scale)


# ---------------------------------------------------------------- schedules


def schedule_table_html(schedule: str, num_steps: int, num_masked: int) -> str:
    """HTML table: tokens still masked and revealed at each step of a schedule."""
    counts = masked_counts(schedule, num_masked, num_steps)  # length num_steps + 1
    cell = "padding:0 8px;text-align:right;"
    rows = [
        f"<tr><th style='{cell}'>step s</th><th style='{cell}'>still masked</th>"
        f"<th style='{cell}'>revealed at s</th><th style='{cell}'>fraction masked</th></tr>"
    ]
    for s, count in enumerate(counts):
        revealed = "&ndash;" if s == 0 else str(counts[s - 1] - count)
        fraction = count / num_masked if num_masked else 0.0
        rows.append(
            f"<tr class='td-step'><td style='{cell}'>{s}</td><td style='{cell}'>{count}</td>"
            f"<td style='{cell}'>{revealed}</td><td style='{cell}'>{fraction:.2f}</td></tr>"
        )
    caption = (
        f"<caption>{html.escape(schedule)}: {num_masked} masked tokens, {num_steps} steps</caption>"
    )
    return (
        f"<table class='td-schedule' style='{FONT}font-size:12px;'>{caption}{''.join(rows)}</table>"
    )


class ScheduleExplorer:
    """Pick a schedule, a number of steps and of masked tokens; see the counts per step."""

    def __init__(self, schedule: str = "cosine", num_steps: int = 16, num_masked: int = 64):
        self.schedule = widgets.Dropdown(
            options=list(SCHEDULES), value=schedule, description="schedule"
        )
        self.num_steps = widgets.IntSlider(value=num_steps, min=1, max=64, description="steps")
        self.num_masked = widgets.IntSlider(value=num_masked, min=0, max=256, description="masked")
        self.table = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in (self.schedule, self.num_steps, self.num_masked):
            control.observe(self._update, names="value")
        self._update()
        controls = widgets.HBox([self.schedule, self.num_steps, self.num_masked])
        self.widget = widgets.VBox([controls, widgets.HBox([self.image, self.table])])

    def _update(self, change: dict | None = None) -> None:
        schedule, steps, masked = self.schedule.value, self.num_steps.value, self.num_masked.value
        self.table.value = schedule_table_html(schedule, steps, masked)
        self.image.value = plots.figure_png(
            plots.schedule_figure([schedule], steps, masked), dpi=70
        )

    def _ipython_display_(self) -> None:
        display(self.widget)


# ---------------------------------------------------------------- sampling


def kept_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, then top-k (0 = off), then nucleus top-p: (renormalised probs, kept mask).

    Nucleus keeps the smallest set of most probable tokens whose mass reaches p,
    including the token that crosses p. Temperature 0 means greedy.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)  # (..., V)
    check(top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}")
    check(0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}")
    if temperature <= 0:
        kept = torch.zeros_like(logits, dtype=torch.bool)
        kept.scatter_(-1, logits.argmax(-1, keepdim=True), True)
    else:
        logits = logits / temperature  # p_T ∝ exp(logit / T)
        kept = torch.isfinite(logits)
        if 0 < top_k < logits.shape[-1]:
            top = torch.zeros_like(kept)
            kept &= top.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        if top_p < 1.0:
            p = torch.softmax(logits.masked_fill(~kept, -math.inf), dim=-1)
            sorted_p, order = p.sort(dim=-1, descending=True, stable=True)
            # keep token i if the mass strictly before it is still short of p (so the crosser stays)
            keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p
            kept &= torch.zeros_like(kept).scatter_(-1, order, keep_sorted)
    probs = torch.softmax(logits.masked_fill(~kept, -math.inf), dim=-1)
    return probs, kept


def _as_logits(logits_or_probs, kind: str) -> torch.Tensor:
    values = torch.as_tensor(_numpy(logits_or_probs), dtype=torch.float64).reshape(-1)  # (V,)
    check(kind in ("auto", "logits", "probs"), f"kind must be auto, logits or probs, got {kind!r}")
    if kind == "auto":
        is_probs = bool(
            (values >= 0).all() and (values <= 1).all() and abs(float(values.sum()) - 1) < 1e-3
        )
        kind = "probs" if is_probs else "logits"
    return values.log() if kind == "probs" else values


def _candidate_label(piece: str) -> str:
    return piece.replace("Ġ", "\u2423").replace("Ċ", "\u21b5")  # ␣ word start, ↵ newline


def sampler_settings(sampling: str, temperature: float, top_k: int, top_p: float) -> dict:
    """The `kept_distribution` arguments for one of `tdlib.sample`'s modes (greedy, topk, nucleus)."""
    check(
        sampling in SAMPLINGS,
        f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}",
    )
    if sampling == "greedy":
        return {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
    if sampling == "topk":
        return {"temperature": temperature, "top_k": top_k, "top_p": 1.0}
    return {"temperature": temperature, "top_k": 0, "top_p": top_p}


def sampling_table_html(
    logits,
    tokenizer,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_candidates: int = 12,
) -> str:
    """HTML table of the top candidates: p at T=1, p at temperature T, and the kept, renormalised p."""
    logits = _as_logits(logits, "logits")
    base = torch.softmax(logits, dim=-1)  # (V,)
    kept_p, kept = kept_distribution(logits, temperature, top_k, top_p)
    tempered = torch.softmax(logits / temperature, dim=-1) if temperature > 0 else kept_p
    order = base.argsort(descending=True, stable=True)[:num_candidates]
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in order])
    cell = "padding:0 6px;"
    rows = [
        f"<tr><th style='{cell}'>#</th><th style='{cell}'>token</th><th style='{cell}'>p (T=1)</th>"
        f"<th style='{cell}'>p (T={temperature:g})</th><th style='{cell}'>kept p</th><th></th></tr>"
    ]
    for rank, (i, piece) in enumerate(zip(order.tolist(), pieces, strict=True), start=1):
        cls = "td-kept" if kept[i] else "td-dropped"
        look = "" if kept[i] else "color:#aaa;text-decoration:line-through;"
        bar = f"<div style='background:#4a7ab0;height:10px;width:{160 * float(kept_p[i]):.1f}px'></div>"
        rows.append(
            f"<tr class='{cls}' style='{look}'><td style='{cell}'>{rank}</td>"
            f"<td style='{cell}font-family:monospace'>{html.escape(_candidate_label(piece))}</td>"
            f"<td style='{cell}'>{float(base[i]):.3f}</td><td style='{cell}'>{float(tempered[i]):.3f}</td>"
            f"<td style='{cell}'>{float(kept_p[i]):.3f}</td><td>{bar}</td></tr>"
        )
    settings = (
        "greedy"
        if temperature <= 0
        else f"T={temperature:g}, top-k={top_k or 'off'}, top-p={top_p:g}"
    )
    summary = (
        f"<div class='td-summary' style='{FONT}font-size:12px;color:#555'>kept {int(kept.sum())} of "
        f"{kept.numel()} tokens ({settings})</div>"
    )
    return (
        f"<table class='td-sampling' style='{FONT}font-size:12px;'>{''.join(rows)}</table>{summary}"
    )


class SamplingExplorer:
    """The sampler's modes over one distribution: see which tokens greedy, top-k or nucleus keep."""

    def __init__(
        self,
        logits_or_probs,
        tokenizer,
        *,
        kind: str = "auto",
        sampling: str = "nucleus",
        num_candidates: int = 12,
    ):
        self.logits = _as_logits(logits_or_probs, kind)  # (V,)
        self.tokenizer = tokenizer
        self.num_candidates = num_candidates
        vocab = self.logits.numel()
        self.sampling = widgets.Dropdown(
            options=list(SAMPLINGS), value=sampling, description="sampling"
        )
        self.temperature = widgets.FloatSlider(
            value=1.0, min=0.05, max=3.0, step=0.05, description="temperature"
        )
        self.top_k = widgets.IntSlider(
            value=min(10, vocab), min=1, max=min(vocab, 100), description="top-k"
        )
        self.top_p = widgets.FloatSlider(
            value=0.9, min=0.05, max=1.0, step=0.01, description="top-p"
        )
        self.html = widgets.HTML()
        for control in (self.sampling, self.temperature, self.top_k, self.top_p):
            control.observe(self._update, names="value")
        self._update()
        controls = widgets.HBox([self.sampling, self.temperature, self.top_k, self.top_p])
        self.widget = widgets.VBox([controls, self.html])

    def _update(self, change: dict | None = None) -> None:
        mode = self.sampling.value
        self.temperature.disabled = mode == "greedy"
        self.top_k.disabled = mode != "topk"
        self.top_p.disabled = mode != "nucleus"
        settings = sampler_settings(
            mode, self.temperature.value, self.top_k.value, self.top_p.value
        )
        self.html.value = sampling_table_html(
            self.logits, self.tokenizer, **settings, num_candidates=self.num_candidates
        )

    def _ipython_display_(self) -> None:
        display(self.widget)


# ---------------------------------------------------------------- masking


def masked_at_ratio(
    x0: torch.Tensor, t: float, mask_id: int, protected: torch.Tensor | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tdlib.masking.mask_tokens` with a freshly seeded generator: the masked set grows with t."""
    generator = torch.Generator().manual_seed(
        seed
    )  # same uniforms for every t -> nested masked sets
    return mask_tokens(x0, t, mask_id, protected, generator)


class MaskingExplorer:
    """A mask-ratio slider over a sentence: the forward process, one fixed random order."""

    def __init__(
        self, text: str, tokenizer, *, ratio: float = 0.5, prefix_length: int = 0, seed: int = 0
    ):
        self.tokenizer = tokenizer
        self.seed = seed
        self.x0 = torch.as_tensor([tokenizer(text)["input_ids"]])  # (1, L)
        self.protected = protected_positions(
            self.x0, tokenizer, prefix_length=prefix_length
        )  # (1, L)
        self.ratio = widgets.FloatSlider(
            value=ratio, min=0.0, max=1.0, step=0.05, description="mask ratio t"
        )
        self.html = widgets.HTML()
        self.ratio.observe(self._update, names="value")
        self._update()
        self.widget = widgets.VBox([self.ratio, self.html])

    def render(self, t: float) -> str:
        """HTML of the sentence masked at ratio `t`."""
        mask_id = self.tokenizer.mask_token_id
        xt, masked = masked_at_ratio(self.x0, t, mask_id, self.protected, self.seed)  # (1, L) each
        maskable = int((~self.protected).sum())
        head = (
            f"<div class='td-head' style='{FONT}color:#555;font-size:12px'>t = {t:.2f}: "
            f"{int(masked.sum())} of {maskable} maskable tokens masked</div>"
        )
        return head + render_tokens_html(xt[0], self.tokenizer, masked[0], self.protected[0])

    def _update(self, change: dict | None = None) -> None:
        self.html.value = self.render(self.ratio.value)

    def _ipython_display_(self) -> None:
        display(self.widget)
