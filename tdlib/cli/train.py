"""`tdlib train`: the training loop from the command line (see `tdlib.train`).

Every `TrainConfig` field is either a flag (`FLAGS`, named after the field
unless it says otherwise, its type read from the field's) or listed in
`NOT_FLAGS` with the reason; a test keeps the two lists and the fields equal.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from tdlib.cli import seed_value
from tdlib.data import EXAMPLE_MODES
from tdlib.errors import UserError
from tdlib.heads import HEAD_INITS
from tdlib.masking import MASKING_MODES, parse_ratios
from tdlib.objectives import HEAD_VOCABS, OBJECTIVES, WEIGHTINGS

if TYPE_CHECKING:
    from tdlib.train import TrainConfig

FLAGS: dict[str, dict] = {  # TrainConfig field -> argparse options of its flag (plus "flag": its name(s) if not --field)
    "objective": dict(choices=list(OBJECTIVES), help="diffusion (masked LM, default) or causal (the autoregressive "
                                                     "baseline, same tokenizer and size)"),
    "model_name": dict(help="minilm (packaged), scratch (small RoBERTa + BPE), a hub id or a local folder"),
    "dataset": dict(help="toy (the generated toy language), pydoc (embedded), wikitext-2, wikitext-2-v1, or a text "
                         "file or folder"),
    "corpus_size": dict(help="training lines of the generated toy corpus (default: 50,000)"),
    "data_dir": dict(help="folder with train.txt/valid.txt/test.txt for wikitext-2 (e.g. ../shared/data)"),
    "example_mode": dict(choices=EXAMPLE_MODES, help="one example per line (the original experiment) or packed blocks"),
    "epochs": dict(),
    "max_steps": dict(help="stop after this many optimizer steps (overrides --epochs)"),
    "batch_size": dict(),
    "grad_accum": dict(help="micro-batches per optimizer step"),
    "learning_rate": dict(),
    "warmup_steps": dict(),
    "max_length": dict(help="tokens per example"),
    "prefix_length": dict(help="content tokens at the start that are never masked"),
    "ratios": dict(flag=("--mask-ratios", "--mask-probs"), type=str,
                   help="comma-separated mask ratios, e.g. 1.0,0.9,...,0.1 (--mask-probs, the original experiment's "
                        "spelling, is the same flag)"),
    "masking": dict(choices=MASKING_MODES, help="one ratio per batch, per example, t~U(eps,1) per example, or the "
                                                "same spread evenly over the batch"),
    "loss_weighting": dict(choices=WEIGHTINGS),
    "head_init": dict(choices=HEAD_INITS, help="start of a new LM head: random (as built), unigram (output bias = "
                      "log frequencies of the training tokens) or identity (the unigram bias, and the head's "
                      "transform starts as a shifted identity map)"),
    "head_lr_scale": dict(help="learning-rate multiplier for the LM head's own parameters"),
    "head_vocab": dict(choices=HEAD_VOCABS, help="the training softmax over all tokens, or only those in the training "
                                                 "text (a cheaper step; evaluation and sampling keep every token)"),
    "dropout": dict(help="dropout probability for the whole model (0 turns it off; default: the model's)"),
    "freeze_embeddings": dict(help="keep the input embeddings (and an output layer tied to them) fixed: a cheaper step"),
    "freeze_layers": dict(help="keep the lowest N transformer layers fixed: a cheaper step"),
    "eval_steps": dict(),
    "save_steps": dict(),
    "save_total_limit": dict(),
    "time_budget_s": dict(flag="--time-budget", help="stop and save after this many seconds (inf: no limit)"),
    "lr_over_time": dict(help="decay the learning rate to zero over --time-budget seconds instead of over the steps"),
    "output_dir": dict(help="run directory (default: runs/PRESET)"),
    "seed": dict(type=seed_value),
}
NOT_FLAGS = {  # TrainConfig fields with no flag, and why: the presets and the Python API set them
    "weight_decay": "AdamW's usual 0.01 fits every preset",
    "max_grad_norm": "clipping at 1.0 fits every preset",
    "log_steps": "set by the presets; the metrics log's density, not a training setting",
    "eval_examples": "set by the presets",
    "save_at": "extra checkpoint steps for benchmarks (bench/), a list",
    "save_at_s": "checkpoints by the clock for benchmarks (bench/), a list",
    "scratch": "the sizes of a scratch model, a dict",
    "causal": "the sizes of the causal baseline, a dict",
}
TYPES = {"int": int, "int | None": int, "float": float, "float | None": float, "str": str, "str | None": str,
         "bool": argparse.BooleanOptionalAction}  # a field's annotation -> its flag's type (or action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib train`; unset flags take the preset's value."""
    from tdlib.train import PRESETS, TrainConfig

    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="base settings (default: cpu)")
    annotations = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name, options in FLAGS.items():
        options = dict(options)
        flags = options.pop("flag", "--" + name.replace("_", "-"))
        flags = (flags,) if isinstance(flags, str) else flags
        kind = TYPES[annotations[name]] if "type" not in options else options.pop("type")
        if kind is argparse.BooleanOptionalAction:
            options["action"] = kind
        elif "choices" not in options:
            options["type"] = kind
        parser.add_argument(*flags, dest=name, **options)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags describe."""
    from tdlib.train import preset

    overrides = {name: getattr(args, name) for name in FLAGS}
    if args.ratios is not None:
        overrides["ratios"] = parse_ratios(args.ratios)
    overrides["output_dir"] = args.output_dir or f"runs/{args.preset}"
    return preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    """Train, print where the model went, return the exit status."""
    from tdlib.train import train

    config = config_from_args(args)
    try:
        result = train(config, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; a checkpoint was saved: continue with --resume --output-dir {config.output_dir}") from None
    if result.final_model is None:
        print(f"stopped at step {result.final_step}; continue with: tdlib train --resume --output-dir {result.output_dir}")
        return 0
    last = result.last_eval or {}
    if "nll_bits_per_char" in last:
        score = f"; NLL {last['nll_bits_per_char']:.3f} bits/char on held-out text"
    elif "nelbo_bits_per_char" in last:
        score = f"; NELBO {last['nelbo_bits_per_char']:.3f} bits/char on held-out text"
    else:
        score = ""
    print(f"trained {result.final_step} step{'s' if result.final_step != 1 else ''}{score}; model in {result.final_model}")
    return 0
