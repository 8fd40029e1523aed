"""bench/time_to_quality.py: the helpers that turn a run's metrics log into its training seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "time_to_quality.py"


@pytest.fixture(scope="module")
def ttq():
    spec = importlib.util.spec_from_file_location("time_to_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timed_checkpoints_maps_each_budget_to_its_checkpoint_steps_and_seconds(ttq, tmp_path):
    records = [{"step": 0, "event": "start", "config": {"time_budget_s": 300.0}},
               {"step": 10, "loss": 1.0, "elapsed_s": 11.0},
               {"step": 112, "event": "checkpoint", "at_s": [60.0, 120.0], "checkpoint": "checkpoint-112",
                "elapsed_s": 121.5},
               {"step": 275, "loss": 1.0, "elapsed_s": 300.4}, {"step": 275, "event": "end"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    found = ttq.timed_checkpoints(tmp_path)
    assert found == {60.0: (tmp_path / "checkpoint-112", 112, 121.5), 120.0: (tmp_path / "checkpoint-112", 112, 121.5),
                     300.0: (tmp_path / "final-model", 275, 300.4)}


def test_unknown_model_names_are_refused_before_any_work(ttq, capsys):
    with pytest.raises(SystemExit) as exc:
        ttq.main(["--models", "diffusion,bert"])
    assert exc.value.code == 2
    assert "--models takes diffusion, ar or both" in capsys.readouterr().err
