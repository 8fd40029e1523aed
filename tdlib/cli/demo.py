"""`tdlib demo`: the main job, offline on a CPU.

Train a masked diffusion model with a preset (``cpu`` by default, about ten
minutes on a 2-core laptop; ``smoke`` takes seconds), then generate a few
samples with every denoising step shown. Re-running it reuses a finished run
and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tdlib.cli import seed_value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib demo`."""
    parser.add_argument("--preset", choices=["cpu", "smoke"], default="cpu", help="training preset (default: cpu)")
    parser.add_argument("--output-dir", help="run directory (default: runs/demo-PRESET)")
    parser.add_argument("--prefix", default="The", help="prompt the samples continue")
    parser.add_argument("--num-samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: half the length)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: preset's)")
    parser.add_argument("--seed", type=seed_value, default=0)
    from tdlib.sample import STRATEGIES

    parser.add_argument("--strategy", default="random", choices=STRATEGIES,
                        help="which positions to reveal (default: random, the ancestral sampler; confidence "
                             "decoding repeats frequent tokens on a briefly trained model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train (or reuse) the preset's model, then generate with the denoising shown."""
    from tdlib.cli import build_parser
    from tdlib.errors import check
    from tdlib.train import preset, train

    # check the generation flags before minutes of training, not after
    check(args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}")
    check(args.steps is None or args.steps >= 1, f"--steps must be at least 1, got {args.steps}")
    check(args.max_length is None or args.max_length >= 3, f"--max-length must be at least 3, got {args.max_length}")
    out = Path(args.output_dir or f"runs/demo-{args.preset}")
    config = preset(args.preset, output_dir=str(out))
    if (out / "final-model").is_dir():
        print(f"== reusing the trained model in {out}/final-model")
    else:
        print(f"== training the '{args.preset}' preset into {out} (offline, CPU)")
        resume = out.exists() and any(out.glob("checkpoint-*"))
        result = train(config, resume=resume, progress=not args.quiet)
        if result.last_eval:
            print(f"== NELBO on held-out text: {result.last_eval['nelbo_bits_per_char']:.3f} bits/char")
    max_length = args.max_length or min(config.max_length, 48)
    steps = args.steps if args.steps is not None else max(max_length // 2, 1)
    print(f"== generating {args.num_samples} samples, {steps} denoising steps, prompt {args.prefix!r}")
    gen = build_parser().parse_args([
        "generate", "--checkpoint", str(out / "final-model"), "--prefix", args.prefix,
        "--num-samples", str(args.num_samples), "--max-length", str(max_length), "--steps", str(steps),
        "--seed", str(args.seed), "--strategy", args.strategy, "--sampling", "nucleus", "--top-p", "0.9",
        "--show-steps",
    ])
    return gen._run(gen)
