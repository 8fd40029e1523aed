"""SIGKILL a real `python -m tdlib train` at random points, resume each time, and end exactly
where a run that never stopped ends: same logged losses, same final weights.

The kill points are drawn from a seeded generator, so a failure can be replayed.
Each kill waits for two checkpoints newer than the one the process started from, which
times one checkpoint interval on this machine, then for a random number of further
checkpoints and a random fraction of that interval: kills land during training steps,
evaluation and checkpoint writes, however fast or slow the machine is.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tdlib.checkpoint import validate_model_dir

STEPS, SAVE_STEPS, EVAL_STEPS, KILLS = 32, 2, 6, 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "tdlib", "train", "--preset", "smoke", "--max-steps", str(STEPS),
            "--save-steps", str(SAVE_STEPS), "--eval-steps", str(EVAL_STEPS), "--output-dir", str(out), "--quiet"]


def latest(out: Path) -> str | None:
    try:
        return (out / "latest").read_text().strip()
    except OSError:
        return None


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def next_checkpoint(out: Path, after: str | None, proc: subprocess.Popen, timeout: float = 300) -> str | None:
    """Poll until ``out/latest`` names a checkpoint other than ``after``; None if ``proc`` ends first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        now = latest(out)
        if now not in (None, after):
            return now
        time.sleep(0.002)  # a smoke checkpoint interval is ~30 ms on a fast machine
    return None


@pytest.mark.slow
def test_repeated_sigkill_and_resume_match_an_uninterrupted_run(tmp_path):
    rng = random.Random(8)
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = subprocess.Popen(train_cmd(full), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_points = []  # (checkpoint when killed, delay after the last one seen as a fraction of an interval)
    resume = []
    while len(kill_points) < KILLS:
        started_from = latest(killed)
        proc = subprocess.Popen(train_cmd(killed) + resume, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen = next_checkpoint(killed, started_from, proc)
        t0 = time.perf_counter()
        seen = next_checkpoint(killed, seen, proc)
        interval = time.perf_counter() - t0  # one checkpoint interval of this process, measured
        for _ in range(rng.randint(0, 1)):
            seen = next_checkpoint(killed, seen, proc)
        if seen is None:
            break  # it finished before a kill could land
        fraction = rng.random()
        time.sleep(fraction * interval)
        proc.kill()
        proc.wait()
        kill_points.append((latest(killed), round(fraction, 2)))
        resume = ["--resume"]
    print(f"kill points: {kill_points}")
    assert len(kill_points) == KILLS, f"expected {KILLS} kills, got {kill_points}"
    subprocess.run(train_cmd(killed) + ["--resume"], env=ENV, check=True, capture_output=True)
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err.decode()

    def losses(out: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in records(out) if "loss" in r]

    # every training step logged exactly once, with the loss of the uninterrupted run
    assert [s for s, _ in losses(killed)] == list(range(2, STEPS + 1, 2))
    assert losses(killed) == losses(full)

    # every evaluation logged once, with the uninterrupted run's figures
    def evals(out: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["nelbo_bits_per_char"]) for r in records(out) if "nelbo_bits_per_char" in r]

    assert [s for s, _ in evals(killed)] == list(range(EVAL_STEPS, STEPS + 1, EVAL_STEPS)) + [STEPS]
    assert evals(killed) == evals(full)
    assert sum(r.get("event") == "resume" for r in records(killed)) >= len(kill_points)
    assert [r["step"] for r in records(killed) if r.get("event") == "end"] == [STEPS]
    a = load_file(str(full / "final-model" / "model.safetensors"))
    b = load_file(str(killed / "final-model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert validate_model_dir(killed / latest(killed)) is None
