"""Self-checks for the course's exercises: the learner fills in a value or a function, a cell says right or wrong.

A self-check cell in a notebook looks like this::

    def other_cosine(r):
        ...  # your code: the fraction still masked at progress r
        raise NotImplementedError

    check(1, lambda: other_cosine(torch.linspace(0, 1, 5)), expected, tol=1e-6,
          hint="at r = 0 everything is masked, so f(0) = 1")

`check` calls the answer (a value, or a function of no arguments that computes it), compares it with the exact
answer and prints one line: right, not yet (with the hint), or not answered yet. It never raises for a wrong or
missing answer, so a notebook whose exercises are still blank runs top to bottom. It returns True, False or None
(not answered), so a worked solution can ``assert check(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["check", "matches"]


def _unanswered(value: Any) -> bool:
    return value is None or value is Ellipsis


def matches(answer: Any, expected: Any, tol: float = 0.0) -> bool:
    """Whether `answer` equals `expected`: numbers and tensors within `tol` (absolute), containers element by element."""
    if isinstance(expected, torch.Tensor) or isinstance(answer, torch.Tensor):
        a, e = torch.as_tensor(answer), torch.as_tensor(expected)
        if a.shape != e.shape:
            return False
        if e.dtype == torch.bool or not (e.is_floating_point() or a.is_floating_point()):
            return bool(torch.equal(a.to(e.dtype), e))
        return bool(torch.allclose(a.double(), e.double(), rtol=0.0, atol=tol, equal_nan=True))
    if isinstance(expected, bool) or isinstance(answer, bool):
        return isinstance(answer, bool) and isinstance(expected, bool) and answer == expected
    if isinstance(expected, (int, float)) and isinstance(answer, (int, float)):
        if math.isnan(expected) or math.isnan(answer):
            return math.isnan(expected) and math.isnan(answer)
        return abs(answer - expected) <= tol
    if isinstance(expected, Mapping):
        return (isinstance(answer, Mapping) and set(answer) == set(expected)
                and all(matches(answer[k], expected[k], tol) for k in expected))
    if isinstance(expected, (set, frozenset)):
        return set(answer) == expected if isinstance(answer, (set, frozenset, list, tuple)) else False
    if isinstance(expected, (list, tuple)):
        return (isinstance(answer, (list, tuple)) and len(answer) == len(expected)
                and all(matches(a, e, tol) for a, e in zip(answer, expected)))
    return answer == expected


def check(exercise: int | str, answer: Any, expected: Any, *, tol: float = 0.0, hint: str = "") -> bool | None:
    """Print whether the learner's `answer` to `exercise` matches `expected`, and return True, False or None.

    `answer` is a value or a function of no arguments; a function that raises NotImplementedError, or an answer
    that is None or ``...``, counts as not answered yet. Any other exception is reported as a wrong answer with
    its message, so a half-written function does not stop the notebook.
    """
    label = f"Exercise {exercise}"
    try:
        value = answer() if isinstance(answer, Callable) else answer
    except NotImplementedError:
        value = None
    except Exception as error:  # a learner's bug: say what it was, keep the notebook running
        print(f"{label}: not yet, your code raised {type(error).__name__}: {error}" + (f" (hint: {hint})" if hint else ""))
        return False
    if _unanswered(value):
        print(f"{label}: not answered yet (write your answer in this cell, then run it again)")
        return None
    if matches(value, expected, tol):
        print(f"{label}: right" + (f" (within {tol:g})" if tol else ""))
        return True
    print(f"{label}: not yet" + (f"; hint: {hint}" if hint else ""))
    return False
