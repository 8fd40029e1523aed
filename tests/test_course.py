"""tdlib.course: the notebooks find their models in one place and say which one they use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdlib import course
from tdlib.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("runs")
        patch.setenv("TDLIB_RUNS", str(path))
        patch.delenv(course.RUN_ENV, raising=False)
        patch.delenv(course.TEXT_DATA_ENV, raising=False)
        yield path


def test_run_directories_and_commands(runs, monkeypatch):
    assert course.run_dir("toy") == runs / "course-toy"
    assert course.run_dir("text", smoke=True) == runs / "course-text-smoke"
    # relative to the project root (the folder of runs/), where the command is typed and started
    assert course.train_command("text") == ["tdlib", "train", "--preset", "cpu", "--output-dir",
                                            str(Path(runs.name) / "course-text")]
    assert course.shown(runs / "course-toy") == str(Path(runs.name) / "course-toy")
    assert course.shown("/elsewhere/run") == "/elsewhere/run"  # outside the project: as it is
    assert "--max-steps=60" in course.train_command("toy", smoke=True)
    monkeypatch.setenv(course.TEXT_DATA_ENV, "/data/wikitext")
    assert course.train_command("text")[-4:] == ["--dataset", "wikitext-2", "--data-dir", "/data/wikitext"]
    config = course.course_config("text")  # the same run as the command trains
    assert (config.dataset, config.data_dir, config.model_name) == ("wikitext-2", "/data/wikitext", "minilm")
    with pytest.raises(UserError, match="unknown course model"):
        course.run_dir("gpu")


def test_runs_dir_from_the_notebooks_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TDLIB_RUNS", raising=False)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert course.runs_dir() == tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    assert course.runs_dir() == tmp_path / "runs"
    (tmp_path / "notebooks" / "solutions").mkdir()  # the worked solutions share the course's runs
    monkeypatch.chdir(tmp_path / "notebooks" / "solutions")
    assert course.runs_dir() == tmp_path / "runs"


def test_the_toy_model_is_trained_once_then_found(runs, capsys):
    first = course.course_model("toy", smoke=True)
    assert "training it now" in capsys.readouterr().out
    assert first.language is not None and first.config["dataset"] == "toy" and course.has_final_model(first.run_dir)
    again = course.course_model("toy", smoke=True)
    out = capsys.readouterr().out
    assert out.startswith(">>> using the toy course model in") and "60 steps" in out
    assert again.run_dir == first.run_dir
    with pytest.raises(UserError, match="refusing to overwrite"):
        course._fresh(first.run_dir)  # a finished model is never deleted


def test_a_missing_text_model_is_replaced_by_a_stand_in_loudly(runs, capsys):
    stand_in = course.course_model("text")
    out = capsys.readouterr().out
    assert out.startswith("!!! the real-text course model") and "does not exist" in out and "stand-in" in out
    assert stand_in.run_dir == runs / "course-text-smoke" and stand_in.language is None


def test_a_named_run_wins_and_must_be_finished(runs, monkeypatch, tmp_path, capsys):
    named = course.course_model("toy", run=runs / "course-toy-smoke")
    assert "the run you named" in capsys.readouterr().out and named.label == "course-toy-smoke"
    monkeypatch.setenv(course.RUN_ENV, str(tmp_path))
    with pytest.raises(UserError, match="holds no final-model"):
        course.course_model("text")


def test_a_course_model_being_trained_elsewhere_is_waited_for_not_wiped(tmp_path, capsys):
    import subprocess
    import sys
    import time

    from tdlib.checkpoint import run_dir_holder

    run = tmp_path / "course-toy"
    (run / "checkpoint-10").mkdir(parents=True)  # an unfinished run another process is training
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from tdlib.checkpoint import hold_run_dir\n"
        f"with hold_run_dir(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(4)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert f"process {holder.pid} " in run_dir_holder(run)
    start = time.monotonic()
    course._wait_for_trainer(run, poll_s=0.2)
    assert holder.wait(timeout=10) == 0 and time.monotonic() - start > 1  # it waited for the holder to end
    assert f"process {holder.pid}" in capsys.readouterr().out
    assert (run / "checkpoint-10").is_dir()  # nothing of the other process's run was deleted
    assert run_dir_holder(run) is None and run_dir_holder(tmp_path / "nowhere") is None
