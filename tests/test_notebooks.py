"""The committed course notebooks are executed, clean and shaped like a lesson.

These tests read the .ipynb files only (they run nothing): `pytest notebooks
--nbval-lax` executes them. Here we check what a reader sees on GitHub or in
JupyterLab before running anything: outputs (with at least one picture),
execution counts in order, no saved widget state, the `python3` kernel, the
five headings every notebook shares, and the single smoke switch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_masking", "02_training", "03_schedules", "04_sampling", "05_parallel_decoding", "06_evaluation"]
HEADINGS = ["## Goal", "## Run", "## Look", "## What we saw", "## Exercises"]
SMOKE_LINE = 'SMOKE = os.environ.get("TDLIB_SMOKE") == "1"'


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _code(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_notebook_is_committed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_outputs_present_with_a_picture(name):
    cells = _code(_load(name))
    outputs = [o for c in cells for o in c["outputs"]]
    assert any(c["outputs"] for c in cells), f"{name} has no outputs: execute it before committing"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} has no image/png output"
    errors = [o.get("ename") for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{name} was committed with errors: {errors}"


@pytest.mark.parametrize("name", NAMES)
def test_execution_counts_in_order(name):
    counts = [c["execution_count"] for c in _code(_load(name))]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: execute top to bottom in a fresh kernel ({counts})"


@pytest.mark.parametrize("name", NAMES)
def test_no_widget_state_and_python3_kernel(name):
    nb = _load(name)
    assert "widgets" not in nb["metadata"], f"{name}: strip metadata.widgets after executing"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_lesson_headings(name):
    lines = {line.strip() for c in _load(name)["cells"] if c["cell_type"] == "markdown"
             for line in _source(c).splitlines()}
    missing = [h for h in HEADINGS if h not in lines]
    assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_one_smoke_switch_at_the_top(name):
    cells = _code(_load(name))
    assert SMOKE_LINE in _source(cells[0]), f"{name}: the first code cell must set the smoke switch"
    assert sum(_source(c).count("TDLIB_SMOKE") for c in cells) == 1, f"{name}: read TDLIB_SMOKE once"


@pytest.mark.parametrize("name", NAMES)
def test_checked_outputs_are_deterministic_cells_only(name):
    for cell in _code(_load(name)):
        if "# NBVAL_CHECK_OUTPUT" in _source(cell):
            assert "generate(" not in _source(cell) and "train(" not in _source(cell), (
                f"{name}: only deterministic cells may be output-checked"
            )


DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")  # 0.25, 4.184, 95.3 (not the 2 of "x2", not versions)


def _printed_text(nb: dict) -> str:
    """Everything a notebook's outputs show as text: streams, plain text and HTML."""
    parts = []
    for cell in _code(nb):
        for output in cell["outputs"]:
            parts.append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(kind, "")
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _what_we_saw(nb: dict) -> str:
    """The markdown from the "## What we saw" heading to the next second-level heading."""
    text = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    start = text.index("## What we saw")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _strip_math_and_code(markdown: str) -> str:
    """Formulas and code are definitions, not measurements: drop $...$ and `...` spans."""
    return re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", " ", markdown, flags=re.S)


def _unprinted(nb: dict) -> list[str]:
    """Decimal numbers "What we saw" quotes that no output prints as a whole number (1.5 is not in 1.545)."""
    printed = _printed_text(nb)
    quoted = DECIMAL.findall(_strip_math_and_code(_what_we_saw(nb)))
    return sorted({n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", printed)})


@pytest.mark.parametrize("name", NAMES)
def test_what_we_saw_quotes_only_numbers_the_outputs_print(name):
    missing = _unprinted(_load(name))
    assert not missing, f"{name}: 'What we saw' quotes {missing}, which no output of the notebook prints"


def test_the_guard_catches_a_number_no_output_prints():
    nb = {"cells": [
        {"cell_type": "code", "source": "print(1)", "outputs": [{"output_type": "stream", "text": "bound 1.496\n"}]},
        {"cell_type": "markdown", "source": "## What we saw\n\nThe bound was 1.545, then 1.49; 1.496 is printed, "
                                            "not $0.5$ or `x = 2.5`.\n## Exercises"},
    ]}
    assert _unprinted(nb) == ["1.49", "1.545"]


MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|mnt|var|opt)/")  # a folder of the machine that ran it


@pytest.mark.parametrize("name", NAMES)
def test_outputs_print_no_path_of_the_machine_that_ran_them(name):
    found = []
    for number, cell in enumerate(_load(name)["cells"]):
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [output.get("data", {}).get("text/plain", "")]
            text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
            found += [f"cell {number}: {line.strip()}" for line in text.splitlines() if MACHINE_PATH.search(line)]
    assert not found, f"{name} prints absolute paths (print them relative to the project, course.shown): {found[:3]}"


def test_the_path_check_catches_one():
    assert MACHINE_PATH.search(">>> using the toy course model in /work/main/runs/course-toy")
    assert not MACHINE_PATH.search(">>> using the toy course model in runs/course-toy")
