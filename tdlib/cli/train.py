"""`tdlib train`: the training loop from the command line (see `tdlib.train`)."""

from __future__ import annotations

import argparse

from tdlib.cli import seed_value
from tdlib.errors import UserError
from tdlib.masking import MODES, parse_ratios


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib train`; unset flags take the preset's value."""
    from tdlib.train import HEAD_INITS, HEAD_VOCABS, OBJECTIVES, PRESETS, WEIGHTINGS

    a = parser.add_argument
    a("--preset", choices=sorted(PRESETS), default="cpu", help="base settings (default: cpu)")
    a("--objective", choices=OBJECTIVES,
      help="diffusion (masked LM, default) or causal (the autoregressive baseline, same tokenizer and size)")
    a("--model-name", help="minilm (packaged), scratch (small RoBERTa + BPE), a hub id or a local folder")
    a("--dataset", help="pydoc (embedded), wikitext-2, wikitext-2-v1, or a text file or folder")
    a("--data-dir", help="folder with train.txt/valid.txt/test.txt for wikitext-2 (e.g. ../shared/data)")
    a("--example-mode", choices=["lines", "packed"], help="one example per line (the seed) or packed blocks")
    a("--epochs", type=float)
    a("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    a("--batch-size", type=int)
    a("--grad-accum", type=int, help="micro-batches per optimizer step")
    a("--learning-rate", type=float)
    a("--warmup-steps", type=int)
    a("--max-length", type=int, help="tokens per example")
    a("--prefix-length", type=int, help="content tokens at the start that are never masked")
    a("--mask-probs", help="comma-separated mask ratios, e.g. 1.0,0.9,...,0.1")
    a("--masking", choices=list(MODES),
      help="one ratio per batch, per example, t~U(eps,1) per example, or the same spread evenly over the batch")
    a("--loss-weighting", choices=WEIGHTINGS)
    a("--head-init", choices=HEAD_INITS,
      help="start of a new LM head: random (as built), unigram (output bias = log frequencies of the training "
           "tokens) or identity (the unigram bias, and the head's transform starts as a shifted identity map)")
    a("--head-lr-scale", type=float, help="learning-rate multiplier for the LM head's own parameters")
    a("--head-vocab", choices=HEAD_VOCABS,
      help="the training softmax over all tokens, or only those in the training text (a cheaper step; "
           "evaluation and sampling keep every token)")
    a("--dropout", type=float, help="dropout probability for the whole model (0 turns it off; default: the model's)")
    a("--freeze-embeddings", action=argparse.BooleanOptionalAction,
      help="keep the input embeddings (and an output layer tied to them) fixed: a cheaper step")
    a("--freeze-layers", type=int, help="keep the lowest N transformer layers fixed: a cheaper step")
    a("--eval-steps", type=int)
    a("--save-steps", type=int)
    a("--save-total-limit", type=int)
    a("--time-budget", type=float, dest="time_budget_s", help="stop and save after this many seconds (inf: no limit)")
    a("--lr-over-time", action=argparse.BooleanOptionalAction,
      help="decay the learning rate to zero over --time-budget seconds instead of over the steps")
    a("--output-dir", help="run directory (default: runs/PRESET)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    a("--seed", type=seed_value)
    a("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the flags describe."""
    from tdlib.train import preset

    overrides = {
        name: getattr(args, name)
        for name in (
            "objective", "model_name", "dataset", "data_dir", "example_mode", "epochs", "max_steps", "batch_size",
            "grad_accum", "learning_rate", "warmup_steps", "max_length", "prefix_length", "masking",
            "loss_weighting", "eval_steps", "save_steps", "save_total_limit", "time_budget_s", "lr_over_time", "seed",
            "head_init", "head_lr_scale", "head_vocab", "dropout", "freeze_embeddings", "freeze_layers",
        )
    }
    if args.mask_probs is not None:
        overrides["mask_probs"] = parse_ratios(args.mask_probs)
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
