"""The training loop: corpus -> examples -> collator -> loop -> checkpoint.

`train(config)` trains a network on an objective (`tdlib.objectives`: masked
diffusion at every mask ratio, or the causal baseline). It runs unchanged on a
CPU, one GPU (bf16 autocast, fused AdamW) or several processes under
``accelerate launch``, and it is resumable: the data order, the masks and
dropout at step k depend only on ``(seed, k)``, so a run killed after a
checkpoint and resumed ends with the same weights as one that never stopped.

This module holds the settings (`TrainConfig`, `PRESETS`: the defaults are the
original experiment), the learning-rate schedule and the loop. It knows no
network and no loss by name: the head's start, dropout and frozen layers are
`tdlib.heads`, the losses and batches `tdlib.objectives`, the run directory's
files (checkpoints, ``latest``, the resume state) `tdlib.checkpoint`,
``metrics.jsonl`` `tdlib.runlog`, and the clock budget, SIGTERM and the progress
bar `tdlib.callbacks`. It does not draw (callbacks receive every metrics record, so
`tdlib.widgets.LiveLossView` can draw them) and it does not sample.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tdlib.callbacks import Callback, ClockBudget, ProgressBar, SigtermStop, as_callback
from tdlib.checkpoint import (
    FINAL_MODEL,
    STATE_FILE,
    TRAINING_CONFIG_FILE,
    check_output_dir,
    checkpoint_to_resume,
    hold_run_dir,
    latest_name,
    mark_latest,
    restore_trainer_state,
    trainer_state,
)
from tdlib.data import EXAMPLE_MODES, Examples, get_split, load_corpus, make_examples
from tdlib.errors import UserError, check
from tdlib.heads import HEAD_INITS, init_head, param_groups, set_dropout
from tdlib.masking import MASKING_MODES, ORIGINAL_RATIOS, check_ratios, content_ids
from tdlib.model import autocast, load_checkpoint, max_sequence_length, save_model, uses_bf16
from tdlib.objectives import HEAD_VOCABS, OBJECTIVES, WEIGHTINGS, Objective
from tdlib.runlog import END, INTERRUPTED, METRICS_FILE, RESUME, START, STOPPED, MetricsLog


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the original experiment (the `seed` preset)."""

    objective: str = "diffusion"  # "diffusion" (masked) or "causal" (the autoregressive baseline)
    model_name: str = "roberta-base"  # "minilm" (packaged), "scratch", a hub id or a local directory
    dataset: str = "wikitext-2"  # see tdlib.data.load_corpus
    data_dir: str | None = None  # a folder holding the dataset's train.txt/valid.txt/test.txt (else the hub)
    corpus_size: int | None = None  # training lines of a generated corpus (the toy language; None: 50,000)
    example_mode: str = "lines"  # "lines" (one example per line, padded) or "packed" (full blocks)
    max_length: int = 128  # tokens per example, special tokens included
    prefix_length: int = 5  # content tokens at the start never masked (the prompt)
    ratios: tuple[float, ...] = ORIGINAL_RATIOS  # mask ratios for the "batch"/"example" masking modes
    masking: str = "batch"  # one t per "batch" or "example" from ratios, "continuous" t ~ U(eps, 1) or "stratified"
    loss_weighting: str = "uniform"  # "uniform" (plain MLM), "elbo" (1/t) or "count" ((n+1)/m)
    epochs: float = 3.0  # passes over the training examples (3 x 23,767 lines / 16 = 4,458 steps)
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # examples per optimizer step (over all processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 5e-5  # AdamW's peak learning rate
    warmup_steps: int = 500  # linear warmup to the peak, then linear decay to 0
    weight_decay: float = 0.01  # AdamW's, on weight matrices only
    max_grad_norm: float = 1.0  # gradients are clipped to this norm
    log_steps: int = 10  # a training record every N steps
    eval_steps: int = 500  # an evaluation record every N steps
    eval_examples: int = 512  # validation examples scored at each evaluation
    save_steps: int = 1000  # a checkpoint every N steps
    save_total_limit: int | None = 2  # checkpoints kept (None: all)
    save_at: tuple[int, ...] = ()  # extra steps to checkpoint at (benchmarks score them afterwards)
    output_dir: str = "runs/default"  # the run directory
    seed: int = 42  # the random seed: data order, masks, dropout, new weights
    scratch: dict = field(default_factory=dict)  # options for a "scratch" model (hidden_size, ...)
    causal: dict = field(default_factory=dict)  # sizes of the causal baseline (n_layer, n_embd, n_head)
    time_budget_s: float | None = None  # stop (and save) after this many seconds of training
    # train for time_budget_s seconds with the learning rate decaying to zero over them (the step count, max_steps or
    # epochs, is ignored) and end there normally: equal time for runs whose steps cost differently, and a decayed
    # schedule on any machine (not reproducible step for step: it follows the clock)
    lr_over_time: bool = False
    save_at_s: tuple[float, ...] = ()  # with lr_over_time: checkpoint at the first step past each of these seconds
    # a new LM head's start: "random" (as built), "unigram" (output bias = log unigram frequencies of the train
    # tokens) or "identity" (the unigram bias, and the head's transform starts as a shifted identity map)
    head_init: str = "random"
    head_lr_scale: float = 1.0  # learning-rate multiplier for the LM head's own parameters (not tied embeddings)
    # the masked model's training softmax: over "all" tokens, or ("train") only those in the training text, the only
    # possible labels (a cheaper head; evaluation, sampling and the saved model keep the whole vocabulary)
    head_vocab: str = "all"
    dropout: float | None = None  # None keeps the model's own dropout; 0.0 turns it off for short runs
    # a cheaper step for a pretrained start (the masked model only: the causal baseline starts from scratch)
    freeze_embeddings: bool = False  # keep the input embeddings (and an output layer tied to them) fixed
    freeze_layers: int = 0  # keep the lowest N transformer layers fixed

    def validate(self) -> TrainConfig:
        """Check every value; raise UserError naming the flag to fix."""
        check(self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}")
        check(self.example_mode in EXAMPLE_MODES, f"unknown example mode {self.example_mode!r}")
        check(self.masking in MASKING_MODES, f"unknown masking mode {self.masking!r}")
        check(self.loss_weighting in WEIGHTINGS, f"--loss-weighting must be one of {', '.join(WEIGHTINGS)}")
        check_ratios(self.ratios)
        check(self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}")
        check(self.corpus_size is None or self.corpus_size >= 1, f"--corpus-size must be >= 1, got {self.corpus_size}")
        check(self.prefix_length >= 0, f"--prefix-length must be >= 0, got {self.prefix_length}")
        check(
            self.prefix_length <= self.max_length - 3,
            f"--prefix-length {self.prefix_length} leaves nothing to learn in --max-length {self.max_length}",
        )
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
              f"--batch-size {self.batch_size} must be a multiple of the gradient accumulation {self.grad_accum}")
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "--learning-rate must be > 0")
        check(self.warmup_steps >= 0, "--warmup-steps must be >= 0")
        check(self.epochs > 0, "--epochs must be > 0")
        check(self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1")
        check(self.eval_steps >= 1 and self.save_steps >= 1 and self.log_steps >= 1,
              "--eval-steps, --save-steps and log steps must be >= 1")
        check(self.save_total_limit is None or self.save_total_limit >= 1, "--save-total-limit must be >= 1")
        check(0 <= self.seed < 2**32, f"--seed must be in 0 .. {2**32 - 1}, got {self.seed}")
        check(self.time_budget_s is None or self.time_budget_s >= 0, "--time-budget must be >= 0")
        check(not self.lr_over_time or (self.time_budget_s is not None and 0 < self.time_budget_s < math.inf),
              "--lr-over-time needs a finite --time-budget > 0 to decay over")
        check(not self.save_at_s or self.lr_over_time, "checkpoints by seconds (save_at_s) need --lr-over-time")
        check(all(0 < s for s in self.save_at_s), "save_at_s must be positive seconds")
        check(self.head_init in HEAD_INITS, f"--head-init must be one of {', '.join(HEAD_INITS)}")
        check(self.head_lr_scale > 0 and math.isfinite(self.head_lr_scale), "--head-lr-scale must be > 0")
        check(self.head_vocab in HEAD_VOCABS, f"--head-vocab must be one of {', '.join(HEAD_VOCABS)}")
        check(self.dropout is None or 0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.freeze_layers >= 0, f"--freeze-layers must be >= 0, got {self.freeze_layers}")
        return self


PRESETS: dict[str, dict] = {  # each preset lists only where it differs from the TrainConfig defaults
    # the original experiment: roberta-base on WikiText-2 raw, 3 epochs = 4,458 steps at batch 16
    "seed": {},
    # offline, about 10 minutes on a 2-core laptop; settings chosen by measurement (docs/cpu_preset.md)
    "cpu": dict(
        model_name="minilm", dataset="pydoc", example_mode="packed", masking="stratified", loss_weighting="elbo",
        max_steps=560, batch_size=4, learning_rate=2e-4, warmup_steps=28, eval_steps=140, save_steps=140,
        head_init="identity", head_lr_scale=10.0, dropout=0.0,  # docs/cpu_preset.md, rounds 4 (embeddings train) and 6
        eval_examples=32, time_budget_s=900.0,  # a slow laptop stops (and saves) at 15 minutes
    ),
    # the toy language (tdlib.toylang) on 2 cores in about 4 minutes: a small convolutional network learns it to
    # within a few per cent of its true entropy and writes grammatical sentences (docs/toy_preset.md)
    "toy": dict(
        model_name="scratch", dataset="toy", max_length=48, prefix_length=0, masking="stratified",
        loss_weighting="count", max_steps=2000, batch_size=64, learning_rate=3e-3, warmup_steps=50, eval_steps=250,
        save_steps=250, eval_examples=256, time_budget_s=300.0,  # a slow laptop stops (and saves) at 5 minutes
        scratch=dict(architecture="conv", hidden_size=128, num_layers=4, kernel_size=5),
    ),
    # with a network, about 15 minutes on 2 cores: the original experiment's data and a pretrained masked LM that keeps
    # its MLM head (head_init "random" leaves a loaded head as it is); 900 s / 4.20 s per step (measured minimum,
    # bench/model_step_cost.py) = 214 steps, 200 of them leave time for two small evaluations
    "laptop": dict(
        model_name="distilbert/distilroberta-base", example_mode="packed", masking="stratified",
        loss_weighting="elbo", max_steps=200, batch_size=4, warmup_steps=20, eval_steps=100, save_steps=100,
        eval_examples=16, dropout=0.0, time_budget_s=1200.0,  # a slow laptop stops (and saves) at 20 minutes
    ),
    # seconds: tests, CI and notebook smoke runs
    "smoke": dict(
        model_name="scratch", dataset="pydoc", example_mode="packed", max_length=32, prefix_length=2, max_steps=20,
        batch_size=8, learning_rate=2e-3, warmup_steps=2, eval_steps=10, save_steps=10, eval_examples=16,
        log_steps=2, scratch=dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2),
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A TrainConfig from a preset, with keyword overrides (None values are ignored)."""
    check(name in PRESETS, f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


def lr_at(step: int, config: TrainConfig, total_steps: int, elapsed_s: float = 0.0) -> float:
    """Learning rate after ``step`` optimizer steps: linear warmup, then linear decay to 0.

    With ``config.lr_over_time`` the decay runs over the clock instead of the
    steps: ``lr * min(warmup factor, 1 - elapsed_s / time_budget_s)``, zero at
    the budget whatever a step costs.
    """
    if config.lr_over_time:
        # lr * min((step + 1) / (warmup_steps + 1), 1 - elapsed_s / time_budget_s)
        warm = min((step + 1) / (config.warmup_steps + 1), 1.0)
        return config.learning_rate * min(warm, max(0.0, 1.0 - elapsed_s / config.time_budget_s))
    if step < config.warmup_steps:
        # lr * (step + 1) / (warmup_steps + 1)
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    # lr * (total_steps - step) / (total_steps - warmup_steps)
    remaining = max(total_steps - config.warmup_steps, 1)
    return config.learning_rate * max(0.0, (total_steps - step) / remaining)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s dropout and masks: a function of (seed, step) only."""
    return seed * 1_000_003 + step


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of an epoch, a function of (seed, epoch) only."""
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    output_dir: Path
    final_step: int
    final_model: Path | None
    last_eval: dict | None
    stopped_early: bool = False


class _Run:
    """One run's moving parts behind the loop: the distributed step, the clock, saving, logging.

    It is the `tdlib.callbacks.Loop` the callbacks see.
    """

    def __init__(self, config: TrainConfig, accelerator, loss_module, optimizer, callbacks: list[Callback],
                 start_step: int, resumed_s: float):
        self.config, self.accelerator, self.callbacks = config, accelerator, callbacks
        self.loss_module, self.optimizer = loss_module, optimizer
        self.out = Path(config.output_dir)
        self.is_main = accelerator.is_main_process
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.micro = config.batch_size // config.grad_accum  # examples per micro-batch, over all processes
        check(self.micro % self.world == 0, f"--batch-size {config.batch_size} must split evenly over {self.world} "
                                            f"processes and {config.grad_accum} accumulation steps")
        self.step, self.loss, self.save_now, self.lr_elapsed_s = start_step, None, False, 0.0
        self.total_steps: float = 0
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.train_start = time.perf_counter() - resumed_s
        self.log = MetricsLog(self.out / METRICS_FILE, start_step if start_step else None) if self.is_main else None

    def main_process_says(self, *values: int) -> list[int]:
        """The main process's values on every process: clocks and signals differ, the loop length must not."""
        if self.world == 1:
            return list(values)
        from accelerate.utils import broadcast

        device = self.accelerator.device
        return [int(v) for v in broadcast(torch.tensor(values, dtype=torch.int64, device=device)).tolist()]

    def clock_s(self) -> float:
        """Seconds of training so far by the main process's clock (the same on every process)."""
        return self.main_process_says(int((time.perf_counter() - self.train_start) * 1000))[0] / 1000

    def elapsed_s(self) -> float:
        """Seconds of training so far by this process's clock."""
        return time.perf_counter() - self.train_start

    def emit(self, record: dict) -> None:
        """Write a metrics record and pass it to every callback (main process only)."""
        if self.log is not None:
            self.log.write(record)
            for cb in self.callbacks:
                cb.on_log(record)

    def save(self, model, tokenizer, step: int) -> Path | None:
        """Checkpoint ``step`` with the state to resume from; the path on the main process, else None."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        extra = {STATE_FILE: trainer_state(self.optimizer, step, self.elapsed_s()),
                 TRAINING_CONFIG_FILE: dataclasses.asdict(self.config)}
        path = save_model(model, tokenizer, self.out / f"checkpoint-{step}", extra=extra)
        mark_latest(self.out, path, self.config.save_total_limit)
        return path

    def optimizer_step(self, batch: dict[str, torch.Tensor], lr: float) -> float:
        """One optimizer step over ``batch`` in grad_accum micro-batches, this process's rows; the mean loss."""
        config, accelerator, per_rank = self.config, self.accelerator, self.micro // self.world
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        step_loss = 0.0
        for a in range(config.grad_accum):
            start = a * self.micro + self.rank * per_rank  # this process's rows of this micro-batch
            part = {k: v[start : start + per_rank] for k, v in batch.items()}
            self.window_tokens += int(part["attention_mask"].sum()) * self.world  # counted on the host: no GPU sync
            part = {k: v.to(accelerator.device, non_blocking=True) for k, v in part.items()}
            with autocast(accelerator.device):
                loss = self.loss_module(part)
            loss = loss / config.grad_accum
            if a < config.grad_accum - 1:
                with accelerator.no_sync(self.loss_module):
                    accelerator.backward(loss)
            else:
                accelerator.backward(loss)
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise UserError(f"the loss became {step_loss} at step {self.step + 1}; lower --learning-rate or resume "
                            f"from the last checkpoint ({latest_name(self.out) or 'none yet'})")
        accelerator.clip_grad_norm_(self.loss_module.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss

    def log_step(self, lr: float, steps_per_epoch: int) -> None:
        """The training record of this step: loss, lr, tokens per second since the last one."""
        now = time.perf_counter()
        self.emit({"step": self.step, "loss": self.loss, "lr": lr,
                   "tokens_per_s": self.window_tokens / max(now - self.window_start, 1e-9),
                   "epoch": self.step / steps_per_epoch, "elapsed_s": now - self.train_start})
        self.window_tokens, self.window_start = 0, now

    def stopper(self) -> Callback | None:
        """The first callback asking to stop, by the main process's answers."""
        votes = self.main_process_says(*(int(cb.wants_stop(self)) for cb in self.callbacks))
        return next((cb for cb, vote in zip(self.callbacks, votes, strict=True) if vote), None)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          callbacks: Iterable[Callback | Callable[[dict], None]] = ()) -> TrainResult:
    """Run (or resume) training; every metrics record is also passed to each callback.

    The main process holds the run directory's lock (`tdlib.checkpoint.hold_run_dir`)
    from before its first write to its last: another process training in the same
    directory is refused with a `UserError` naming it. The other processes of the
    same ``accelerate launch`` take no lock: the main process holds it for them.
    """
    from accelerate import Accelerator

    config.validate()
    out = Path(config.output_dir)
    accelerator = Accelerator(mixed_precision="bf16" if uses_bf16() else "no")
    with hold_run_dir(out) if accelerator.is_main_process else nullcontext():
        if accelerator.is_main_process:
            check_output_dir(out, resume)
        accelerator.wait_for_everyone()
        return _train(config, accelerator, checkpoint_to_resume(out) if resume else None, progress, callbacks)


def _train(config: TrainConfig, accelerator, resume_from: Path | None, progress: bool,
           callbacks: Iterable[Callback | Callable[[dict], None]]) -> TrainResult:
    """`train` once the run directory is held: set up, loop, save."""
    objective, model, tokenizer, train_examples, eval_examples, head_init = _setup(config, resume_from)
    model.train()
    # fused AdamW (CUDA, and CPU since torch 2.4): one kernel instead of a loop over tensors
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, config.head_lr_scale),
                                  lr=config.learning_rate, fused=True)
    start_step, resumed_s = restore_trainer_state(resume_from, optimizer) if resume_from else (0, 0.0)
    loss_module, optimizer = accelerator.prepare(objective.loss, optimizer)

    # the loop
    steps_per_epoch = max(len(train_examples) // config.batch_size, 1)
    total_steps = config.max_steps or max(int(config.epochs * steps_per_epoch), 1)
    shown_steps = None if config.lr_over_time else total_steps  # a clock-run has no step count (JSON, progress bar)
    resumed_s = resumed_s if config.lr_over_time else 0.0  # a run by the clock goes on from its checkpoint's clock
    run = _Run(config, accelerator, loss_module, optimizer, [
        SigtermStop(install=accelerator.is_main_process),
        ClockBudget(config.time_budget_s, config.lr_over_time, config.save_at_s, resumed_s),
        ProgressBar(progress and accelerator.is_main_process, shown_steps, start_step),
        *(as_callback(cb) for cb in callbacks)], start_step, resumed_s)
    run.total_steps = shown_steps or math.inf  # a run by the clock: the clock ends it
    if start_step == 0:
        run.emit({"step": 0, "event": START, "max_steps": shown_steps, "config": dataclasses.asdict(config),
                  "train_examples": len(train_examples), "eval_examples": len(eval_examples), "head_init": head_init,
                  "head_vocab": objective.head_vocab,  # columns of the training softmax; None: the whole vocabulary
                  "parameters": sum(p.numel() for p in model.parameters())})
    else:
        run.emit({"step": start_step, "event": RESUME, "max_steps": shown_steps, "from": resume_from.name})
    stopper, last_eval = _loop(run, objective, model, tokenizer, train_examples, eval_examples, steps_per_epoch)
    return _finish(run, stopper, last_eval, objective, model, tokenizer, eval_examples)


def _setup(config: TrainConfig, resume_from: Path | None) -> tuple:
    """corpus -> examples -> network -> objective: (objective, model, tokenizer, train and eval examples, head_init).

    ``head_init`` is what was really done to the head (GPT-2's head has no bias
    and no transform; a resumed network keeps the head it has).
    """
    corpus = load_corpus(config.dataset, config.data_dir, num_lines=config.corpus_size,
                         num_words=config.max_length - 2)  # a generated line fills the canvas
    train_lines = get_split(corpus, "train")
    objective_type = OBJECTIVES[config.objective]
    torch.manual_seed(step_seed(config.seed, -1))  # a new network's weights depend on the seed only
    model, tokenizer = objective_type.load_network(config, train_lines, resume_from)
    _check_fits(model, tokenizer, config.max_length)
    train_examples = make_examples(train_lines, tokenizer, config.max_length, config.example_mode)
    valid_lines = corpus.get("valid") or corpus.get("test") or train_lines[-200:]
    eval_examples = make_examples(valid_lines, tokenizer, config.max_length, config.example_mode)
    eval_examples = eval_examples.subset(config.eval_examples)
    head_init = "random"
    if resume_from is None:
        head_init = init_head(model, config.head_init, content_ids(train_examples, tokenizer),
                              good_turing=config.head_vocab == "train")
    if config.dropout is not None:  # after a resume too: the checkpoint's config may predate the option
        set_dropout(model, config.dropout)
    objective = objective_type(model, tokenizer, config, train_examples)
    return objective, model, tokenizer, train_examples, eval_examples, head_init


def _finish(run: _Run, stopper: Callback | None, last_eval: dict | None, objective: Objective, model, tokenizer,
            eval_examples: Examples) -> TrainResult:
    """After the loop: the checkpoint of a stop, the final evaluation and model, the `end` record."""
    config, out = run.config, run.out
    if stopper is not None:
        run.save(model, tokenizer, run.step)
        run.emit({"step": run.step, "event": STOPPED, "reason": stopper.reason})
        if stopper.hurry:
            return TrainResult(out, run.step, None, last_eval, stopped_early=True)
        if run.is_main and (last_eval is None or last_eval["step"] != run.step):  # a budget stop is a normal end
            last_eval = objective.evaluate(eval_examples, run.step)
            run.emit(last_eval)
    final = None
    run.accelerator.wait_for_everyone()
    if run.is_main:
        final = save_model(model, tokenizer, out / FINAL_MODEL, extra={TRAINING_CONFIG_FILE: dataclasses.asdict(config)})
        run.emit({"step": run.step, "event": END, "final_model": FINAL_MODEL})
    return TrainResult(out, run.step, final, last_eval, stopper is not None)


def _check_fits(model, tokenizer, max_length: int) -> None:
    """Check that the network can denoise (its tokenizer has a mask token) and read examples this long."""
    check(tokenizer.mask_token_id is not None, "the tokenizer has no mask token")
    limit = max_sequence_length(model)
    check(limit is None or max_length <= limit, f"--max-length {max_length} is longer than the model's {limit} "
          f"positions; use --max-length {limit} or less")


def _loop(run: _Run, objective: Objective, model, tokenizer, train_examples: Examples, eval_examples: Examples,
          steps_per_epoch: int) -> tuple[Callback | None, dict | None]:
    """Optimizer steps until the run ends or a callback stops it; (the stopping callback or None, last evaluation)."""
    config, start_step, last_eval, stopper = run.config, run.step, None, None
    for cb in run.callbacks:
        cb.on_train_start(run)
    try:
        while run.step < run.total_steps:
            epoch, within = divmod(run.step, steps_per_epoch)
            rows = epoch_order(len(train_examples), config.seed, epoch)[within * config.batch_size:][:config.batch_size]
            torch.manual_seed(step_seed(config.seed, run.step))  # dropout
            batch = objective.collate([train_examples[int(i)] for i in rows], step_seed(config.seed, run.step))
            for cb in run.callbacks:
                cb.on_step_begin(run)
            lr = lr_at(run.step, config, run.total_steps, run.lr_elapsed_s)
            run.loss = run.optimizer_step(batch, lr)
            run.step += 1
            run.save_now = False
            for cb in run.callbacks:
                cb.on_step_end(run)
            if run.step % config.log_steps == 0 or run.step == run.total_steps:
                run.log_step(lr, steps_per_epoch)
            if run.step % config.eval_steps == 0 or run.step == run.total_steps:
                if run.is_main:
                    last_eval = objective.evaluate(eval_examples, run.step)
                    run.emit(last_eval)
                run.window_start = time.perf_counter()
            if (run.step % config.save_steps == 0 or run.step in config.save_at or run.save_now) \
                    and run.step < run.total_steps:
                path = run.save(model, tokenizer, run.step)
                for cb in run.callbacks:
                    if path is not None:
                        cb.on_checkpoint(run, path)
            stopper = run.stopper()
            if stopper is not None and run.step < run.total_steps:  # after the last step: a normal end
                return stopper, last_eval
    except torch.cuda.OutOfMemoryError:
        raise UserError(out_of_memory_advice(config)) from None
    except KeyboardInterrupt:
        if run.step > start_step:
            path = run.save(model, tokenizer, run.step)
            if path is not None:
                run.emit({"step": run.step, "event": INTERRUPTED, "checkpoint": path.name})
        raise
    finally:
        for cb in run.callbacks:
            cb.on_train_end(run)
    return None, last_eval

def load_or_train(run_dir: str | Path, preset_name: str = "smoke", **overrides) -> tuple:
    """(model, tokenizer) of ``run_dir``'s final model, in eval mode; trains ``preset_name`` there first if it has none.

    The notebooks use it to open the course model that notebook 02 trained, or a
    tiny `smoke` model (seconds) when that notebook has not run. A run directory
    without a final model (an interrupted run) is replaced by a fresh one.
    """
    run_dir = Path(run_dir)
    if not (run_dir / FINAL_MODEL).is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        train(preset(preset_name, output_dir=str(run_dir), **overrides), progress=False)
    return load_checkpoint(run_dir / FINAL_MODEL)


def out_of_memory_advice(config: TrainConfig) -> str:
    """What to try after the GPU ran out of memory: smaller micro-batches, same effective batch."""
    micro = config.batch_size // config.grad_accum
    accum = next((a for a in range(config.grad_accum + 1, config.batch_size + 1) if config.batch_size % a == 0), None)
    if accum is None:
        return f"out of GPU memory even at 1 example per micro-batch; lower --max-length (now {config.max_length})"
    return (f"out of GPU memory at {micro} examples per micro-batch; keep the batch with --grad-accum {accum} "
            f"({config.batch_size // accum} examples at a time) or try --batch-size {max(config.batch_size // 2, 1)}, "
            "then --resume")
