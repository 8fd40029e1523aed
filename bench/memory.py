"""Peak memory of a training step and of sampling at batch 16 x 128.

Each measurement runs in a fresh Python process, so memory kept by an earlier
one (the allocator keeps freed pages) cannot hide or inflate it. A thread
samples the process's resident set size (psutil RSS, every 2 ms) while the
work runs; torch's CPU tensors live in ordinary process memory, so the RSS
peak is their peak plus the interpreter, libraries and model.

- ``train``: tdlib's training step with the `cpu` preset's settings but
  ``--batch-size`` examples (16 by default; the preset trains 4 at a time):
  MiniLM, packed 128-token blocks, stratified t, ELBO weighting, LM head at
  masked positions only, AdamW; two steps (the first allocates AdamW's state);
- ``train_full_head``: the same step computing the LM head at all 16 x 128
  positions and the loss from ``model(..., labels=...)`` (the original experiment's way),
  for comparison;
- ``sample``: `tdlib.canvas.generate` with 16 samples of 128 tokens
  (``--steps`` denoising steps, confidence strategy, top-k), untrained weights
  (same cost as trained ones).

Prints ``<part>_peak_mb`` (whole process RSS) and ``<part>_delta_mb`` (above
the process with model and data loaded) last, as ``name: value`` lines.
Run: ``python bench/memory.py`` (about 1 to 2 minutes on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

PARTS = ("train", "train_full_head", "sample")
MB = 2**20


def _child(part: str, args) -> dict[str, float]:
    from _common import PeakRSS, make_bench_examples
    from train_throughput import TdlibRunner

    from tdlib.data import load_corpus
    from tdlib.model import load_model
    from tdlib.train import preset

    config = preset("cpu", model_name=args.model, batch_size=args.batch_size, max_length=args.max_length)
    lines = [line for line in load_corpus(config.dataset)["train"] if line.strip()]
    torch.manual_seed(0)
    model, tokenizer = load_model(config.model_name, corpus_lines=lines, device="cpu")
    rows = list(range(config.batch_size))
    if part == "sample":
        from tdlib.canvas import generate

        def work():
            generate(model, tokenizer, num_samples=config.batch_size, max_length=config.max_length,
                     num_steps=args.steps, seed=0, device="cpu")
    else:
        examples = make_bench_examples(lines, tokenizer, config.max_length, config.example_mode)
        runner = TdlibRunner(part, model, tokenizer, examples, config, total_steps=10)
        if part == "train_full_head":
            def full_loss(batch):
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss

            runner.loss_module.forward = full_loss

        def work():
            for _ in range(2):
                runner.step(rows)
    gc.collect()
    with PeakRSS() as before:
        pass
    with PeakRSS() as peak:
        work()
    return {"baseline_mb": before.peak / MB, "peak_mb": peak.peak / MB}


def main() -> int:
    """Measure each part in a fresh process and print the peak memory figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "scratch"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="denoising steps of the sampling run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return 0
    figures: dict[str, float] = {}
    for part in args.parts.split(","):
        command = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--model", args.model,
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        result = json.loads(done.stdout.strip().splitlines()[-1])
        figures[f"{part}_peak_mb"] = result["peak_mb"]
        figures[f"{part}_delta_mb"] = result["peak_mb"] - result["baseline_mb"]
    for name, value in figures.items():
        print(f"{name}: {value:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
