"""Time to quality on CPU: diffusion NELBO vs an autoregressive baseline's NLL, at equal minutes.

Both models use the `cpu` preset's settings (MiniLM-sized, its tokenizer, packed
128-token blocks, the preset's batch) and the same loop; the AR baseline is a GPT-2 of the
same size and tokenizer trained from scratch (``objective="causal"``). Data:
tokenized WikiText-2 (``../shared/data/wikitext-2-v1``): train on ``train.txt``,
score the first ``--valid-chars`` characters of ``valid.txt`` in bits per character.
``--dataset pydoc`` runs the same race on the `cpu` preset's own corpus instead.

Each model trains once for the largest budget by the clock (``lr_over_time``:
its learning rate decays to zero over those seconds, however much a step
costs), checkpointing at the first step past each smaller budget; so both get
the same training seconds, give or take one step. The table gives each
checkpoint's steps and seconds, read from the run's metrics log. Run it on an
idle machine: the two models train one after the other, and a neighbour that
slows one of them takes its steps, not the other's.

    python bench/time_to_quality.py                 # 2, 5 and 10 minutes (about 30 min in all)
    python bench/time_to_quality.py --minutes 0.5,1 # a quick look
    python bench/time_to_quality.py --dataset pydoc --minutes 10  # the cpu preset's corpus
    python bench/time_to_quality.py --models diffusion --minutes 20,30  # beyond ten minutes

Prints its figures last as ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def timed_checkpoints(run: Path) -> dict[float, tuple[Path, int, float]]:
    """Budget seconds -> (model directory, steps, training seconds) of a run trained with ``lr_over_time``."""
    from tdlib.runlog import CHECKPOINT, START, read_metrics

    records = read_metrics(run)
    found = {}
    for r in records:
        if r.get("event") == CHECKPOINT:
            for at in r["at_s"]:
                found[float(at)] = (run / r["checkpoint"], int(r["step"]), float(r["elapsed_s"]))
    last = [r for r in records if "loss" in r][-1]
    budget = float(next(r for r in records if r.get("event") == START)["config"]["time_budget_s"])
    found[budget] = (run / "final-model", int(last["step"]), float(last["elapsed_s"]))
    return found


def valid_examples(tokenizer, dataset: str, data_dir: Path, valid_chars: int | None, max_length: int = 128):
    """Packed blocks (``max_length`` tokens) of the first ``valid_chars`` characters of the validation split (all if None)."""
    from tdlib.data import load_corpus, make_examples

    lines, total = [], 0
    for line in load_corpus(dataset, data_dir)["valid"]:
        lines.append(line)
        total += len(line) + 1
        if valid_chars is not None and total >= valid_chars:
            break
    return make_examples(lines, tokenizer, max_length, "packed")


def score(checkpoint: Path, causal: bool, dataset: str, data_dir: Path, valid_chars: int | None) -> dict:
    """Bits per character of the held-out text: exact NLL (causal) or the NELBO bound."""
    from tdlib.checkpoint import training_config
    from tdlib.evaluate import causal_nll, nelbo
    from tdlib.masking import protected_positions
    from tdlib.model import as_denoiser, load_causal, load_checkpoint

    model, tokenizer = load_causal(checkpoint) if causal else load_checkpoint(checkpoint, device="cpu")
    # blocks as long as the model was trained on
    ex = valid_examples(tokenizer, dataset, data_dir, valid_chars, training_config(checkpoint).get("max_length", 128))
    scorable = ~protected_positions(ex.input_ids, tokenizer, ex.attention_mask, 0)
    if causal:
        r = causal_nll(model, ex.input_ids, scorable, attention_mask=ex.attention_mask,
                       num_characters=ex.num_characters)
        return {"bits_per_char": r["nll_bits_per_char"], "stderr": 0.0}
    r = nelbo(as_denoiser(model, masked_only=True), ex.input_ids, scorable, mask_id=tokenizer.mask_token_id,
              num_characters=ex.num_characters, samples_per_sequence=2, seed=0)
    return {"bits_per_char": r["nelbo_bits_per_char"], "stderr": r["nelbo_bits_per_char_stderr"]}


def main(argv: list[str] | None = None) -> int:
    """Train each runner for the same seconds, score its checkpoints, print the figures."""
    from tdlib.train import preset, train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", default="2,5,10")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--dataset", default="wikitext-2-v1",
                   help="wikitext-2-v1 (train.txt / valid.txt under --data-dir) or pydoc (the cpu preset's own corpus)")
    p.add_argument("--valid-chars", type=int, default=300_000)
    p.add_argument("--ar-learning-rate", type=float, default=6e-4)
    p.add_argument("--models", default="diffusion,ar", help="which of diffusion,ar to train (both by default)")
    p.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = p.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    if not wanted or set(wanted) - {"diffusion", "ar"}:
        p.error(f"--models takes diffusion, ar or both, got {args.models!r}")
    if args.dataset.startswith("wikitext") and not (args.data_dir / args.dataset / "train.txt").is_file():
        print(f"skipped: {args.data_dir}/{args.dataset}/train.txt is absent (the shared WikiText-2 files)")
        return 0
    torch.set_num_threads(2)
    minutes = sorted(float(m) for m in args.minutes.split(","))
    work = args.keep or Path(tempfile.mkdtemp(prefix="ttq-"))
    data = {"dataset": args.dataset, "data_dir": str(args.data_dir)}
    configs = {
        "diffusion": preset("cpu", **data),
        "ar": preset("cpu", objective="causal", learning_rate=args.ar_learning_rate, **data),
    }
    configs = {k: v for k, v in configs.items() if k in wanted}
    results: dict[str, dict[float, dict]] = {}
    for name, cfg in configs.items():
        run = work / name
        shutil.rmtree(run, ignore_errors=True)
        cfg = dataclasses.replace(cfg, output_dir=str(run), eval_steps=10**9, save_steps=10**9,
                                  eval_examples=8, save_total_limit=None, save_at=(), lr_over_time=True,
                                  time_budget_s=60 * minutes[-1], save_at_s=tuple(60 * m for m in minutes[:-1]))
        print(f"{name}: {minutes[-1]:g} minutes by the clock", flush=True)
        train(cfg, progress=False)
        checkpoints = timed_checkpoints(run)
        results[name] = {}
        for m in minutes:
            ckpt, steps, seconds = checkpoints[60 * m]
            scored = score(ckpt, name == "ar", args.dataset, args.data_dir, args.valid_chars)
            results[name][m] = {"steps": steps, "seconds": seconds, **scored}
            print(f"{name} {m:g} min ({steps} steps in {results[name][m]['seconds']:.0f} s): "
                  f"{results[name][m]['bits_per_char']:.3f} bits/char", flush=True)
    heads = {"diffusion": "diffusion NELBO bits/char", "ar": "AR NLL bits/char"}
    print("\n| minutes | " + " | ".join(f"{heads[k]} (steps, training s)" for k in results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for m in minutes:
        cells = [f"{r[m]['bits_per_char']:.3f}" + (f" ± {r[m]['stderr']:.3f}" if r[m]["stderr"] else "")
                 + f" ({r[m]['steps']}, {r[m]['seconds']:.0f} s)" for r in results.values()]
        print(f"| {m:g} | " + " | ".join(cells) + " |")
    print()
    label = {"diffusion": "diffusion_nelbo_bpc", "ar": "ar_nll_bpc"}
    for m in minutes:
        for k, r in results.items():
            print(f"{label[k]}_{m:g}min: {r[m]['bits_per_char']:.4f}")
    if len(results) == 2:
        last = minutes[-1]
        ratio = results["diffusion"][last]["bits_per_char"] / results["ar"][last]["bits_per_char"]
        print(f"diffusion_over_ar_{last:g}min: {ratio:.4f}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(math.isfinite(r[m]["bits_per_char"]) for r in results.values() for m in minutes) else 1


if __name__ == "__main__":
    sys.exit(main())
