"""The training loop: corpus -> examples -> collator -> loop -> checkpoint.

`train(config)` trains a network on an objective (`tdlib.objectives`: masked
diffusion at every mask ratio, or the causal baseline). It runs unchanged on a
CPU, one GPU (bf16 autocast, fused AdamW) or several processes under
``accelerate launch``, and it is resumable: the data order, the masks and
dropout at step k depend only on ``(seed, k)``, so a run killed after a
checkpoint and resumed ends with the same weights as one that never stopped.

This module holds the learning-rate schedule and the loop; the settings
(`TrainConfig`, `PRESETS`: the defaults are the original experiment) are
`tdlib.config`'s, imported here too. It knows no
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
from dataclasses import dataclass
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
from tdlib.config import PRESETS, TrainConfig, preset  # noqa: F401 (PRESETS: callers import it from here)
from tdlib.data import Examples, get_split, load_corpus, make_examples
from tdlib.errors import UserError, require
from tdlib.heads import init_head, param_groups, set_dropout
from tdlib.masking import content_ids
from tdlib.model import autocast, load_checkpoint, max_sequence_length, save_model, uses_bf16
from tdlib.objectives import OBJECTIVES, Objective
from tdlib.runlog import END, INTERRUPTED, METRICS_FILE, RESUME, START, STOPPED, MetricsLog


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
        require(self.micro % self.world == 0, f"--batch-size {config.batch_size} must split evenly over {self.world} "
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
    require(tokenizer.mask_token_id is not None, "the tokenizer has no mask token")
    limit = max_sequence_length(model)
    require(limit is None or max_length <= limit, f"--max-length {max_length} is longer than the model's {limit} "
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
