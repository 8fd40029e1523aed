"""Running out of GPU memory: `tdlib train` says which smaller micro-batch to use.

There is no GPU here, so the out-of-memory error is simulated: the loss module's
forward pass raises ``torch.cuda.OutOfMemoryError`` (the exception CUDA raises) on
the first training step. What is tested is the handling, not a real allocation.
"""

from __future__ import annotations

import re

import pytest
import torch

from tdlib.cli import main
from tdlib.errors import UserError
from tdlib.train import out_of_memory_advice, preset


def oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("command", ["train", "demo"])
def test_out_of_memory_suggests_half_the_micro_batch(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr("tdlib.objectives.MaskedDiffusionLoss.forward", oom)
    extra = ["--batch-size", "8", "--max-steps", "2"] if command == "train" else []
    code = main([command, "--preset", "smoke", "--quiet", "--output-dir", str(tmp_path / "run"), *extra])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: out of GPU memory at 8 examples per micro-batch")
    assert "--grad-accum 2" in line and "--batch-size 4" in line and "--resume" in line


@pytest.mark.parametrize("batch_size, grad_accum", [(16, 1), (16, 4), (8, 2), (4, 4), (12, 4), (9, 3)])
def test_every_suggested_setting_is_accepted(batch_size, grad_accum):
    """Whatever the advice names must pass the config check (so the user's retry starts)."""
    advice = out_of_memory_advice(preset("smoke", batch_size=batch_size, grad_accum=grad_accum, output_dir="x"))
    suggested = dict(re.findall(r"--(grad-accum|batch-size) (\d+)", advice))
    if "grad-accum" in suggested:
        preset("smoke", batch_size=batch_size, grad_accum=int(suggested["grad-accum"]), output_dir="x")
    if "batch-size" in suggested:
        smaller = int(suggested["batch-size"])
        try:
            preset("smoke", batch_size=smaller, grad_accum=grad_accum, output_dir="x")
        except UserError:  # the smaller batch with the old accumulation may not split: then without it
            preset("smoke", batch_size=smaller, output_dir="x")
    if batch_size // grad_accum == 1:
        assert "--max-length" in advice
