"""`tdlib generate`: write text from a checkpoint by iterative unmasking.

Wiring only: validate the flags, load the checkpoint (`tdlib.model.load_checkpoint`),
call `tdlib.sample.generate`, then print the texts, the denoising steps
(``--show-steps``), an animation (``--animation FILE.html|FILE.gif``) or one JSON
object (``--json``). Defaults: 64 tokens in 32 steps on a linear schedule,
revealing the most confident tokens first (``--strategy confidence``; the seed's
method is ``--strategy resample``), drawing from the top 50 tokens at
temperature 1, seed 0 (so the same command gives the same text).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import textwrap
from pathlib import Path

from tdlib.cli import seed_value
from tdlib.errors import UserError, check
from tdlib.sample import SAMPLINGS, STRATEGIES, Trajectory, check_options, generate
from tdlib.schedules import SCHEDULES

MASK_SHOWN = "_"  # how a still-masked position looks in --show-steps and GIF frames
ANIMATION_TYPES = (".html", ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib generate`."""
    parser.add_argument("--checkpoint", required=True, help="run directory or model directory")
    parser.add_argument("--prefix", default="", help="text to continue; with mask tokens in it, the text to fill in")
    parser.add_argument("--num-samples", type=int, default=1, help="texts to generate, as one batch (default: 1)")
    parser.add_argument("--max-length", type=int, default=64, help="canvas length in tokens, incl. start/end (default: 64)")
    parser.add_argument("--steps", type=int, default=32, help="denoising steps = forward passes (default: 32)")
    parser.add_argument("--schedule", default="linear", choices=SCHEDULES, help="tokens masked after each step (default: linear)")
    parser.add_argument(
        "--strategy", default="confidence", choices=STRATEGIES,
        help="which positions to reveal at each step; resample is the seed's method (default: confidence)",
    )
    parser.add_argument("--sampling", default="topk", choices=SAMPLINGS, help="how a token is drawn (default: topk)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=50, help="tokens kept by --sampling topk (default: 50)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass for --sampling nucleus, in (0, 1] (default: 0.9)")
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed; same seed, same text (default: 0)")
    parser.add_argument("--show-steps", action="store_true", help=f"print the canvas after every step ({MASK_SHOWN} = masked)")
    parser.add_argument("--animation", metavar="FILE", default=None, help="write the denoising as FILE.html (player) or FILE.gif")
    parser.add_argument("--json", action="store_true", help="print one JSON object: samples, steps, forward_passes, seconds (of sampling, loading excluded)")


def canvas_text(ids, tokenizer, mask_id: int) -> str:
    """One canvas row as text, each still-masked position shown as `MASK_SHOWN`."""
    parts: list[str] = []
    run: list[int] = []
    for token in [*map(int, ids), mask_id]:  # display only: a loop over one row's tokens
        if token != mask_id:
            run.append(token)
            continue
        parts.append(tokenizer.decode(run, skip_special_tokens=True).strip())
        parts.append(MASK_SHOWN)
        run = []
    return " ".join(p for p in parts[:-1] if p)


def _step_texts(trajectory: Trajectory, tokenizer) -> list[list[str]]:
    """texts[s][b]: canvas of sample b after step s."""
    return [[canvas_text(row, tokenizer, trajectory.mask_id) for row in step] for step in trajectory.tokens]


def write_html_animation(trajectory: Trajectory, tokenizer, path: Path) -> None:
    """A self-contained HTML page with every step and a small play/scrub player."""
    from tdlib.widgets import render_step_html

    frames = [render_step_html(trajectory, s, tokenizer) for s in range(trajectory.num_steps + 1)]
    last = len(frames) - 1
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tdlib generate: denoising</title></head>
<body style="font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;">
<div><button id="play">play</button>
<input id="step" type="range" min="0" max="{last}" value="0" style="width:60%;">
<span id="label">step 0 / {last}</span></div>
<div id="frame"></div>
<script>
const frames = {json.dumps(frames)};
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
<noscript>{html.escape("JavaScript is off; the last step:")}{frames[-1]}</noscript>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_gif_animation(trajectory: Trajectory, tokenizer, path: Path, width: int = 640) -> None:
    """An animated GIF, one frame per step, the text of every sample (at most 4) drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    texts = _step_texts(trajectory, tokenizer)
    line_height, margin, columns = 18, 10, (width - 20) // 7
    frames = []
    for s, rows in enumerate(texts):
        lines = [f"step {s} / {trajectory.num_steps}", ""]
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
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)


def run(args: argparse.Namespace) -> int:
    """Generate and print; returns the exit status."""
    check_options(
        num_steps=args.steps,
        schedule=args.schedule,
        strategy=args.strategy,
        sampling=args.sampling,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    check(args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}")
    check(args.max_length >= 3, f"--max-length must be at least 3 (start, one token, end), got {args.max_length}")
    animation = Path(args.animation) if args.animation else None
    check(
        animation is None or animation.suffix.lower() in ANIMATION_TYPES,
        f"--animation {args.animation}: the file name must end in .html or .gif",
    )
    check(
        animation is None or animation.parent.is_dir(),
        f"--animation {args.animation}: folder {animation.parent if animation else ''} does not exist",
    )
    from tdlib.model import load_checkpoint

    model, tokenizer = load_checkpoint(args.checkpoint)
    texts, trajectory = generate(
        model,
        tokenizer,
        prefix=args.prefix,
        num_samples=args.num_samples,
        max_length=args.max_length,
        num_steps=args.steps,
        schedule=args.schedule,
        strategy=args.strategy,
        sampling=args.sampling,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.show_steps:
        out = sys.stderr if args.json else sys.stdout  # keep stdout pure JSON with --json
        for s, rows in enumerate(_step_texts(trajectory, tokenizer)):
            print(f"--- step {s} / {trajectory.num_steps}", file=out)
            for b, text in enumerate(rows):
                print(f"[{b}] {text}" if len(rows) > 1 else text, file=out)
    if animation is not None:
        write = write_html_animation if animation.suffix.lower() == ".html" else write_gif_animation
        try:
            write(trajectory, tokenizer, animation)
        except OSError as exc:
            raise UserError(f"cannot write --animation {animation}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps({
            "samples": texts,
            "steps": trajectory.num_steps,
            "forward_passes": trajectory.forward_passes,
            "seconds": round(trajectory.seconds, 4),
        }))
        return 0
    if args.show_steps:
        print("--- final")
    for b, text in enumerate(texts):
        print(f"[{b}] {text}" if len(texts) > 1 else text)
    if animation is not None:
        print(f"animation written to {animation}", file=sys.stderr)
    return 0
