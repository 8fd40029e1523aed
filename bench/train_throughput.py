"""Training throughput: tdlib's step against a Hugging Face `Trainer` with the original experiment's collator.

Three ways to train the same model on the same data, measured in one run,
interleaved round by round (A, B, C, B, C, A, ...), each for a fixed number of
optimizer steps after a warmup step:

(a) ``trainer``: `transformers.Trainer` (its defaults, `report_to=[]`) with the
    original experiment's collator (`DataCollatorForLanguageModeling`, one ratio per batch from
    1.0..0.1, 100 % [MASK], 5-token prefix protected), one example per padded
    128-token line, full-vocabulary LM head at every position;
(b) ``tdlib_lines``: tdlib's training step (the body of `tdlib.train.train`'s
    loop: `MaskingCollator`, `MaskedDiffusionLoss` with the head only at masked
    positions, fused AdamW, clipping) with the `seed` preset's masking, on the very
    same batches as (a);
(c) ``tdlib_packed``: the same step with the `cpu` preset's settings (packed
    128-token blocks, continuous t, ELBO weighting).

Tokens per second count REAL (non-padding) tokens. A step's time is the wall
time between the ends of consecutive optimizer steps, so it includes data,
collation, forward, backward, clipping, the optimizer and the loop's overhead.
``--loop-check N`` also runs `tdlib.train.train` itself for N steps (cpu
preset, its pydoc corpus; packed blocks cost the same on any text), after the
comparison, and reports its own ``tokens_per_s`` metric (median over steps
2..N), to show that the timed step is the loop. ``--profile N`` instead
profiles N steps of the cpu preset's step and prints the top costs.

FLOPs per step are counted as 6 x (encoder params x B*L + attention
n_layers*2*H x B*L*L + LM head (H*H + H*V) x positions it runs on), padding
included (it is computed); the fp32 matmul peak is measured in the same run
(2048 x 2048 torch.matmul, best of 5). Figures are printed last as
``name: value`` lines. Run: ``python bench/train_throughput.py`` (about 3
minutes; ``--rounds``/``--steps`` for longer, ``--corpus pydoc`` without WikiText).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time

import torch
from _common import (
    DEFAULT_DATA_DIR,
    ListDataset,
    OriginalCollator,
    bench_lines,
    make_bench_examples,
    matmul_peak_gflops,
    median,
    mlm_flop_counts,
    print_figures,
    setup_threads,
    train_step_flops,
)
from torch.profiler import record_function

from tdlib.heads import set_dropout
from tdlib.masking import IGNORE_INDEX, MaskingCollator
from tdlib.model import load_model
from tdlib.objectives import MaskedDiffusionLoss
from tdlib.train import lr_at, preset, step_seed


class TdlibRunner:
    """tdlib's training step, as in `tdlib.train.train`'s loop (one process, no accumulation, fused AdamW).

    Every parameter trains, as in the `Trainer` it is compared with: `--freeze-embeddings` would
    make tdlib's step cheaper by doing less, which is not the comparison here. The model's
    dropout is the caller's: the comparison keeps the `Trainer`'s, the profile sets the preset's.
    ``fused=False`` gives the older foreach AdamW, for ``--fused-adamw``.
    """

    def __init__(self, name, model, tokenizer, examples, config, total_steps, fused: bool = True):
        self.name, self.model, self.examples, self.config = name, model, examples, config
        self.total_steps = total_steps
        self.collator = MaskingCollator(tokenizer, config.ratios, mode=config.masking,
                                        prefix_length=config.prefix_length, seed=config.seed)
        self.loss_module = MaskedDiffusionLoss(model, config.loss_weighting)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate,
                                           **({"fused": True} if fused else {}))
        self.step_count = 0
        self.phase_seconds: dict[str, list[float]] = {}
        model.train()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Label a part of the step for the profiler and record its wall time."""
        start = time.perf_counter()
        with record_function(name):
            yield
        self.phase_seconds.setdefault(name, []).append(time.perf_counter() - start)

    def step(self, rows: list[int]) -> tuple[int, int]:
        """One optimizer step on ``rows``; returns (real tokens, positions the LM head ran on)."""
        config, step = self.config, self.step_count
        torch.manual_seed(step_seed(config.seed, step))
        self.collator.generator.manual_seed(step_seed(config.seed, step))
        with self.phase("data"):
            batch = self.collator([self.examples[i] for i in rows])
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, config, self.total_steps)
        with self.phase("forward"):
            loss = self.loss_module(batch)
        with self.phase("backward"):
            loss.backward()
            loss.item()
        with self.phase("clip"):
            torch.nn.utils.clip_grad_norm_(self.loss_module.parameters(), config.max_grad_norm)
        with self.phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return int(batch["attention_mask"].sum()), int((batch["labels"] != IGNORE_INDEX).sum())

    def round(self, rows: list[int], batch_size: int) -> list[tuple[float, int, int]]:
        """Run len(rows) // batch_size steps; (seconds, real tokens, head positions) of all but the first."""
        ends, counts = [], []
        for k in range(len(rows) // batch_size):
            counts.append(self.step(rows[k * batch_size : (k + 1) * batch_size]))
            ends.append(time.perf_counter())
        return [(ends[k] - ends[k - 1], *counts[k]) for k in range(1, len(ends))]


class TrainerRunner:
    """A fresh `transformers.Trainer` per round on the given rows, in order, with the original experiment's collator."""

    def __init__(self, model, tokenizer, examples, seed: int):
        from transformers import TrainerCallback

        self.name, self.model, self.examples = "trainer", model, examples
        self.collator = OriginalCollator(tokenizer, seed=seed)
        self.seed = seed
        self.optim = None
        ends = self.ends = []

        class StepTimer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(time.perf_counter())

        self.callback = StepTimer()

    def round(self, rows: list[int], batch_size: int) -> list[tuple[float, int, int]]:
        """Train len(rows) // batch_size steps; (seconds, real tokens, head positions) of all but the first."""
        from transformers import Trainer, TrainingArguments

        steps = len(rows) // batch_size
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-5,
                weight_decay=0.01, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="sequential",
                seed=self.seed,
            )
            self.optim = str(args.optim)
            trainer = Trainer(model=self.model, args=args, data_collator=self.collator,
                              train_dataset=ListDataset(self.examples, rows), callbacks=[self.callback])
            self.ends.clear()
            first_batch = len(self.collator.real_tokens)
            with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summary
                trainer.train()
        tokens = self.collator.real_tokens[first_batch : first_batch + steps]
        positions = batch_size * self.examples.input_ids.shape[1]  # the head runs everywhere
        return [(self.ends[k] - self.ends[k - 1], tokens[k], positions) for k in range(1, steps)]


def loop_check(args, steps: int) -> float:
    """Median training tokens/s that `tdlib.train.train` (cpu preset) logs itself, one record per step."""
    from tdlib.train import train

    records = []
    with tempfile.TemporaryDirectory() as out:  # the preset's own corpus: packed blocks cost the same on any text
        config = preset("cpu", model_name=args.model, batch_size=args.batch_size, max_length=args.max_length,
                        max_steps=steps, log_steps=1, eval_steps=10**6, save_steps=10**6, eval_examples=8,
                        output_dir=out)
        train(config, callbacks=[records.append], progress=False)
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return median(rates[1:])


PHASES = ("data", "forward", "backward", "clip", "optimizer")


def _category(event, phase: str, vocab: int) -> str:
    """Where an operator's own time goes: a phase, or, inside forward/backward, the kind of work."""
    if phase in ("data", "clip", "optimizer"):
        return {"data": "data (collator, batch)", "clip": "gradient clipping", "optimizer": "optimizer (AdamW)"}[phase]
    name = event.name
    if name in PHASES:
        return "Python and loop overhead (not in any op)"
    shapes = [d for shape in (event.input_shapes or []) if isinstance(shape, list) for d in shape]
    if vocab in shapes:
        return "LM head at masked positions (matmuls, CE)"
    if any(k in name for k in ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax", "bmm")):
        return "attention (SDPA)"
    if any(k in name for k in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")):
        return "body matmuls (QKV/out/FFN)"
    return "other ops (layernorm, GELU, dropout, embeddings, copies)"


def profile_cpu_preset(args, steps: int, warmup: int = 2) -> dict[str, object]:
    """Profile ``steps`` steps of the `cpu` preset's training step; print the top costs."""
    from torch.profiler import ProfilerActivity, profile

    from tdlib.data import load_corpus

    config = preset("cpu", model_name=args.model)
    lines = [line for line in load_corpus(config.dataset)["train"] if line.strip()]
    torch.manual_seed(0)
    model, tokenizer = load_model(config.model_name, corpus_lines=lines, device="cpu")
    if config.dropout is not None:  # the preset's dropout (none), as the loop sets it
        set_dropout(model, config.dropout)
    examples = make_bench_examples(lines, tokenizer, config.max_length, config.example_mode)
    runner = TdlibRunner("cpu", model, tokenizer, examples, config, config.max_steps)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    b = config.batch_size
    for k in range(warmup):
        runner.step(order[k * b : (k + 1) * b])
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for k in range(warmup, warmup + steps):
            runner.step(order[k * b : (k + 1) * b])
    wall = time.perf_counter() - start
    vocab = model.config.vocab_size
    totals: dict[str, float] = {}
    phase_totals: dict[str, float] = {}
    for event in prof.events():
        parent, phase = event, None
        while parent is not None:
            if parent.name in PHASES:
                phase = parent.name
            parent = parent.cpu_parent
        if event.name in PHASES:
            phase_totals[event.name] = phase_totals.get(event.name, 0.0) + event.cpu_time_total / 1e6
        if phase is None:
            continue
        key = _category(event, phase, vocab)
        totals[key] = totals.get(key, 0.0) + event.self_cpu_time_total / 1e6
    print(f"profile: {steps} steps of the cpu preset step ({config.model_name}, {config.example_mode} "
          f"{config.max_length}, batch {b}, {config.masking} t, {config.loss_weighting}), "
          f"{torch.get_num_threads()} threads, wall {wall:.1f} s (profiler on)")
    print(f"{'phase':<12}{'s/step':>8}")
    for name in PHASES:
        print(f"{name:<12}{phase_totals.get(name, 0.0) / steps:>8.3f}")
    print(f"{'cost (self time of ops)':<58}{'s/step':>8}{'share':>8}")
    accounted = sum(totals.values())
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{key:<58}{value / steps:>8.3f}{100 * value / accounted:>7.1f}%")
    by_op: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key not in PHASES:
            by_op[event.key] = event.self_cpu_time_total / 1e6
    print(f"{'top operators (self time)':<58}{'s/step':>8}{'share':>8}")
    for name, value in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{name[:57]:<58}{value / steps:>8.3f}{100 * value / accounted:>7.1f}%")
    figures = {f"profile_{k.split(' ')[0].lower()}_pct": 100 * v / accounted for k, v in totals.items()}
    figures["profile_s_per_step"] = wall / steps
    return figures


def runner_figures(results: dict[str, list[tuple[float, int, int]]], counts, batch: int, length: int,
                   peak: float) -> tuple[dict[str, object], dict[str, float]]:
    """Each runner's figures (step time, tokens/s, real-token share, GFLOPs, MFU) and its median tokens/s."""
    figures: dict[str, object] = {}
    rates = {}
    for name, steps in results.items():
        rates[name] = median([tok / s for s, tok, _ in steps])
        seconds = sum(s for s, _, _ in steps)
        flops = sum(train_step_flops(counts, batch, length, head) for _, _, head in steps)
        figures[f"{name}_s_per_step"] = median([s for s, _, _ in steps])
        figures[f"{name}_real_tokens_per_s"] = rates[name]
        figures[f"{name}_real_token_fraction"] = sum(tok for _, tok, _ in steps) / (len(steps) * batch * length)
        figures[f"{name}_gflops_per_step"] = flops / len(steps) / 1e9
        figures[f"{name}_mfu_pct"] = 100 * flops / seconds / 1e9 / peak
    return figures, rates


def parse_args() -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "scratch"))
    parser.add_argument("--corpus", default="wikitext-2-v1", choices=("wikitext-2-v1", "pydoc"),
                        help="training lines: tokenized WikiText-2 from --data-dir (default) or the embedded pydoc")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder holding wikitext-2-v1/train.txt")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per runner per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--loop-check", type=int, default=0, metavar="STEPS",
                        help="also run tdlib.train.train (cpu preset) for STEPS steps and report its tokens_per_s")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="add a fourth runner: (c) with the foreach AdamW that the loop's fused one replaced")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="instead: profile STEPS steps of the cpu preset's step and print the top costs")
    return parser.parse_args()


def main() -> int:
    """Run the runners in interleaved rounds and print their figures."""
    args = parse_args()
    threads = setup_threads(args.threads)
    if args.profile:
        print_figures(profile_cpu_preset(args, args.profile))
        return 0
    batch, length = args.batch_size, args.max_length

    steps_per_round = args.steps + 1  # the first step of a round is warmup: timing starts at its end
    rows_needed = args.rounds * steps_per_round * batch
    lines = bench_lines(args.corpus, args.data_dir, num_lines=max(3 * rows_needed, 2000))
    if lines is None:
        print(f"skipped: no WikiText-2 at {args.data_dir}/wikitext-2-v1/train.txt; "
              "pass --data-dir DIR or --corpus pydoc", file=sys.stderr)
        return 0
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, corpus_lines=lines, device="cpu")
    line_examples = make_bench_examples(lines, tokenizer, length, "lines")
    packed_examples = make_bench_examples(lines, tokenizer, length, "packed")
    if len(line_examples) < rows_needed or len(packed_examples) < rows_needed:
        print("skipped: too little text for the requested rounds and steps", file=sys.stderr)
        return 0
    line_order = torch.randperm(len(line_examples), generator=torch.Generator().manual_seed(0)).tolist()
    packed_order = torch.randperm(len(packed_examples), generator=torch.Generator().manual_seed(0)).tolist()

    overrides = dict(model_name=args.model, batch_size=batch, max_length=length)
    total = args.rounds * steps_per_round
    runners = [
        TrainerRunner(copy.deepcopy(model), tokenizer, line_examples, seed=0),
        TdlibRunner("tdlib_lines", copy.deepcopy(model), tokenizer, line_examples,
                    preset("seed", **overrides, max_steps=total), total),
        TdlibRunner("tdlib_packed", model, tokenizer, packed_examples, preset("cpu", **overrides, max_steps=total),
                    total),
    ]
    if args.fused_adamw:  # what the loop's fused AdamW saves against the foreach one it replaced
        runners.append(TdlibRunner("tdlib_packed_foreach", copy.deepcopy(model), tokenizer, packed_examples,
                                   preset("cpu", **overrides, max_steps=total), total, fused=False))
    peak_before = matmul_peak_gflops()
    results: dict[str, list[tuple[float, int, int]]] = {r.name: [] for r in runners}
    for r in range(args.rounds):
        rows = slice(r * steps_per_round * batch, (r + 1) * steps_per_round * batch)
        for k in range(len(runners)):  # rotate who goes first, so no runner always follows the same one
            runner = runners[(r + k) % len(runners)]
            order = packed_order if runner.name.startswith("tdlib_packed") else line_order
            results[runner.name] += runner.round(order[rows], batch)
            print(f"round {r + 1}/{args.rounds} {runner.name}: median step "
                  f"{median([s for s, _, _ in results[runner.name]]):.2f} s", file=sys.stderr)
    peak = max(peak_before, matmul_peak_gflops())
    for runner in runners:
        if isinstance(runner, TdlibRunner):
            print(f"{runner.name} median s per phase: " + ", ".join(
                f"{k} {median(v):.3f}" for k, v in runner.phase_seconds.items()), file=sys.stderr)

    figures, rates = runner_figures(results, mlm_flop_counts(model), batch, length, peak)
    figures["matmul_peak_gflops"] = peak
    figures["threads"] = threads
    figures["trainer_optim"] = runners[0].optim
    figures["timed_steps_per_runner"] = len(results["trainer"])
    if args.loop_check:
        figures["tdlib_loop_packed_tokens_per_s"] = loop_check(args, args.loop_check)
    figures["train_speedup_vs_trainer_lines"] = rates["tdlib_lines"] / rates["trainer"]
    figures["train_speedup_vs_trainer"] = rates["tdlib_packed"] / rates["trainer"]
    if args.fused_adamw:
        figures["fused_adamw_speedup"] = rates["tdlib_packed"] / rates["tdlib_packed_foreach"]
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
