"""One writer per run directory: a second training process there is refused, naming the one that trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tdlib.checkpoint import LOCK_FILE, hold_run_dir
from tdlib.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_cmd(out, steps: int) -> list[str]:
    return [sys.executable, "-m", "tdlib", "train", "--preset", "smoke", "--max-steps", str(steps),
            "--eval-steps", "1000", "--save-steps", "1000", "--output-dir", str(out), "--quiet"]


def test_two_trainings_started_together_one_trains_the_other_is_refused(tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen(_train_cmd(out, 300), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    refused = next(err for p, _, err in results if p.returncode == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"process {winner.pid} " in lines[0], refused
    events = [json.loads(line).get("event") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("end") == 1
    assert not (out / LOCK_FILE).exists()  # the winner let go of the run at its end


def test_resume_into_a_held_run_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    with hold_run_dir(out):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        assert main(["train", "--preset", "smoke", "--resume", "--output-dir", str(out), "--quiet"]) == 2
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no checkpoint, no metrics line
    assert not any(out.iterdir())  # and the lock's file goes with the lock
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and f"process {os.getpid()} " in err[0]
    assert "is in use" in err[0]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from tdlib.checkpoint import hold_run_dir\n"
            "with hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).exists()  # what a kill -9 leaves: the file, not the lock
    started = time.monotonic()
    with hold_run_dir(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 5
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_let_go_on_an_error_inside(tmp_path):
    out = tmp_path / "run"
    try:
        with hold_run_dir(out):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    with hold_run_dir(out):
        pass
