"""Every exercise of the course can be checked: by a self-check cell in its notebook, or by a worked solution.

The rules, read from the committed notebooks (nothing is executed here; nbval runs the solutions):

- a notebook's exercises are the numbered items under its ``## Exercises`` heading;
- a *self-check* is a code cell after that heading that calls ``check(N, ...)`` (``tdlib.exercises.check``);
- a *worked solution* is a ``## Exercise N`` section of ``notebooks/solutions/<the notebook's name>.ipynb``;
- every exercise has a self-check or a worked solution, every notebook at least two self-checks, every exercise
  says what a correct answer looks like, and every solution answers an exercise that exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tdlib.exercises import check, matches

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
CHECK_CALL = re.compile(r"^\s*(?:assert\s+)?check\(\s*(\d+)\s*,", re.MULTILINE)


def _cells(path: Path) -> list[tuple[str, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"]) for c in cells]


def exercises(name: str) -> dict[int, str]:
    """{number: text} of the numbered items under the notebook's ``## Exercises`` heading."""
    text = next(src for kind, src in _cells(NOTEBOOKS / f"{name}.ipynb") if kind == "markdown" and "## Exercises" in src)
    body = text.split("## Exercises", 1)[1]
    items = re.split(r"^(\d+)\. ", body, flags=re.MULTILINE)[1:]
    return {int(number): item.strip() for number, item in zip(items[::2], items[1::2])}


def self_checks(name: str) -> set[int]:
    """Numbers of the exercises a code cell after the ``## Exercises`` heading checks."""
    cells = _cells(NOTEBOOKS / f"{name}.ipynb")
    start = next(i for i, (kind, src) in enumerate(cells) if kind == "markdown" and "## Exercises" in src)
    return {int(n) for kind, src in cells[start:] if kind == "code" for n in CHECK_CALL.findall(src)}


def solutions(name: str) -> set[int]:
    """Numbers of the exercises the notebook's solutions notebook works out (its ``## Exercise N`` headings)."""
    path = SOLUTIONS / f"{name}.ipynb"
    if not path.exists():
        return set()
    return {int(n) for kind, src in _cells(path) if kind == "markdown"
            for n in re.findall(r"^## Exercise (\d+)\b", src, flags=re.MULTILINE)}


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_a_self_check_or_a_solution(name):
    items = exercises(name)
    assert items, f"{name}: no numbered exercises under '## Exercises'"
    assert sorted(items) == list(range(1, len(items) + 1)), f"{name}: exercises are not numbered 1..n"
    unchecked = sorted(set(items) - self_checks(name) - solutions(name))
    assert not unchecked, f"{name}: exercises {unchecked} have neither a self-check cell nor a worked solution"


@pytest.mark.parametrize("name", NAMES)
def test_every_notebook_has_two_self_checks(name):
    found = self_checks(name)
    assert len(found) >= 2, f"{name}: {len(found)} self-check cells (check(N, ...)); at least two are expected"
    assert found <= set(exercises(name)), f"{name}: a self-check names an exercise that does not exist"


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_says_what_a_correct_answer_looks_like(name):
    checked = self_checks(name)
    vague = [n for n, text in exercises(name).items() if n not in checked and "correct answer" not in text.lower()]
    assert not vague, f"{name}: exercises {vague} say neither what a correct answer looks like nor have a self-check"


@pytest.mark.parametrize("name", NAMES)
def test_solutions_answer_existing_exercises(name):
    assert solutions(name) <= set(exercises(name)), f"solutions/{name}: a solution for an exercise that does not exist"


def test_every_solution_notebook_belongs_to_a_notebook():
    stray = sorted(p.stem for p in SOLUTIONS.glob("*.ipynb") if p.stem not in NAMES)
    assert not stray, f"solutions without a notebook: {stray}"


def test_check_says_right_wrong_and_unanswered(capsys):
    assert check(1, 0.5 + 1e-9, 0.5, tol=1e-6) is True
    assert check(2, 0.6, 0.5, tol=1e-6, hint="look at t") is False
    assert check(3, ..., 0.5) is None

    def blank():
        raise NotImplementedError

    assert check(4, blank, 0.5) is None
    assert check(5, lambda: 1 / 0, 0.5) is False  # a learner's bug is reported, not raised
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Exercise 1: right") and "hint: look at t" in out[1]
    assert "not answered" in out[2] and "not answered" in out[3] and "ZeroDivisionError" in out[4]


def test_matches_compares_by_kind():
    assert matches(torch.tensor([1, 2]), torch.tensor([1, 2])) and not matches(torch.tensor([1, 2]), torch.tensor([1, 3]))
    assert matches(torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.2 + 1e-9]), tol=1e-6)
    assert not matches(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))
    assert matches({"a": [1, 2.0]}, {"a": [1, 2.0 + 1e-12]}, tol=1e-9) and not matches({"a": 1}, {"b": 1})
    assert matches({"x", "y"}, {"y", "x"}) and not matches({"x"}, {"x", "y"})
    assert matches(True, True) and not matches(1, True) and not matches("a", "b")
