"""How much time the sampler adds to the model's own forward passes, and samples per second.

Measured in one run on a small from-scratch RoBERTa (`tdlib.model.load_model("scratch")`,
4 layers, 256 wide, BPE trained on the embedded pydoc corpus, untrained), with
``--model minilm`` on the packaged MiniLM-L6 (30k-token vocabulary), or with
``--checkpoint DIR`` on a trained model. Untrained weights cost as much per forward
pass as trained ones, but not per step of ``confidence``: it draws only at
positions whose largest probability could still make the cut, and a trained
model's peaked distributions rule out more of them than an untrained model's
flat ones:

(a) ``sampler_overhead_pct``: the share of a `tdlib.canvas.generate` call spent
    outside the model, 100 * t_sampler / t_generate, where t_sampler is the same
    call (same seed) with the model's recorded answers played back instead of
    the model (`Tape`): everything but the forward passes, measured directly
    rather than as a difference of two noisy times; target < 10 %; for every
    strategy of `tdlib.strategies.STRATEGIES`;
(b) ``speedup_vs_loop_sampler``: a seed-style sampler with a Python loop over
    positions inside each step divided by ours (same model, shapes, top-k 50 and
    strategy ``resample``: the same output distribution; ours also skips the draws,
    and the LM head, at positions it is about to mask again);
(c) ``samples_per_cpu_s_batch_{1,4,16}`` (CPU time) and ``samples_per_s_batch_{1,4,16}``
    (wall clock): whole samples per second for one call of that batch size.

Times are CPU seconds of this process with torch on one thread (``--threads 1``,
the default), the minimum over repeats: on a shared machine wall time mostly
measures the neighbours, CPU time the work. (c) reports wall-clock throughput
too. Figures are printed last as ``name: value`` lines. Run: ``python bench/sampler_speed.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from tdlib.canvas import generate
from tdlib.data import load_corpus
from tdlib.model import as_denoiser, load_checkpoint, load_model
from tdlib.strategies import STRATEGIES


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Minimum (CPU seconds of this process, wall seconds) of ``fn()`` over ``repeats`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return min(cpu), min(wall)


class Tape:
    """A denoiser that records what the model returns, then plays it back at no model cost.

    ``generate`` with the same seed asks for the same canvases and positions, so a
    playback run does everything the sampler does except the forward passes.
    """

    accepts_positions = True

    def __init__(self, denoiser):
        self.denoiser, self.outputs, self.playing, self.next = denoiser, [], False, 0

    def __call__(self, xt, attention_mask=None, *, positions=None):
        if self.playing:  # the same tensor again: the sampler's only changes to it (bans to -inf) are idempotent
            out = self.outputs[self.next % len(self.outputs)]
            self.next += 1
            return out
        out = self.denoiser(xt, attention_mask, positions=positions)
        self.outputs.append(out.clone())
        return out

    def play(self) -> Tape:
        self.playing, self.next = True, 0
        return self


def loop_sampler(model, tokenizer, x_init: torch.Tensor, steps: int, top_k: int, seed: int) -> torch.Tensor:
    """The seed's way: each step, redraw every generated position one by one, then re-mask a random subset."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(tokenizer.all_special_ids)
    xt = x_init.clone()
    batch, length = xt.shape
    positions = [i for i in range(length) if xt[0, i] == tokenizer.mask_token_id]
    with torch.no_grad():
        for step in range(1, steps + 1):
            logits = model(input_ids=xt).logits  # (B, L, V)
            for b in range(batch):
                for i in positions:
                    row = logits[b, i].clone()
                    row[special] = float("-inf")
                    values, ids = torch.topk(torch.softmax(row, -1), top_k)
                    xt[b, i] = ids[torch.multinomial(values, 1, generator=generator)]
                keep_masked = round(len(positions) * (1 - step / steps))
                for i in rng.sample(positions, keep_masked):
                    xt[b, i] = tokenizer.mask_token_id
    return xt


def main() -> None:
    """Measure the sampler and print one `name: value` line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="scratch", choices=["scratch", "minilm"],
                        help="scratch RoBERTa (default) or the packaged MiniLM-L6 (30k vocabulary)")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained run or model directory (e.g. runs/toy) instead of --model")
    parser.add_argument("--prefix", default="The class", help="the text to continue (\"the\" for a toy model)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="strategies for (a), comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    name = args.checkpoint or args.model
    if args.checkpoint:
        model, tokenizer = load_checkpoint(args.checkpoint)
    else:
        lines = load_corpus("pydoc")["train"] if name == "scratch" else None
        model, tokenizer = load_model(name, corpus_lines=lines, device="cpu")
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {name}, {params:.1f} M parameters, vocab {len(tokenizer)}; "
          f"canvas {args.max_length} tokens, {args.steps} steps, {args.threads} thread(s)")
    options = dict(prefix=args.prefix, max_length=args.max_length, num_steps=args.steps, seed=0)
    generate(model, tokenizer, **options)  # warm-up

    figures: dict[str, float] = {}
    denoiser = as_denoiser(model, masked_only=True)  # the one generate uses; replays ask where the sampler drew
    # (a) time outside the forward passes, per strategy, batch 4: generate with the model, and again with the
    # model's recorded answers played back (the sampler alone), interleaved
    for strategy in args.strategies.split(","):
        tape = Tape(denoiser)
        generate(tape, tokenizer, num_samples=4, strategy=strategy, **options)  # records
        t_generate, t_sampler = [], []
        for _ in range(args.repeats):
            t_generate.append(best_time(lambda s=strategy: generate(model, tokenizer, num_samples=4, strategy=s,
                                                                    **options), 1)[0])
            t_sampler.append(best_time(lambda s=strategy, t=tape: generate(t.play(), tokenizer, num_samples=4,
                                                                           strategy=s, **options), 1)[0])
        pct = 100 * min(t_sampler) / min(t_generate)
        print(f"{strategy:>13}: generate {min(t_generate):.3f} CPU s, sampler alone {min(t_sampler):.3f} CPU s, "
              f"outside the model {pct:.1f} %")
        figures[f"sampler_overhead_pct_{strategy}"] = pct
    figures["sampler_overhead_pct"] = figures.get("sampler_overhead_pct_confidence", math.nan)
    figures["sampler_overhead_pct_max"] = max(v for k, v in figures.items() if k != "sampler_overhead_pct")

    # (b) against a per-position Python loop, same work (resample, top-k 50), batch 4
    _, trajectory = generate(model, tokenizer, num_samples=4, strategy="resample", **options)
    x_init = trajectory.tokens[0]
    t_loop = best_time(lambda: loop_sampler(model, tokenizer, x_init, args.steps, 50, 0), 1)[0]
    t_ours = best_time(lambda: generate(model, tokenizer, num_samples=4, strategy="resample", **options),
                       args.repeats)[0]
    print(f"loop sampler {t_loop:.3f} CPU s vs ours {t_ours:.3f} CPU s (batch 4, resample)")
    figures["loop_sampler_cpu_s"] = t_loop
    figures["ours_resample_cpu_s"] = t_ours
    figures["speedup_vs_loop_sampler"] = t_loop / t_ours

    # (c) throughput by batch size
    for batch in (1, 4, 16):
        cpu, wall = best_time(lambda b=batch: generate(model, tokenizer, num_samples=b, **options), args.repeats)
        figures[f"samples_per_cpu_s_batch_{batch}"] = batch / cpu
        figures[f"samples_per_s_batch_{batch}"] = batch / wall

    for name, value in figures.items():
        print(f"{name}: {value:.3g}" if abs(value) < 100 else f"{name}: {value:.1f}")


if __name__ == "__main__":
    main()
