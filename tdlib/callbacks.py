"""Hooks into the training loop: the clock budget, SIGTERM, the progress bar, metrics watchers.

`tdlib.train.train` calls every callback at fixed points of each run:
``on_train_start``, ``on_step_begin`` and ``on_step_end`` around each optimizer
step, ``on_checkpoint`` after each save, ``on_log`` with every metrics record
(on the main process), ``wants_stop`` after each step (the main process's
answer counts on every process), and ``on_train_end`` however the run ends.
A callback sees the running loop through `Loop` and may end the run (set
``loop.total_steps``), ask for a checkpoint (``loop.save_now``) or ask to stop.
A plain function of a record (such as `tdlib.widgets.LiveLossView`) is
wrapped as a callback's ``on_log``. This module draws nothing and trains nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tdlib.runlog import BUDGET_REASON, CHECKPOINT


class Loop(Protocol):
    """What a callback sees of the running loop."""

    step: int  # optimizer steps done
    total_steps: float  # where the run ends (math.inf while the clock decides); a callback may lower it
    loss: float | None  # the last step's loss
    save_now: bool  # a callback sets it in on_step_end to have this step checkpointed
    lr_elapsed_s: float  # the seconds the learning-rate schedule reads (0 unless it follows the clock)

    def clock_s(self) -> float:
        """Seconds of training so far by the main process's clock (the same on every process)."""

    def elapsed_s(self) -> float:
        """Seconds of training so far by this process's clock."""

    def emit(self, record: dict) -> None:
        """Write a metrics record and pass it to every callback."""


class Callback:
    """A hook into the training loop; every method does nothing unless overridden."""

    reason = ""  # what the "stopped" record calls a stop this callback asked for
    hurry = False  # such a stop saves and returns at once: no evaluation, no final model

    def on_train_start(self, loop: Loop) -> None:
        """Before the first step."""

    def on_step_begin(self, loop: Loop) -> None:
        """Before each optimizer step."""

    def on_step_end(self, loop: Loop) -> None:
        """After each optimizer step, before it is logged, evaluated and saved."""

    def on_checkpoint(self, loop: Loop, path: Path) -> None:
        """After a checkpoint was saved (main process)."""

    def on_log(self, record: dict) -> None:
        """Every metrics record as it is written (main process)."""

    def wants_stop(self, loop: Loop) -> bool:
        """Whether this callback asks to stop after this step."""
        return False

    def on_train_end(self, loop: Loop) -> None:
        """However the run ends, errors included."""


class RecordWatcher(Callback):
    """A function of each metrics record, as a callback."""

    def __init__(self, watch: Callable[[dict], None]):
        self.watch = watch

    def on_log(self, record: dict) -> None:
        """Pass the record on."""
        self.watch(record)


def as_callback(hook: Callback | Callable[[dict], None]) -> Callback:
    """``hook`` itself if it is a `Callback`, else a `RecordWatcher` of it."""
    return hook if isinstance(hook, Callback) else RecordWatcher(hook)


class ClockBudget(Callback):
    """Training by the clock.

    With ``budget_s`` alone: stop (and save) after that many seconds of training,
    wherever the step count is. With ``lr_over_time``: the learning rate decays
    to zero over the budget (the schedule reads `Loop.clock_s`), the run ends
    normally at the first step past it, and a checkpoint is taken at the first
    step past each of ``save_at_s`` seconds.
    """

    reason = BUDGET_REASON

    def __init__(self, budget_s: float | None, lr_over_time: bool, save_at_s: tuple[float, ...], resumed_s: float):
        self.budget_s, self.lr_over_time = budget_s, lr_over_time
        self.pending_s = sorted(s for s in save_at_s if s > resumed_s)  # checkpoints by the clock still to come
        self.due_s: list[float] = []

    def on_step_begin(self, loop: Loop) -> None:
        """Give the learning-rate schedule the clock's reading."""
        if self.lr_over_time:
            loop.lr_elapsed_s = loop.clock_s()

    def on_step_end(self, loop: Loop) -> None:
        """End the run at the budget; ask for the checkpoints whose seconds have come."""
        if not self.lr_over_time:
            return
        now_s = loop.clock_s()
        if now_s >= self.budget_s:
            loop.total_steps = loop.step  # the schedule has run out of time: this was the last step
        self.due_s = [s for s in self.pending_s if now_s >= s]
        self.pending_s = [s for s in self.pending_s if now_s < s]
        loop.save_now = loop.save_now or bool(self.due_s)

    def on_checkpoint(self, loop: Loop, path: Path) -> None:
        """Record which seconds marks the checkpoint answers."""
        if self.due_s:
            loop.emit({"step": loop.step, "event": CHECKPOINT, "at_s": self.due_s, "checkpoint": path.name,
                       "elapsed_s": loop.elapsed_s()})

    def wants_stop(self, loop: Loop) -> bool:
        """Past the budget (when the learning rate does not follow the clock)."""
        return not self.lr_over_time and self.budget_s is not None and loop.elapsed_s() > self.budget_s


class SigtermStop(Callback):
    """On SIGTERM (a scheduler's notice), save at the end of the step and return."""

    reason = "SIGTERM"
    hurry = True

    def __init__(self, install: bool):
        self.install = install  # the main process only: it alone decides
        self.flag = False  # set by the handler, never cleared
        self.old_handler = None

    def _on_sigterm(self, signum, frame) -> None:
        self.flag = True

    def on_train_start(self, loop: Loop) -> None:
        """Install the handler."""
        if self.install:
            self.old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def wants_stop(self, loop: Loop) -> bool:
        """Whether SIGTERM has come."""
        return self.flag

    def on_train_end(self, loop: Loop) -> None:
        """Restore the handler there was."""
        if self.old_handler is not None:
            signal.signal(signal.SIGTERM, self.old_handler)
            self.old_handler = None


class ProgressBar(Callback):
    """A tqdm bar of the steps with a running loss."""

    def __init__(self, show: bool, total: float | None, initial: int):
        self.show, self.total, self.initial = show, total, initial
        self.bar = None
        self.running_loss: float | None = None

    def on_train_start(self, loop: Loop) -> None:
        """Open the bar."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.initial, disable=not self.show, desc="train",
                        dynamic_ncols=True)

    def on_step_end(self, loop: Loop) -> None:
        """Advance the bar; show the loss averaged over about the last ten steps."""
        # running = 0.9 running + 0.1 loss
        self.running_loss = loop.loss if self.running_loss is None else 0.9 * self.running_loss + 0.1 * loop.loss
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.running_loss:.3f}")

    def on_train_end(self, loop: Loop) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
