"""`tdlib generate`: write text from a checkpoint by iterative unmasking.

Wiring only: validate the flags, load the checkpoint (`tdlib.model.load_checkpoint`),
call `tdlib.sample.generate`, then print the texts, the denoising steps
(``--show-steps``), an animation (``--animation FILE.html|FILE.gif``) or one JSON
object (``--json``); steps and animations are drawn by `tdlib.render`, so this
command imports no Jupyter code. Defaults: 64 tokens in 32 steps on a linear
schedule, revealing the most confident tokens first (``--strategy confidence``;
the original experiment's method is ``--strategy resample``), drawing from the top 50 tokens at
temperature 1, seed 0 (so the same command gives the same text).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tdlib import render
from tdlib.cli import seed_value
from tdlib.errors import UserError, check
from tdlib.sample import SAMPLINGS, STRATEGIES, Trajectory, check_options, generate
from tdlib.schedules import SCHEDULES

ANIMATION_TYPES = (".html", ".gif")
# flags passed to the sampler under their own names
SAMPLER_FLAGS = ("schedule", "strategy", "sampling", "temperature", "top_k", "top_p", "threshold", "entropy_bound",
                 "remask_eta", "block_length")


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
        help="which positions to reveal at each step; resample is the original experiment's method; threshold and "
             "entropy-bound may finish in fewer passes than --steps; remask-* may hide tokens again (default: confidence)",
    )
    parser.add_argument("--sampling", default="topk", choices=SAMPLINGS, help="how a token is drawn (default: topk)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=50, help="tokens kept by --sampling topk (default: 50)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus mass for --sampling nucleus, in (0, 1] (default: 0.9)")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="--strategy threshold: reveal every token drawn with probability >= F, at least one per pass (default: 0.9)")
    parser.add_argument("--entropy-bound", type=float, default=1.0,
                        help="--strategy entropy-bound: reveal lowest-entropy positions while their summed entropy minus the largest is <= F nats (default: 1.0)")
    parser.add_argument("--remask-eta", type=float, default=0.1,
                        help="--strategy remask-cap/remask-conf: chance that a revealed token is hidden again at a step (default: 0.1)")
    parser.add_argument("--block-length", type=int, default=None,
                        help="generate blocks of N tokens left to right (semi-autoregressive); --steps are split between blocks")
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed; same seed, same text (default: 0)")
    parser.add_argument("--show-steps", action="store_true", help=f"print the canvas after every step ({render.MASK_GLYPH} = masked)")
    parser.add_argument("--animation", metavar="FILE", default=None, help="write the denoising as FILE.html (player) or FILE.gif")
    parser.add_argument("--json", action="store_true", help="print one JSON object: samples, steps, forward_passes, seconds (of sampling, loading excluded)")


def _show_steps(trajectory: Trajectory, tokenizer, out) -> None:
    """Print the canvas after every step, masked positions as `render.MASK_GLYPH`."""
    for s, rows in enumerate(render.step_texts(trajectory, tokenizer)):
        print(f"--- step {s} / {trajectory.num_steps}", file=out)
        for b, text in enumerate(rows):
            print(f"[{b}] {text}" if len(rows) > 1 else text, file=out)


def _write_animation(trajectory: Trajectory, tokenizer, path: Path) -> None:
    """Write the denoising as a self-contained HTML player or an animated GIF, by the file's suffix."""
    try:
        if path.suffix.lower() == ".html":
            path.write_text(render.animation_html(trajectory, tokenizer), encoding="utf-8")
        else:
            path.write_bytes(render.animation_gif(trajectory, tokenizer))
    except OSError as exc:
        raise UserError(f"cannot write --animation {path}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    """Generate and print; returns the exit status."""
    options = {name: getattr(args, name) for name in SAMPLER_FLAGS}
    check_options(num_steps=args.steps, **options)
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
    texts, trajectory = generate(model, tokenizer, prefix=args.prefix, num_samples=args.num_samples,
                                 max_length=args.max_length, num_steps=args.steps, seed=args.seed, **options)
    if args.show_steps:
        _show_steps(trajectory, tokenizer, sys.stderr if args.json else sys.stdout)  # keep stdout pure JSON
    if animation is not None:
        _write_animation(trajectory, tokenizer, animation)
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
