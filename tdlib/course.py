"""The course's own helpers: which model a notebook uses, and how a long run is started.

Notebooks 03 to 06 open their models with `course_model`, which looks in one
place and says, in one loud line, which model it found:

- ``"toy"``: the toy language's model that notebook 02 trains (``runs/course-toy``);
  if there is none, it is trained here first (about 4 minutes on 2 cores);
- ``"text"``: the real-text model that notebook 02 starts from a terminal
  (``runs/course-text``, ``tdlib train --preset cpu``); if it is missing or still
  training, a stand-in trained in seconds is used, and the line says so;
- a run the learner names: ``course_model(run="runs/my-gpu-run")``, or the
  ``TDLIB_COURSE_RUN`` environment variable (say a `seed` run copied from a GPU).

With ``smoke=True`` (the notebooks' ``TDLIB_SMOKE=1``) every model is a seconds-long
stand-in in its own directory, so a smoke run never touches a real course model.
Nothing here deletes a finished model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tdlib import runlog
from tdlib.checkpoint import FINAL_MODEL
from tdlib.errors import require

KINDS = ("toy", "text")
RUN_NAMES = {"toy": "course-toy", "text": "course-text"}
COURSE_PRESETS = {"toy": "toy", "text": "cpu"}  # the training preset notebook 02 uses for each kind
TEXT_DATA_ENV = "TDLIB_DATA_DIR"  # a folder with WikiText-2's train/valid/test: real text becomes the original data
RUN_ENV = "TDLIB_COURSE_RUN"  # a run directory the learner names instead of the course models
SMOKE_OVERRIDES = {  # seconds-long stand-ins, one per kind
    "toy": dict(max_steps=60, eval_steps=60, save_steps=60, corpus_size=2000, eval_examples=32),
    "text": dict(),
}


def runs_dir() -> Path:
    """Where course runs live: ``$TDLIB_RUNS``, else ``runs/`` at the project root (``../runs`` from notebooks/,
    ``../../runs`` from notebooks/solutions/)."""
    if os.environ.get("TDLIB_RUNS"):
        return Path(os.environ["TDLIB_RUNS"])
    here = Path.cwd()
    inside = next((folder for folder in (here, *here.parents) if folder.name == "notebooks"), None)
    return inside.parent / "runs" if inside else here / "runs"


def run_dir(kind: str, *, smoke: bool = False) -> Path:
    """The directory of a course model: ``runs/course-toy``, ``runs/course-text`` (``-smoke`` for stand-ins)."""
    require(kind in KINDS, f"unknown course model {kind!r}: use one of {', '.join(KINDS)}")
    return runs_dir() / (RUN_NAMES[kind] + ("-smoke" if smoke else ""))


def shown(path: str | Path) -> str:
    """``path`` as a notebook prints it: relative to the project root (the folder holding `runs_dir`)
    when inside it, ``runs/course-toy``, so a committed output names no folder of the machine that ran it."""
    path, root = Path(path).expanduser().absolute(), runs_dir().absolute().parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def has_final_model(directory: str | Path) -> bool:
    """Whether a run directory holds its final model (`tdlib.runlog.finished` says whether its run has ended)."""
    return (Path(directory) / FINAL_MODEL).is_dir()


def real_text_source() -> dict[str, str]:
    """The fields that switch a real-text run to WikiText-2 from ``$TDLIB_DATA_DIR``; none: the manual (the cpu preset's)."""
    folder = os.environ.get(TEXT_DATA_ENV)
    return {"dataset": "wikitext-2", "data_dir": folder} if folder else {}


def real_text_corpus() -> tuple[str, dict[str, list[str]]]:
    """(name, corpus) of the real text the notebooks show: WikiText-2 from ``$TDLIB_DATA_DIR``, else the manual's prose."""
    from tdlib.data import load_corpus

    source = real_text_source()
    name = source.get("dataset", "pydoc")
    return name, load_corpus(name, source.get("data_dir"))


def _recipe(kind: str, smoke: bool) -> tuple[str, dict]:
    """The preset a course model trains with, and the fields where it differs from that preset."""
    require(kind in KINDS, f"unknown course model {kind!r}: use one of {', '.join(KINDS)}")
    if smoke:
        return ("smoke" if kind == "text" else COURSE_PRESETS[kind]), dict(SMOKE_OVERRIDES[kind])
    return COURSE_PRESETS[kind], (real_text_source() if kind == "text" else {})


def course_config(kind: str = "toy", *, smoke: bool = False, **overrides):
    """The `TrainConfig` of a course model (its seconds-long stand-in with ``smoke``), saving to `run_dir`."""
    from tdlib.train import preset

    name, values = _recipe(kind, smoke)
    return preset(name, output_dir=str(run_dir(kind, smoke=smoke)), **{**values, **overrides})


def train_command(kind: str = "text", *, smoke: bool = False) -> list[str]:
    """The command line notebook 02 runs (and prints) to train a course model, `course_config` as flags.

    The output directory is written relative to the project root (`shown`), where the
    command is meant to be typed and where `start_training` runs it.
    """
    name, values = _recipe(kind, smoke)
    args = ["tdlib", "train", "--preset", name, "--output-dir", shown(run_dir(kind, smoke=smoke))]
    if smoke:
        args += [f"--{key.replace('_', '-')}={value}" for key, value in values.items()
                 if key != "eval_examples"]  # set by the presets only, not a flag
    else:
        args += [arg for key, value in values.items() for arg in (f"--{key.replace('_', '-')}", value)]
    return args


def start_training(kind: str = "text", *, smoke: bool = False) -> subprocess.Popen:
    """Start `train_command` as a separate process, as if typed in a terminal; its output goes to a log file.

    The process outlives the notebook's kernel, so a learner can go on while it
    trains; `tdlib.widgets.LiveLossView.follow` watches its ``metrics.jsonl``.
    """
    directory = run_dir(kind, smoke=smoke)
    directory.parent.mkdir(parents=True, exist_ok=True)
    log = open(directory.parent / f"{directory.name}.log", "w")  # noqa: SIM115 (the child owns it)
    command = [sys.executable, "-m", "tdlib", *train_command(kind, smoke=smoke)[1:]]
    root = runs_dir().absolute().parent  # the project root, where `shown` paths start
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)


@dataclass
class CourseModel:
    """A model the notebooks use, with where it came from."""

    model: object
    tokenizer: object
    run_dir: Path
    config: dict  # the training configuration, as the run recorded it
    note: str  # the one line `course_model` printed
    language: object | None = field(default=None, repr=False)  # the ToyLanguage, for a toy model

    @property
    def label(self) -> str:
        """A short name for legends: the run directory's name."""
        return self.run_dir.name


def course_model(kind: str = "toy", *, run: str | Path | None = None, smoke: bool = False) -> CourseModel:
    """Open a course model (see the module docstring), training a stand-in if needed; prints which one it is."""
    from tdlib.train import train

    named = run if run is not None else os.environ.get(RUN_ENV)
    if named:
        directory = Path(named).expanduser()
        require(has_final_model(directory), f"{directory} holds no {FINAL_MODEL}/: name a finished run directory")
        return _open(directory, f"using the run you named: {shown(directory)}")
    directory = run_dir(kind, smoke=smoke)
    if has_final_model(directory):
        return _open(directory, f"using the {kind} course model in {shown(directory)}")
    if kind == "toy" or smoke:  # trained here when missing: never over a run another process is training
        _wait_for_trainer(directory)
        if has_final_model(directory):
            return _open(directory, f"using the {kind} course model in {shown(directory)}")
        minutes = "seconds" if smoke else "about 4 minutes on 2 cores"
        print(f">>> no {kind} course model in {shown(directory)}: training it now ({minutes})", flush=True)
        _fresh(directory)
        train(course_config(kind, smoke=smoke), progress=not smoke)
        return _open(directory, f"using the {kind} course model just trained in {shown(directory)}")
    stand_in = run_dir("text", smoke=True)
    state = "is still training" if (directory / runlog.METRICS_FILE).is_file() else "does not exist"
    if not has_final_model(stand_in):
        _fresh(stand_in)
        train(course_config("text", smoke=True), progress=False)
    return _open(stand_in, f"the real-text course model {shown(directory)} {state} (notebook 02 starts it: "
                           f"{' '.join(train_command('text'))}); using a stand-in trained for seconds, from "
                           f"{shown(stand_in)}: expect noise, not text", warn=True)


def _wait_for_trainer(directory: Path, poll_s: float = 5.0) -> None:
    """If another process is training in ``directory`` (another notebook, a terminal), wait for it to end,
    with one line saying so, instead of clearing its run and starting over."""
    from tdlib.checkpoint import run_dir_holder

    holder = run_dir_holder(directory)
    if holder is None:
        return
    print(f">>> {holder} is training in {shown(directory)}; waiting for it to finish", flush=True)
    while run_dir_holder(directory) is not None:
        time.sleep(poll_s)


def _fresh(directory: Path) -> None:
    """Clear an unfinished run directory (never a finished one) so a new run can start there."""
    import shutil

    require(not has_final_model(directory), f"{directory} holds a finished model; refusing to overwrite it")
    shutil.rmtree(directory, ignore_errors=True)


def _open(directory: Path, note: str, *, warn: bool = False) -> CourseModel:
    """Load a run's final model and print ``note`` with its recipe, flagged ``!!!`` when ``warn``, else ``>>>``."""
    from tdlib.checkpoint import training_config
    from tdlib.model import load_checkpoint

    model, tokenizer = load_checkpoint(directory / FINAL_MODEL)  # in eval mode
    config = training_config(directory / FINAL_MODEL)
    language = None
    if config.get("dataset") == "toy":
        from tdlib.toylang import ToyLanguage

        language = ToyLanguage()
    steps = _steps_trained(directory)
    note = f"{note} ({config.get('model_name')}, {config.get('dataset')}, {steps} steps)"
    print(("!!! " if warn else ">>> ") + note, flush=True)
    return CourseModel(model, tokenizer, directory, config, note, language)


def _steps_trained(directory: Path) -> int | str:
    """The step at which the final model was saved: the last end-of-run record (a resumed run may be writing more)."""
    if not (directory / runlog.METRICS_FILE).is_file():
        return "?"
    records = runlog.read_metrics(directory)
    ends = [r["step"] for r in runlog.events(records, runlog.FINAL_EVENTS)]
    steps = [r["step"] for r in runlog.train_records(records)]
    return ends[-1] if ends else max(steps) if steps else "?"
