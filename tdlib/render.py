"""Pure rendering of what the core returns: tokens, trajectories, schedules and draws as text or HTML.

Every function here turns recorded data into a string (or GIF bytes), so the
command line (`tdlib generate --show-steps`, ``--animation``), exported pages
and the notebook widgets (`tdlib.widgets`) show the same thing, and each can be
tested without a browser:

- detokenisation for display (`display_pieces`, `display_words`, `token_pieces`);
- a canvas as terminal text (`canvas_text`, `step_texts`);
- a trajectory step as HTML (`render_step_html`, `render_final_html`,
  `render_tokens_html`, `masking_html`) and as a self-contained animation
  (`animation_html`, `animation_gif`);
- the schedule and sampling tables of the explorers (`schedule_table_html`,
  `kept_distribution`, `sampling_table_html`).

A still-masked position is always drawn as `MASK_GLYPH` (U+25AF), a character
the course's texts never hold (the Python manual has none, and MiniLM's
vocabulary cannot write it), unlike "_". A trajectory is anything with the fields of
`tdlib.sample.Trajectory`: tokens (S+1, B, L), revealed (S+1, B, L), probs
(S+1, B, L), mask_id, given (B, L).

This module imports nothing from Jupyter (no ipywidgets, no IPython), never runs
a model and never samples: the one piece of sampling math it shows, the kept
distribution, is the sampler's own filter (`tdlib.sample.filter_log_probs`).
Matplotlib figures live in `tdlib.plots`.
"""

from __future__ import annotations

import html
import io
import json
import math
import textwrap
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from tdlib.errors import check
from tdlib.sample import SAMPLINGS, filter_log_probs
from tdlib.schedules import masked_counts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tdlib.sample import Trajectory

MASK_GLYPH = "\u25af"  # ▯ a still-masked position, in the terminal, animations and widgets alike
HIDDEN_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"})
# WordPiece splits punctuation off; glue it back on: closers to the word before, openers to the
# word after, an apostrophe to both ("isn ' t" -> "isn't")
CLOSERS = frozenset(".,!?;:)]}%>")
OPENERS = frozenset("([{<$")
APOSTROPHES = frozenset({"'", "\u2019"})
MASK_TOKENS = frozenset({"[MASK]", "<mask>"})

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


def tokenizer_style(tokenizer: PreTrainedTokenizerBase) -> str:
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


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[Piece]:
    """Display pieces for a row of token ids, special tokens (but not the mask) hidden."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return display_pieces(pieces, _special_pieces(tokenizer), tokenizer_style(tokenizer))


# ---------------------------------------------------------------- terminal text


def canvas_text(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, mask_id: int) -> str:
    """One canvas row as plain text, each still-masked position shown as `MASK_GLYPH`."""
    parts: list[str] = []
    run: list[int] = []
    for token in [*map(int, ids), mask_id]:  # display only: a loop over one row's tokens
        if token != mask_id:
            run.append(token)
            continue
        parts.append(tokenizer.decode(run, skip_special_tokens=True).strip())
        parts.append(MASK_GLYPH)
        run = []
    return " ".join(p for p in parts[:-1] if p)


def step_texts(trajectory: Trajectory, tokenizer: PreTrainedTokenizerBase) -> list[list[str]]:
    """texts[s][b]: the canvas of sample b after step s, as `canvas_text`."""
    return [[canvas_text(row, tokenizer, trajectory.mask_id) for row in step] for step in trajectory.tokens]


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


def _given_span(text: str, title: str = "given") -> str:
    return _span(text, "td-given", STYLES["td-given"], title)


def _final_style(alpha: float) -> str:
    return f"{STYLES['td-final']}background:rgba(70,130,180,{alpha:.2f});"


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


def _spans(tokenizer, ids: Sequence[int], masked: Sequence[bool], span_of: Callable[[int, Piece], str]) -> str:
    """One row of ids as spans: the mask glyph where ``masked``, nothing for hidden tokens, else ``span_of(j, piece)``."""
    items = []
    for j, piece in enumerate(token_pieces(tokenizer, ids)):
        if masked[j]:
            items.append(_mask_item())
        elif not piece.hidden:
            items.append((piece, span_of(j, piece)))
    return _join_spans(items)


def _sample_rows(
    tokenizer: PreTrainedTokenizerBase,
    tokens: np.ndarray,
    mask_id: int,
    samples: Sequence[int],
    span_of: Callable[[int, int, Piece], str],
) -> str:
    """One labelled row per sample b of ``tokens`` (B, L), each token drawn by ``span_of(b, j, piece)``."""
    return "".join(
        _row(f"sample {b}", _spans(tokenizer, tokens[b], tokens[b] == mask_id,
                                   lambda j, piece, b=b: span_of(b, j, piece)))
        for b in samples
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
            _given_span("word", "") + " given (prompt)",
        ]
    )


def _legend_final() -> str:
    return _legend(
        [
            _span("early", "td-final", _final_style(0.7)) + " revealed early",
            _span("late", "td-final", _final_style(0.1)) + " revealed late",
            _given_span("word", "") + " given (prompt)",
        ]
    )


def render_step_html(
    trajectory: Trajectory,
    step: int,
    tokenizer: PreTrainedTokenizerBase,
    sample: int | None = None,
    *,
    max_samples: int = 8,
) -> str:
    """HTML of the canvas after `step`: masks, tokens revealed now (shaded by p), earlier and given ones."""
    arrays = _arrays(trajectory)
    check(0 <= step <= arrays.num_steps, f"step {step} is outside 0..{arrays.num_steps}")
    tokens = arrays.tokens[step]  # (B, L)
    revealed = arrays.revealed[step]  # (B, L)
    probs = arrays.probs[step]  # (B, L)
    samples = _samples(arrays, sample, max_samples)

    def span_of(b: int, j: int, piece: Piece) -> str:
        p = float(probs[b, j])
        if arrays.given[b, j]:
            return _given_span(piece.text)
        if revealed[b, j]:
            return _span(piece.text, "td-new", _new_style(p), _prob_title(p))
        return _span(piece.text, "td-old", STYLES["td-old"], _prob_title(p))

    rows = _sample_rows(tokenizer, tokens, arrays.mask_id, samples, span_of)
    head = (
        f"step {step} / {arrays.num_steps} &middot; {int(revealed[samples].sum())} revealed at this step"
        f" &middot; {int((tokens[samples] == arrays.mask_id).sum())} still masked{_shown_note(arrays, samples)}"
    )
    return _frame(rows, head, _legend_step())


def _last_reveal(revealed: np.ndarray) -> np.ndarray:
    last_from_end = np.argmax(revealed[::-1], axis=0)  # (B, L) steps counted back from S
    return np.where(revealed.any(axis=0), revealed.shape[0] - 1 - last_from_end, 0)


def reveal_steps(trajectory: Trajectory) -> np.ndarray:
    """For each position, the last step at which it was revealed (0 if never), shape (B, L)."""
    return _last_reveal(_arrays(trajectory).revealed)


def render_final_html(
    trajectory: Trajectory,
    tokenizer: PreTrainedTokenizerBase,
    sample: int | None = None,
    *,
    max_samples: int = 8,
) -> str:
    """Static HTML of the final text, each token shaded by when it was revealed (darker = earlier)."""
    arrays = _arrays(trajectory)
    num_steps = arrays.num_steps
    tokens, probs = arrays.tokens[-1], arrays.probs[-1]  # (B, L) each
    when = _last_reveal(arrays.revealed)  # (B, L)
    samples = _samples(arrays, sample, max_samples)

    def span_of(b: int, j: int, piece: Piece) -> str:
        k = int(when[b, j])
        if arrays.given[b, j] or k == 0:
            return _given_span(piece.text)
        # shade from 0.7 (revealed at step 1) down to 0.1 (revealed at step S)
        alpha = 0.1 + 0.6 * (1 - (k - 1) / max(num_steps - 1, 1))
        title = ", ".join(filter(None, [f"revealed at step {k}", _prob_title(float(probs[b, j]))]))
        return _span(piece.text, "td-final", _final_style(alpha), title)

    rows = _sample_rows(tokenizer, tokens, arrays.mask_id, samples, span_of)
    head = (
        f"final text after {num_steps} steps &middot; darker = revealed earlier"
        f" (hover for step and probability){_shown_note(arrays, samples)}"
    )
    return _frame(rows, head, _legend_final())


def _flat(values, length: int, dtype=bool) -> np.ndarray:
    """``values`` as a flat array, or zeros of ``length`` when None."""
    return np.zeros(length, dtype) if values is None else _numpy(values).reshape(-1).astype(dtype)


def render_tokens_html(
    ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    masked: Sequence[bool] | None = None,
    protected: Sequence[bool] | None = None,
) -> str:
    """HTML of one row of ids: masked positions as chips, protected (given) tokens bold."""
    ids = [int(i) for i in _numpy(ids).reshape(-1)]
    masked, protected = _flat(masked, len(ids)), _flat(protected, len(ids))

    def span_of(j: int, piece: Piece) -> str:
        if protected[j]:
            return _given_span(piece.text, "protected")
        return _span(piece.text, "td-old", STYLES["td-old"])

    return f'<div class="td-sample" style="{FRAME_STYLE}">{_spans(tokenizer, ids, masked, span_of)}</div>'


def masking_html(
    tokenizer: PreTrainedTokenizerBase,
    xt: Sequence[int],
    masked: Sequence[bool],
    protected: Sequence[bool],
    t: float,
) -> str:
    """HTML of one sentence masked at ratio ``t``: a head line counting the masks, then the tokens."""
    protected = _flat(protected, len(protected))
    head = (
        f"<div class='td-head' style='{FONT}color:#555;font-size:12px'>t = {t:.2f}: "
        f"{int(_flat(masked, len(masked)).sum())} of {int((~protected).sum())} maskable tokens masked</div>"
    )
    return head + render_tokens_html(xt, tokenizer, masked, protected)


# ---------------------------------------------------------------- animations


ANIMATION_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tdlib generate: denoising</title></head>
<body style="font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;">
<div><button id="play">play</button>
<input id="step" type="range" min="0" max="{last}" value="0" style="width:60%;">
<span id="label">step 0 / {last}</span></div>
<div id="frame"></div>
<script>
const frames = {frames};
const slider = document.getElementById("step"), label = document.getElementById("label");
const button = document.getElementById("play");
let timer = null;
function show(s) {{
  slider.value = s; label.textContent = "step " + s + " / {last}";
  document.getElementById("frame").innerHTML = frames[s];
}}
function stop() {{ clearInterval(timer); timer = null; button.textContent = "play"; }}
slider.oninput = () => {{ stop(); show(Number(slider.value)); }};
button.onclick = () => {{
  if (timer) {{ stop(); return; }}
  if (Number(slider.value) === {last}) show(0);
  button.textContent = "pause";
  timer = setInterval(() => {{
    const s = Number(slider.value) + 1;
    show(s);
    if (s === {last}) stop();
  }}, 400);
}};
show(0);
</script>
<noscript>{noscript}{final}</noscript>
</body></html>
"""


def animation_html(trajectory: Trajectory, tokenizer: PreTrainedTokenizerBase) -> str:
    """A self-contained HTML page with every step of `render_step_html` and a small play/scrub player."""
    frames = [render_step_html(trajectory, s, tokenizer) for s in range(len(trajectory.tokens))]
    return ANIMATION_PAGE.format(last=len(frames) - 1, frames=json.dumps(frames), final=frames[-1],
                                 noscript=html.escape("JavaScript is off; the last step:"))


def _gif_font():
    """A monospaced font with the mask glyph (DejaVu Sans Mono), else Pillow's default."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSansMono.ttf", 12)
    except OSError:
        return ImageFont.load_default(size=13)


def animation_gif(trajectory: Trajectory, tokenizer: PreTrainedTokenizerBase, width: int = 640) -> bytes:
    """An animated GIF, one frame per step, the `step_texts` of every sample (at most 4)."""
    from PIL import Image, ImageDraw

    font = _gif_font()
    line_height, margin = 18, 10
    columns = int((width - 2 * margin) // font.getlength("M"))
    frames = []
    for s, rows in enumerate(step_texts(trajectory, tokenizer)):
        lines = [f"step {s} / {len(trajectory.tokens) - 1}", ""]
        for b, text in enumerate(rows[:4]):
            lines += [f"[{b}]"] + textwrap.wrap(text, columns) + [""]
        frames.append(lines)
    height = 2 * margin + line_height * max(len(lines) for lines in frames)
    images = []
    for lines in frames:
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(lines):
            draw.text((margin, margin + i * line_height), line, fill="black", font=font)
        images.append(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8))
    durations = [350] * (len(images) - 1) + [2500]  # linger on the finished text
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


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


# ---------------------------------------------------------------- sampling


def _kept(logp: torch.Tensor, sampling: str, top_k: int = 1, top_p: float = 1.0) -> torch.Tensor:
    """Bool (N, V): the tokens `tdlib.sample.filter_log_probs` keeps in each row of ``logp`` (N, V)."""
    weights, ids = filter_log_probs(logp, sampling=sampling, top_k=top_k, top_p=top_p)  # (N, K) each
    return torch.zeros_like(logp, dtype=torch.bool).scatter_(1, ids, weights > 0)


def kept_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's filter on ``logits`` (..., V): temperature, top-k (0 = off), then nucleus; (probs, kept).

    Each filter is `tdlib.sample.filter_log_probs`, the very function the sampler
    draws through: nucleus keeps the smallest set of most probable tokens whose
    mass reaches p, including the token that crosses p; temperature 0 means
    greedy. ``probs`` is the kept distribution renormalised.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)  # (..., V)
    check(top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}")
    check(0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}")
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    if temperature <= 0:
        kept = _kept(flat, "greedy")
    else:
        flat = flat / temperature  # p_T ∝ exp(logit / T)
        kept = torch.isfinite(flat)
        if 0 < top_k < flat.shape[-1]:
            kept &= _kept(torch.log_softmax(flat, -1), "topk", top_k=top_k)
        if top_p < 1.0:
            kept &= _kept(torch.log_softmax(flat.masked_fill(~kept, -math.inf), -1), "nucleus", top_p=top_p)
    probs = torch.softmax(flat.masked_fill(~kept, -math.inf), dim=-1)
    return probs.reshape(logits.shape), kept.reshape(logits.shape)


def as_logits(logits_or_probs: torch.Tensor | np.ndarray, kind: str = "auto") -> torch.Tensor:
    """One distribution (V,) as float64 logits; ``kind`` "auto" takes non-negative values summing to 1 as probs."""
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
    logits: torch.Tensor | np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_candidates: int = 12,
) -> str:
    """HTML table of the top candidates: p at T=1, p at temperature T, and the kept, renormalised p."""
    logits = as_logits(logits, "logits")
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


