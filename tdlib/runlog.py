"""A run's metrics log, ``metrics.jsonl``: its one writer, its one reader, and what its records mean.

Every record is one JSON object on one line, with the ``step`` it was written
at. Training records carry ``loss``; evaluation records carry
``eval_loss_by_ratio`` (a masked model's) or ``nll_bits_per_char`` (the causal
baseline's); lifecycle records carry an ``event``, one of the names below.

A run has ended when its last lifecycle record is one of `FINAL_EVENTS`:
``end`` (the final model is saved), ``stopped`` (a stop such as SIGTERM saved a
checkpoint and returned; a stop by the clock budget is followed by ``end``) or
``interrupted`` (Ctrl-C saved a checkpoint). A resumed run writes ``resume``
and is going again.

This module only reads and writes the log; it does not draw it (`tdlib.plots`)
and knows nothing of checkpoints (`tdlib.checkpoint`) beyond their names in
records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tdlib.checkpoint import atomic_write_text
from tdlib.errors import UserError, require

METRICS_FILE = "metrics.jsonl"  # a run directory's metrics log, one JSON record per line

START = "start"  # the first record of a fresh run: max_steps, the config, sizes
RESUME = "resume"  # a resumed run starts again from a checkpoint
CHECKPOINT = "checkpoint"  # a checkpoint saved early (by the clock)
STOPPED = "stopped"  # a callback stopped the run (SIGTERM, the clock budget)
INTERRUPTED = "interrupted"  # Ctrl-C: a checkpoint was saved, then the run ended
END = "end"  # the final model is saved
FINAL_EVENTS = (END, STOPPED, INTERRUPTED)  # the events that end a run (until it is resumed)
LIFECYCLE_EVENTS = (START, RESUME, *FINAL_EVENTS)  # the events that say whether a run is going


class MetricsLog:
    """The writer: an append-only ``metrics.jsonl`` that drops records past a resume point."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= resume_step and record.get("event") != END:
                    kept.append(line)
            atomic_write_text(path, "".join(k + "\n" for k in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        """Append one record as a line of JSON."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def read_metrics(path: str | Path) -> list[dict]:
    """The reader: the records of a run's `metrics.jsonl` (a file or its run directory).

    A last line cut short (the writer was killed, or is mid-line) is skipped; any
    other line that is not JSON, or a file that is not UTF-8 text, is a `UserError`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    require(path.is_file(), f"no metrics file at {path}; pass a run directory or its {METRICS_FILE}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); is it a tdlib run?") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # the writer was killed or is mid-line: the last line may be cut short
            raise UserError(f"{path}:{number} is not valid JSON ({err.msg}); fix or remove that line") from err
    return records


def events(records: Iterable[dict], names: Iterable[str] = LIFECYCLE_EVENTS) -> list[dict]:
    """The records whose ``event`` is one of ``names`` (the lifecycle events by default), in file order."""
    names = tuple(names)
    return [r for r in records if isinstance(r, dict) and r.get("event") in names]


BUDGET_REASON = "time budget"  # a stop for this reason goes on to a final evaluation and `end`


def finished(records: Iterable[dict]) -> bool:
    """Whether the run has ended: its last lifecycle record is one of `FINAL_EVENTS`.

    A stop at the clock budget is the one `STOPPED` record that does not end the
    run: its final evaluation and `END` record follow.
    """
    lifecycle = events(records)
    if not lifecycle:
        return False
    last = lifecycle[-1]
    return last["event"] in FINAL_EVENTS and not (last["event"] == STOPPED and last.get("reason") == BUDGET_REASON)


def eval_records(records: Iterable[dict]) -> list[dict]:
    """The evaluation records (those carrying `eval_loss_by_ratio`), in file order."""
    return [r for r in records if "eval_loss_by_ratio" in r]


def train_records(records: Iterable[dict]) -> list[dict]:
    """The training records (those carrying `loss`), in file order."""
    return [r for r in records if "loss" in r]


def training_seconds(records: Iterable[dict]) -> float:
    """Seconds a run spent training, over all its sessions: a resumed run's clock starts again at each resume."""
    total, last = 0.0, 0.0
    for record in records:
        if record.get("event") == RESUME:
            total, last = total + last, 0.0
        elif "elapsed_s" in record:
            last = record["elapsed_s"]
    return total + last
