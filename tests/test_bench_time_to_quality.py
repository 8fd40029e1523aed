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


def test_train_seconds_reads_the_nearest_record_and_scales_it(ttq, tmp_path):
    records = [{"step": 0, "event": "start"}, {"step": 10, "loss": 1.0, "elapsed_s": 12.0},
               {"step": 20, "loss": 1.0, "elapsed_s": 30.0}, {"step": 20, "event": "end"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert ttq.train_seconds(tmp_path, 20) == pytest.approx(30.0)
    assert ttq.train_seconds(tmp_path, 11) == pytest.approx(12.0 * 11 / 10)  # nearest record is step 10
    assert ttq.train_seconds(tmp_path, 19) == pytest.approx(30.0 * 19 / 20)


def test_unknown_model_names_are_refused_before_any_work(ttq, capsys):
    with pytest.raises(SystemExit) as exc:
        ttq.main(["--models", "diffusion,bert"])
    assert exc.value.code == 2
    assert "--models takes diffusion, ar or both" in capsys.readouterr().err
