"""`tdlib generate`: write text from a checkpoint by iterative unmasking.

Wiring only: validate the flags, load the checkpoint (`tdlib.model.load_checkpoint`),
call `tdlib.canvas.generate`, then print the texts, the denoising steps
(``--show-steps``), an animation (``--animation FILE.html|FILE.gif``) or one JSON
object (``--json``); steps and animations are drawn by `tdlib.render`, so this
command imports no Jupyter code. The sampler's flags are the fields of
`tdlib.sample.SamplerConfig`, with its defaults and help: 16 steps on a linear
schedule in dilated order (each pass reveals positions far apart, chosen by
measurement: `bench/toy_samplers.py`), drawing from the top 50 tokens at temperature 1;
the original experiment's sampler is one flag away, ``--strategy resample``. The canvas
is 64 tokens, seed 0 (same command, same text).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from tdlib import render
from tdlib.canvas import generate
from tdlib.cli import seed_value
from tdlib.errors import UserError, require
from tdlib.sample import SamplerConfig, Trajectory

ANIMATION_TYPES = (".html", ".gif")


def _add_sampler_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `SamplerConfig`, with its default, type, choices and help."""
    for option in fields(SamplerConfig):
        meta = option.metadata
        flag = meta.get("flag", "--" + option.name.replace("_", "-"))
        default = option.default
        suffix = "" if default is None else f" (default: {default})"
        choices = meta.get("choices")
        parser.add_argument(flag, dest=option.name, default=default, choices=choices,
                            metavar=None if choices else flag[2:].replace("-", "_").upper(),
                            type=meta.get("type", type(default)), help=meta["help"] + suffix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib generate`."""
    parser.add_argument("--checkpoint", required=True, help="run directory or model directory")
    parser.add_argument("--prefix", default="", help="text to continue; with mask tokens in it, the text to fill in")
    parser.add_argument("--num-samples", type=int, default=1, help="texts to generate, as one batch (default: 1)")
    parser.add_argument("--max-length", type=int, default=64, help="canvas length in tokens, incl. start/end (default: 64)")
    _add_sampler_flags(parser)
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
    config = SamplerConfig(**{option.name: getattr(args, option.name) for option in fields(SamplerConfig)})
    require(args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}")
    require(args.max_length >= 3, f"--max-length must be at least 3 (start, one token, end), got {args.max_length}")
    animation = Path(args.animation) if args.animation else None
    require(
        animation is None or animation.suffix.lower() in ANIMATION_TYPES,
        f"--animation {args.animation}: the file name must end in .html or .gif",
    )
    require(
        animation is None or animation.parent.is_dir(),
        f"--animation {args.animation}: folder {animation.parent if animation else ''} does not exist",
    )
    from tdlib.model import load_checkpoint

    model, tokenizer = load_checkpoint(args.checkpoint)
    texts, trajectory = generate(model, tokenizer, config, prefix=args.prefix, num_samples=args.num_samples,
                                 max_length=args.max_length, seed=args.seed)
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
