"""Pure rendering of trajectories and tokens: as terminal text, HTML and animations.

Every function here turns recorded data into a string (or GIF bytes), so the
command line (`tdlib generate --show-steps`, ``--animation``), exported pages
and the notebook widgets (`tdlib.widgets`) show the same thing, and each can be
tested without a browser:

- a canvas as terminal text (`canvas_text`, `step_texts`);
- a trajectory step as HTML (`render_step_html`, `render_final_html`,
  `render_tokens_html`, `masking_html`) and as a self-contained animation
  (`animation_html`, `animation_gif`).

Tokens are shown by the tokenizer rules of `tdlib.pieces`. A still-masked position
is always drawn as `MASK_GLYPH` (U+25AF), a character the course's texts never hold
(the Python manual has none, and MiniLM's vocabulary cannot write it), unlike "_".
A trajectory is anything with the fields of `tdlib.sample.Trajectory`: tokens
(S+1, B, L), revealed (S+1, B, L), probs (S+1, B, L), mask_id, given (B, L).

This module imports nothing from Jupyter (no ipywidgets, no IPython), never runs
a model and never samples. The explorers' schedule and sampling tables are
`tdlib.tables`; matplotlib figures live in `tdlib.plots`.
"""

from __future__ import annotations

import html
import io
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tdlib.errors import require
from tdlib.pieces import Piece, token_pieces

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tdlib.sample import Trajectory

MASK_GLYPH = "\u25af"  # ▯ a still-masked position, in the terminal, animations and widgets
FONT = "font-family:system-ui,sans-serif;"
FRAME_STYLE = f"{FONT}font-size:14px;line-height:2.0;"


def themed(level: int, fallback: str) -> str:
    """A text colour from the JupyterLab theme (content font colour ``level``, 0 = strongest), light or dark;
    ``fallback`` (the light look) where the page has no theme, as in a plain HTML export."""
    return f"color:var(--jp-content-font-color{level},{fallback});"


RULE = "var(--jp-border-color2,#eee)"  # a thin separating line, from the theme
# backgrounds are translucent tints, readable under the theme's text colour on light and dark pages alike
STYLES = {
    "td-mask": (
        "display:inline-block;min-width:1.6em;text-align:center;line-height:1.4;"
        f"background:rgba(128,128,128,0.35);{themed(2, '#6b6b6b')}border-radius:3px;font-family:monospace;"
    ),
    "td-new": f"border-radius:3px;padding:1px 2px;outline:1px solid #d96c00;{themed(1, '#222')}",
    "td-old": themed(1, "#222"),
    "td-given": f"font-weight:bold;text-decoration:underline;{themed(0, '#123')}",
    "td-final": f"border-radius:3px;padding:1px 1px;{themed(1, '#222')}",
}


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
        f'<div class="td-head" style="{themed(2, "#555")}font-size:12px;">{head}</div>{body}{legend}</div>'
    )


def _row(label: str, spans: str) -> str:
    label_style = f"{themed(3, '#888')}font-size:11px;margin-right:6px;"
    label_html = f'<span class="td-label" style="{label_style}">{html.escape(label)}</span>'
    return f'<div class="td-sample" style="margin:2px 0 6px 0;">{label_html}{spans}</div>'


def _new_style(p: float) -> str:
    # a stronger orange = the sampler was surer; at most 0.5, so the theme's text stays readable on it (light or dark)
    alpha = 0.4 if math.isnan(p) else 0.1 + 0.4 * p
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
    require(tokens.ndim == 3, f"trajectory.tokens must be (S+1, B, L), got shape {tokens.shape}")
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
    require(
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
    style = f"{themed(2, '#666')}font-size:11px;border-top:1px solid {RULE};margin-top:4px;"
    return (
        f'<div class="td-legend" style="{style}">' + " &nbsp;&middot;&nbsp; ".join(items) + "</div>"
    )


def _legend_step() -> str:
    return _legend(
        [
            _span(MASK_GLYPH, "td-mask", STYLES["td-mask"]) + " still masked",
            _span("word", "td-new", _new_style(0.9))
            + " revealed at this step (stronger = more probable)",
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
    require(0 <= step <= arrays.num_steps, f"step {step} is outside 0..{arrays.num_steps}")
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
    """Static HTML of the final text, each token tinted by when it was revealed (stronger = earlier)."""
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
        f"final text after {num_steps} steps &middot; stronger tint = revealed earlier"
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
        f"<div class='td-head' style='{FONT}{themed(2, '#555')}font-size:12px'>t = {t:.2f}: "
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
