"""The metrics log of a run: one writer, one reader, and one answer to "has the run ended"."""

from __future__ import annotations

import os
import signal

import pytest

from tdlib.cli import main


def smoke(out, **overrides):
    from tdlib.train import preset

    return preset("smoke", output_dir=str(out), **{"max_steps": 6, "eval_steps": 6, "save_steps": 100, **overrides})


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A run stopped by SIGTERM after two steps: it writes `stopped` and never `end`."""
    from tdlib.train import train

    out = tmp_path_factory.mktemp("runlog") / "sigterm"

    def term_at_step_2(record):
        if record.get("step") == 2 and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler turns it into a stop

    result = train(smoke(out), progress=False, callbacks=[term_at_step_2])
    assert result.stopped_early and result.final_model is None
    return out


def test_a_run_stopped_by_sigterm_has_ended(sigterm_run):
    from tdlib import runlog

    records = runlog.read_metrics(sigterm_run)
    events = [r["event"] for r in records if "event" in r]
    assert events[0] == runlog.START and events[-1] == runlog.STOPPED and runlog.END not in events
    assert runlog.finished(records)
    assert not runlog.finished(records[:-1])


def test_monitor_follow_returns_on_a_run_stopped_by_sigterm(sigterm_run, monkeypatch, capsys):
    import tdlib.cli.monitor as monitor

    def no_more_waiting(seconds):
        raise AssertionError("monitor --follow kept waiting on a run that has ended")

    monkeypatch.setattr(monitor.time, "sleep", no_more_waiting)
    assert main(["monitor", str(sigterm_run), "--follow", "--interval", "0.01"]) == 0
    assert "step 2" in capsys.readouterr().out


def test_reading_a_run_needs_no_matplotlib():
    import subprocess
    import sys

    code = ("import sys, tdlib.course, tdlib.cli.monitor, tdlib.runlog; "
            "assert 'matplotlib' not in sys.modules and 'tdlib.plots' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_resumed_run_is_going_again_and_the_final_events_end_it():
    from tdlib import runlog

    start, stopped = {"step": 0, "event": runlog.START}, {"step": 3, "event": runlog.STOPPED}
    resume, end = {"step": 3, "event": runlog.RESUME}, {"step": 6, "event": runlog.END}
    train = {"step": 4, "loss": 1.0}
    assert not runlog.finished([]) and not runlog.finished([start, train])
    assert runlog.finished([start, stopped]) and not runlog.finished([start, stopped, resume, train])
    assert runlog.finished([start, stopped, resume, train, end])
    assert runlog.finished([start, {"step": 2, "event": runlog.INTERRUPTED}])


def test_a_stop_at_the_clock_budget_does_not_end_the_run_but_a_sigterm_stop_does():
    from tdlib.runlog import BUDGET_REASON, finished

    going = [{"step": 0, "event": "start"}, {"step": 5, "event": "stopped", "reason": BUDGET_REASON}]
    assert not finished(going)  # its final evaluation and `end` are still to come
    assert finished([*going, {"step": 5, "event": "end"}])
    assert finished([{"step": 0, "event": "start"}, {"step": 3, "event": "stopped", "reason": "SIGTERM"}])
