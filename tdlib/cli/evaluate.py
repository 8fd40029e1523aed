"""`tdlib evaluate`: the likelihood bound and loss per mask ratio of a checkpoint.

Wiring only: load the checkpoint and a corpus split, make examples the way the
model was trained (dataset, example mode and length are read from the
checkpoint's ``training_config.json`` when present), then call
`tdlib.evaluate.nelbo` and `tdlib.evaluate.discrete_bound`. Every content token
is scored (no prefix is excluded), so the bits per character are those of the
whole text.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from tdlib.checkpoint import resolve_checkpoint, training_config
from tdlib.cli import seed_value
from tdlib.data import EXAMPLE_MODES, SPLITS, TOY, get_split, load_corpus, make_examples
from tdlib.errors import require
from tdlib.evaluate import discrete_bound, nelbo
from tdlib.masking import ORIGINAL_RATIOS, protected_positions
from tdlib.model import as_denoiser, load_checkpoint, max_sequence_length


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib evaluate`."""
    parser.add_argument("--checkpoint", required=True, help="run directory or model directory")
    parser.add_argument(
        "--dataset", default=None, help="corpus name or path (default: the one the checkpoint was trained on, else pydoc)"
    )
    parser.add_argument("--data-dir", default=None, help="folder holding train.txt/valid.txt/test.txt")
    parser.add_argument("--split", default="valid", choices=SPLITS, help="which split to score (default: valid)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per block (default: as trained, else 128)")
    parser.add_argument("--mode", default=None, choices=EXAMPLE_MODES, help="examples: lines or packed (default: as trained)")
    parser.add_argument(
        "--max-characters", type=int, default=None, help="score only the first N characters of the split (default: all)"
    )
    parser.add_argument("--samples", type=int, default=1, help="NELBO draws per block (>1 gives a Monte Carlo stderr)")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per forward pass")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the masks (same seed, same masks)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")


def _first_characters(lines: list[str], max_characters: int | None) -> list[str]:
    """The leading lines of a split holding at least `max_characters` characters (all if None)."""
    if max_characters is None:
        return lines
    kept, total = [], 0
    for line in lines:
        if total >= max_characters:
            break
        kept.append(line)
        total += len(line) + 1
    return kept


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _true_bits_per_char(dataset: str, examples) -> float | None:
    """The toy language's exact NLL of the examples in bits per char (None for other corpora: no truth known)."""
    if dataset != TOY:
        return None
    from tdlib.toylang import ToyLanguage

    return ToyLanguage().nll(examples.input_ids, examples.num_characters)["bits_per_char"]


def run(args: argparse.Namespace) -> int:
    """Score a checkpoint on a corpus split; print a report or JSON."""
    require(args.samples >= 1, f"--samples must be >= 1, got {args.samples}")
    require(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    require(args.max_characters is None or args.max_characters >= 1, "--max-characters must be >= 1")
    model_dir = resolve_checkpoint(args.checkpoint)
    trained = training_config(model_dir)
    dataset = args.dataset or trained.get("dataset") or "pydoc"
    data_dir = args.data_dir if args.data_dir is not None else (trained.get("data_dir") if not args.dataset else None)
    max_length = args.max_length or trained.get("max_length") or 128
    mode = args.mode or trained.get("example_mode") or "lines"

    require(max_length >= 4, f"--max-length must be at least 4, got {max_length}")
    model, tokenizer = load_checkpoint(model_dir)
    require(tokenizer.mask_token_id is not None, f"the tokenizer in {model_dir} has no mask token; is it a masked LM?")
    limit = max_sequence_length(model)
    require(limit is None or max_length <= limit, f"--max-length {max_length} exceeds the model's {limit} positions")
    corpus = load_corpus(dataset, data_dir, num_words=max_length - 2)  # a generated toy line fills the canvas
    lines = _first_characters(get_split(corpus, args.split), args.max_characters)
    examples = make_examples(lines, tokenizer, max_length, mode)
    x0, attention_mask = examples.input_ids, examples.attention_mask  # (N, L)
    scorable = ~protected_positions(x0, tokenizer, attention_mask)  # every content token
    denoiser = as_denoiser(model, masked_only=True)

    start = time.perf_counter()
    common = dict(
        mask_id=tokenizer.mask_token_id, num_characters=examples.num_characters, seed=args.seed,
        batch_size=args.batch_size, attention_mask=attention_mask, progress=True,
    )
    bound = nelbo(denoiser, x0, scorable, samples_per_sequence=args.samples, **common)
    discrete = discrete_bound(denoiser, x0, scorable, ORIGINAL_RATIOS, **common)
    seconds = time.perf_counter() - start

    result = {
        "checkpoint": str(model_dir),
        "dataset": dataset,
        "split": args.split,
        "mode": mode,
        "max_length": max_length,
        "nelbo_bits_per_char": bound["nelbo_bits_per_char"],
        "nelbo_bits_per_char_stderr": _finite(bound["nelbo_bits_per_char_stderr"]),
        "stderr_kind": bound["stderr_kind"],
        "nats_per_token": bound["nats_per_token"],
        "perplexity_bound": bound["perplexity_bound"],
        "discrete_bound_bits_per_char": discrete["nelbo_bits_per_char"],
        "loss_by_ratio": {str(t): _finite(v) for t, v in discrete["loss_by_ratio"].items()},
        "tokens": bound["tokens"],
        "characters": bound["characters"],
        "sequences": bound["sequences"],
        "samples_per_sequence": args.samples,
        "seed": args.seed,
        "seconds": seconds,
        "true_bits_per_char": _true_bits_per_char(dataset, examples),
    }
    if args.json:
        print(json.dumps(result))
    else:
        _print_report(result, bound, discrete)
    return 0


def _print_report(result: dict, bound: dict, discrete: dict) -> None:
    """The human-readable report of `run`: the bounds, the truth when known, the loss by ratio."""
    model_dir, dataset, mode, max_length = result["checkpoint"], result["dataset"], result["mode"], result["max_length"]
    seconds = result["seconds"]
    stderr = result["nelbo_bits_per_char_stderr"]
    print(f"checkpoint   {model_dir}")
    print(
        f"data         {dataset} {result['split']}: {bound['sequences']} blocks ({mode}, {max_length} tokens), "
        f"{bound['characters']:,} characters, {bound['tokens']:,} tokens scored"
    )
    print(
        f"NELBO        {bound['nelbo_bits_per_char']:.4f} bits/char"
        + (f" +- {stderr:.4f} ({bound['stderr_kind'].replace('_', ' ')})" if stderr is not None else "")
    )
    print(f"             {bound['nats_per_token']:.4f} nats/token, perplexity <= {bound['perplexity_bound']:.2f}")
    if result["true_bits_per_char"] is not None:
        print(f"truth        {result['true_bits_per_char']:.4f} bits/char: the toy language's exact NLL of the same text")
    print(f"K-level      {discrete['nelbo_bits_per_char']:.4f} bits/char (discrete bound over ratios 1.0 .. 0.1)")
    print(f"loss by ratio (nats per masked token, masks fixed by --seed {result['seed']}):")
    for t, v in discrete["loss_by_ratio"].items():
        print(f"  {t:.1f}  {v:.4f}")
    print(f"took {seconds:.1f} s")
