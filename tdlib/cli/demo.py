"""`tdlib demo`: the main job, offline on a CPU.

Train a masked diffusion model with a preset, then generate a few samples with
every denoising step shown. The default preset, ``toy``, learns the toy language
(`tdlib.toylang`) in a few minutes, so its samples read as sentences, and then
grades them exactly: the NELBO against the language's true negative
log-likelihood of the same held-out sentences, the share of grammatical
sentences the network writes, and one sample of the exact denoiser beside the
network's. ``cpu`` trains on real text (about ten minutes); ``smoke`` takes
seconds. Re-running it reuses a finished run and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tdlib.cli import seed_value

DEMO_PRESETS = ("toy", "cpu", "smoke")  # the training presets the demo offers
PROMPTS = {"toy": "the", "cpu": "The", "smoke": "The"}  # the toy language is lower-case
SCORED_SAMPLES = 200  # samples whose sentences are checked against the toy grammar
GRADING_MASKS = 4  # random masks per held-out line in the graded NELBO (training's evaluation takes one)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib demo`."""
    from tdlib.strategies import STRATEGIES

    parser.add_argument("--preset", choices=DEMO_PRESETS, default="toy",
                        help="training preset: toy (the toy language, a few minutes; default), cpu (real text, "
                             "about ten minutes) or smoke (seconds)")
    parser.add_argument("--output-dir", help="run directory (default: runs/demo-PRESET)")
    parser.add_argument("--prefix", default=None, help="prompt the samples continue (default: 'the' for toy, else 'The')")
    parser.add_argument("--num-samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: half the length)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: the preset's, at most 48)")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--strategy", default="random", choices=STRATEGIES,
                        help="which positions to reveal (default: random, the ancestral sampler; confidence "
                             "decoding repeats frequent tokens on a briefly trained model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train (or reuse) the preset's model, generate with the denoising shown, and grade the toy model exactly."""
    from tdlib.cli import build_parser
    from tdlib.errors import require
    from tdlib.train import preset, train

    # check the generation flags before minutes of training, not after
    require(args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}")
    require(args.steps is None or args.steps >= 1, f"--steps must be at least 1, got {args.steps}")
    require(args.max_length is None or args.max_length >= 3, f"--max-length must be at least 3, got {args.max_length}")
    out = Path(args.output_dir or f"runs/demo-{args.preset}")
    config = preset(args.preset, output_dir=str(out))
    last_eval = None
    if (out / "final-model").is_dir():
        print(f"== reusing the trained model in {out}/final-model")
    else:
        print(f"== training the '{args.preset}' preset into {out} (offline, CPU)")
        resume = out.exists() and any(out.glob("checkpoint-*"))
        last_eval = train(config, resume=resume, progress=not args.quiet).last_eval
        if last_eval:
            print(f"== NELBO on held-out text: {last_eval['nelbo_bits_per_char']:.3f} "
                  f"+- {last_eval['nelbo_bits_per_char_stderr']:.3f} bits/char (one random mask per sequence)")
    max_length = args.max_length or min(config.max_length, 48)
    steps = args.steps if args.steps is not None else max(max_length // 2, 1)
    prefix = PROMPTS[args.preset] if args.prefix is None else args.prefix
    print(f"== generating {args.num_samples} samples, {steps} denoising steps, prompt {prefix!r}")
    gen = build_parser().parse_args([
        "generate", "--checkpoint", str(out / "final-model"), "--prefix", prefix,
        "--num-samples", str(args.num_samples), "--max-length", str(max_length), "--steps", str(steps),
        "--seed", str(args.seed), "--strategy", args.strategy, "--sampling", "nucleus", "--top-p", "0.9",
        "--show-steps",
    ])
    code = gen._run(gen)
    if code == 0 and config.dataset == "toy":
        _grade_toy(out / "final-model", config, max_length, prefix, args.seed, last_eval)
    print("== next: real text with `tdlib demo --preset cpu` (4 to 12 minutes on 2 cores, by machine); the original "
          "experiment on a GPU with `tdlib train --preset seed`")
    return code


def _grade_toy(model_dir: Path, config, max_length: int, prefix: str, seed: int, last_eval: dict | None) -> None:
    """Print the toy model's exact grades: NELBO against the true NLL, grammatical share, and the exact denoiser.

    The NELBO is training's estimate on the same held-out lines (``last_eval``, printed when
    the demo trained) with more random masks per line, so the two differ by their masks only.
    """
    from tdlib.canvas import generate
    from tdlib.data import get_split, load_corpus, make_examples
    from tdlib.evaluate import bound_against_truth
    from tdlib.model import as_denoiser, load_checkpoint
    from tdlib.toylang import ToyLanguage

    model, tokenizer = load_checkpoint(model_dir)
    language = ToyLanguage()
    # each split has its own seed: one training line is enough to get the same held-out lines
    lines = get_split(load_corpus("toy", num_lines=1, num_words=config.max_length - 2), "valid")
    examples = make_examples(lines, tokenizer, config.max_length, config.example_mode).subset(config.eval_examples)
    graded = bound_against_truth(as_denoiser(model, masked_only=True), language, examples,
                                 mask_id=tokenizer.mask_token_id, samples_per_sequence=GRADING_MASKS)
    print(f"== the exact answers, on {graded['sequences']} held-out lines of the toy language:")
    print(f"   NELBO of the network {graded['nelbo_bits_per_char']:.4f} +- {graded['nelbo_bits_per_char_stderr']:.4f}"
          f" bits/char ({GRADING_MASKS} random masks per line); true NLL {graded['true_bits_per_char']:.4f} (ratio "
          f"{graded['ratio']:.3f}; a bound stays above 1)")
    if last_eval:
        print(f"   (the NELBO after training, {last_eval['nelbo_bits_per_char']:.3f}, took the same lines with one other "
              "random mask each: the two differ only by their random masks)")
    options = dict(prefix=prefix, max_length=max_length, num_steps=max_length - 2, strategy="random",
                   sampling="nucleus", top_p=1.0, seed=seed)  # one token per step, from the full distribution
    network, _ = generate(model, tokenizer, num_samples=SCORED_SAMPLES, **options)
    exact, _ = generate(language, tokenizer, num_samples=SCORED_SAMPLES, **options)
    for name, texts in (("network", network), ("exact denoiser", exact)):
        share = language.grammatical_share(texts)
        print(f"   {name:14s} {share['grammatical']} of {share['sentences']} sentences grammatical "
              f"({100 * share['share']:.1f} %), one token per step, {SCORED_SAMPLES} samples: {texts[0]}")
