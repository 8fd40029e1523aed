"""Tests for tdlib.plots (building figures without pyplot) and for reading the metrics it draws (tdlib.runlog)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from matplotlib.figure import Figure

from tdlib import plots, runlog
from tdlib.errors import UserError

RATIOS = ("1.0", "0.7", "0.4", "0.1")


def make_records(num_evals: int = 3) -> list[dict]:
    """A small run: a start line, training lines every step, eval lines every 10 steps."""
    records = [{"step": 0, "event": "start", "config": {}, "max_steps": 10 * num_evals}]
    for step in range(1, 10 * num_evals + 1):
        records.append(
            {
                "step": step,
                "loss": 5.0 / step**0.5,
                "lr": 1e-4,
                "tokens_per_s": 900.0,
                "epoch": step / 100,
                "elapsed_s": step * 0.5,
            }
        )
        if step % 10 == 0:
            losses = {r: float(r) * 6.0 / (step / 10) + 1.0 for r in RATIOS}
            records.append({"step": step, "eval_loss_by_ratio": losses, "nelbo_bits_per_char": 2.0})
    return records


def write_metrics(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


@pytest.fixture
def schedules(monkeypatch):
    """The sampler's tdlib.schedules, or a linear stand-in until it exists."""
    try:
        import tdlib.schedules as module
    except ImportError:
        module = types.ModuleType("tdlib.schedules")

        def masked_counts(schedule, num_masked, num_steps):
            return [round(num_masked * (1 - s / num_steps)) for s in range(num_steps + 1)]

        module.masked_counts = masked_counts
        module.SCHEDULES = ("linear",)
        monkeypatch.setitem(sys.modules, "tdlib.schedules", module)
    return module


def test_read_metrics_from_run_dir_and_file(tmp_path):
    records = make_records()
    write_metrics(tmp_path / "metrics.jsonl", records)
    assert runlog.read_metrics(tmp_path) == records
    assert runlog.read_metrics(tmp_path / "metrics.jsonl") == records


def test_read_metrics_tolerates_truncated_last_line(tmp_path):
    records = make_records(1)
    write_metrics(tmp_path / "metrics.jsonl", records, tail='{"step": 11, "lo')
    assert runlog.read_metrics(tmp_path) == records


def test_read_metrics_rejects_corrupt_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=":2 is not valid JSON"):
        runlog.read_metrics(tmp_path)


def test_read_metrics_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no metrics file"):
        runlog.read_metrics(tmp_path / "nowhere")


def test_record_filters():
    records = make_records(2)
    assert [r["step"] for r in runlog.eval_records(records)] == [10, 20]
    assert len(runlog.train_records(records)) == 20


def test_loss_by_ratio_figure_one_line_per_ratio_and_colorbar():
    fig = plots.loss_by_ratio_figure(make_records(), log_scale=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == len(RATIOS)
    assert {line.get_label() for line in ax.get_lines()} == {"t=1", "t=0.7", "t=0.4", "t=0.1"}
    assert ax.get_yscale() == "log"
    assert len(fig.axes) == 2  # the plot and its colorbar
    colours = {line.get_color() for line in ax.get_lines()}
    assert len(colours) == len(RATIOS)
    line = next(line for line in ax.get_lines() if line.get_label() == "t=0.4")
    assert list(line.get_xdata()) == [10, 20, 30]


def test_figures_do_not_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.loss_by_ratio_figure(make_records())
    plots.training_loss_figure(make_records())
    plots.final_loss_by_ratio_figure(make_records())
    plots.run_summary_figure(make_records())
    assert plt.get_fignums() == before


def test_training_loss_figure():
    ax = plots.training_loss_figure(make_records()).axes[0]
    raw, smooth = ax.get_lines()
    assert len(raw.get_xdata()) == 30
    assert smooth.get_ydata()[-1] > raw.get_ydata()[-1]  # the moving average lags a falling loss


def test_final_loss_by_ratio_uses_latest_eval():
    ax = plots.final_loss_by_ratio_figure(make_records()).axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0.1, 0.4, 0.7, 1.0]
    assert line.get_ydata()[-1] == pytest.approx(1.0 * 6.0 / 3 + 1.0)
    assert "step 30" in ax.get_title()


def test_empty_records_give_a_figure_saying_so():
    for make in (
        plots.loss_by_ratio_figure,
        plots.training_loss_figure,
        plots.final_loss_by_ratio_figure,
    ):
        fig = make([])
        assert "yet" in fig.axes[0].texts[0].get_text()


def test_schedule_figure(schedules):
    names = tuple(schedules.SCHEDULES)
    fig = plots.schedule_figure(names, num_steps=8, num_masked=32)
    left, right = fig.axes
    assert len(left.get_lines()) == len(names)
    fractions = left.get_lines()[0].get_ydata()
    assert fractions[0] == 1.0 and fractions[-1] == 0.0
    assert len(right.patches) == 8 * len(names)
    assert sum(p.get_height() for p in right.patches[:8]) == 32  # every masked token revealed once


def test_schedule_figure_rejects_zero_steps(schedules):
    with pytest.raises(UserError, match="num_steps"):
        plots.schedule_figure(["linear"], num_steps=0, num_masked=4)


def test_save_figure_and_png(tmp_path):
    fig = plots.run_summary_figure(make_records())
    path = plots.save_figure(fig, tmp_path / "sub" / "run.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.figure_png(fig)[:4] == b"\x89PNG"


def _process_texts(fig) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def test_process_figure_draws_every_row_of_both_processes():
    from tdlib.render import MASK_GLYPH

    words = "the old fox finds a red key".split()
    scores = [0.9, 0.1, 0.6, 0.3, 0.8, 0.2, 0.45]
    steps = [[None] * 7, ["a", None, None, "sees", None, None, None], ["a", "dog", "sees", "sees", "it", ".", "he"]]
    fig = plots.process_figure(words, scores, steps)
    assert isinstance(fig, Figure)
    boxes = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "token-box"]
    assert len(boxes) == 7 * (len(plots.PROCESS_RATIOS) + len(steps))
    texts = _process_texts(fig)
    # forward: at t = 0, 0.25, 0.5, 0.75, 1 the scores below t are hidden: 0, 2, 4, 5, 7 glyphs; reverse: 7, 5, 0
    assert texts.count(MASK_GLYPH) == (0 + 2 + 4 + 5 + 7) + (7 + 5 + 0)
    assert any(t.startswith("forward") for t in (ax.get_title(loc="left") for ax in fig.axes))
    assert any(t.startswith("reverse") for t in (ax.get_title(loc="left") for ax in fig.axes))
    bold = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_weight() == "bold"]
    assert sorted(bold) == sorted(["a", "sees", "dog", "sees", "it", ".", "he", "hide tokens", "reveal tokens"])


def test_process_figure_one_step_trajectory_and_bad_inputs():
    fig = plots.process_figure(["she", "sings", "."], [0.5, 0.2, 0.7], [[None, None, None], ["he", "runs", "."]])
    assert "step 1 of 1  (0 hidden)" in _process_texts(fig)
    plots.figure_png(fig)  # draws without error
    with pytest.raises(UserError, match="one mask score per token"):
        plots.process_figure(["a", "b"], [0.5], [[None, None], ["a", "b"]])
    with pytest.raises(UserError, match="at least the initial canvas"):
        plots.process_figure(["a"], [0.5], [[None]])


def test_training_seconds_add_up_the_sessions_of_a_resumed_run():
    records = [{"step": 0, "event": "start"}, {"step": 1, "loss": 3.0, "elapsed_s": 5.0},
               {"step": 2, "loss": 2.0, "elapsed_s": 9.0}, {"step": 2, "event": "stopped"},
               {"step": 2, "event": "resume"}, {"step": 3, "loss": 1.0, "elapsed_s": 4.0}, {"step": 3, "event": "end"}]
    assert runlog.training_seconds(records) == 13.0
    assert runlog.training_seconds(records[:3]) == 9.0
    assert runlog.training_seconds([]) == 0.0
