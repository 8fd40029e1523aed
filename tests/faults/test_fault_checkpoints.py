"""Damaged checkpoints: `generate` and `evaluate` refuse them with a message naming the file,
and, given a run directory, fall back to the newest good checkpoint and say so.

Three kinds of damage to ``model.safetensors``: truncated (a kill mid-copy), emptied
(a full disk), and a corrupt header (bit rot) whose length field still fits the file.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from tdlib.cli import main

TRAINED = {"training_config.json": {"dataset": "pydoc", "max_length": 16, "example_mode": "packed"}}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + header_len] = b"\x00\xff" * (header_len // 2) + b"\x00" * (header_len % 2)
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "emptied": empty, "corrupt-header": corrupt_header}
COMMANDS = {
    "generate": ["--max-length", "10", "--steps", "2"],
    "evaluate": ["--max-characters", "300", "--batch-size", "8"],
}


@pytest.fixture(scope="module")
def good_run(scratch, tmp_path_factory) -> Path:
    """A run directory: checkpoint-1, checkpoint-2 (named by `latest`) and final-model."""
    from tdlib.model import save_model

    model, tokenizer = scratch
    run = tmp_path_factory.mktemp("faults") / "run"
    for name in ("checkpoint-1", "checkpoint-2", "final-model"):
        save_model(model, tokenizer, run / name, extra=TRAINED)
    (run / "latest").write_text("checkpoint-2\n")
    return run


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(good_run, copy)
    return copy


def call(command: str, checkpoint: Path, capsys) -> tuple[int, str, str]:
    code = main([command, "--checkpoint", str(checkpoint), *COMMANDS[command]])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_model_dir_is_refused_naming_the_file(run, capsys, command, damage):
    weights = run / "final-model" / "model.safetensors"
    DAMAGE[damage](weights)
    code, out, err = call(command, run / "final-model", capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"error: cannot use checkpoint: {weights} is truncated or corrupt"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_run_dir_falls_back_to_the_last_good_checkpoint(run, capsys, caplog, command, damage):
    # the final model and the checkpoint `latest` names are both damaged: checkpoint-1 is the last good one
    for name in ("final-model", "checkpoint-2"):
        DAMAGE[damage](run / name / "model.safetensors")
    code, out, err = call(command, run, capsys)
    assert code == 0, err
    assert f"{run}/final-model/model.safetensors is truncated or corrupt" in caplog.text
    assert f"{run}/checkpoint-2/model.safetensors is truncated or corrupt" in caplog.text
    assert f"using {run}/checkpoint-1 instead" in caplog.text
    if command == "evaluate":
        assert f"checkpoint   {run}/checkpoint-1" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_run_dir_with_no_good_checkpoint_names_every_problem(run, capsys, command):
    for damage, name in zip(DAMAGE.values(), ("final-model", "checkpoint-2", "checkpoint-1"), strict=True):
        damage(run / name / "model.safetensors")
    code, out, err = call(command, run, capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: no usable checkpoint in {run}: ")
    assert all(f"{run}/{name}/model.safetensors is truncated or corrupt" in line
               for name in ("final-model", "checkpoint-2", "checkpoint-1"))


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json is not a valid JSON object"),
        (lambda d: (d / "config.json").write_text('{"model_type": '), "config.json is not a valid JSON object"),
        (lambda d: truncate(d / "tokenizer.json"), "tokenizer.json is truncated or corrupt"),
        (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    ],
    ids=["config-a-list", "config-cut", "tokenizer-cut", "weights-missing"],
)
def test_other_damaged_files_are_refused(run, capsys, break_it, problem):
    break_it(run / "final-model")
    code, out, err = call("generate", run / "final-model", capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: cannot use checkpoint: ") and problem in line


def test_latest_naming_a_missing_checkpoint_still_finds_a_good_one(run, capsys, caplog):
    shutil.rmtree(run / "final-model")
    (run / "latest").write_text("checkpoint-9\n")
    code, out, err = call("generate", run, capsys)
    assert code == 0, err
    assert f"{run}/checkpoint-9 does not exist" in caplog.text
    assert f"using {run}/checkpoint-2 instead" in caplog.text
