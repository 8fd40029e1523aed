"""Same seed, same result: generated samples (in one process and across processes) and
training losses and weights on CPU; a different seed gives different samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tdlib.cli import main


@pytest.fixture(scope="module")
def checkpoint(scratch, tmp_path_factory) -> str:
    from tdlib.model import save_model

    model, tokenizer = scratch
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("determinism") / "model"))


def generate_argv(checkpoint: str, seed: int, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", checkpoint, "--prefix", "The value", "--num-samples", "3",
            "--max-length", "24", "--steps", "6", "--seed", str(seed), "--json", *extra]


def samples(capsys, argv: list[str]) -> list[str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)["samples"]


@pytest.mark.parametrize(
    "options",
    [[], ["--strategy", "resample", "--sampling", "nucleus", "--top-p", "0.8"],
     ["--strategy", "random", "--temperature", "1.5", "--schedule", "cosine"],
     ["--strategy", "entropy", "--sampling", "topk", "--top-k", "5"]],
    ids=["default", "resample-nucleus", "random-hot-cosine", "entropy-top5"],
)
def test_same_seed_same_samples_different_seed_different_samples(checkpoint, capsys, options):
    first = samples(capsys, generate_argv(checkpoint, 11, *options))
    assert samples(capsys, generate_argv(checkpoint, 11, *options)) == first
    assert samples(capsys, generate_argv(checkpoint, 12, *options)) != first
    assert len(set(first)) > 1  # the seed drives the batch's rows apart too


def test_same_seed_same_samples_across_processes(checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tdlib", *generate_argv(checkpoint, 5)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out)["samples"])
    assert results[0] == results[1]


def test_same_seed_same_training_losses(tmp_path):
    from safetensors.torch import load_file

    from tdlib.train import preset, train

    def run(name: str, seed: int) -> list[tuple[int, float]]:
        out = tmp_path / name
        train(preset("smoke", output_dir=str(out), max_steps=4, log_steps=1, eval_steps=100, save_steps=100,
                     seed=seed), progress=False)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if "loss" in r]

    first, second = run("a", 3), run("b", 3)
    assert [s for s, _ in first] == [1, 2, 3, 4]
    assert second == first  # exactly: same floats, not approximately
    a, b = (load_file(str(tmp_path / n / "final-model" / "model.safetensors")) for n in "ab")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
