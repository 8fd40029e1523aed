"""Schedules: formulas, and whole-number counts that end unmasked in exactly S steps."""

from __future__ import annotations

import math

import pytest

from tdlib.errors import UserError
from tdlib.schedules import EXPONENTIAL_K, SCHEDULES, fraction_masked, masked_counts


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("num_masked", [0, 1, 3, 7, 32, 61, 200])
@pytest.mark.parametrize("num_steps", [1, 2, 5, 32])
def test_counts_start_full_end_empty_and_never_increase(schedule, num_masked, num_steps):
    counts = masked_counts(schedule, num_masked, num_steps)
    assert len(counts) == num_steps + 1
    assert counts[0] == num_masked and counts[-1] == 0
    reveals = [counts[s - 1] - counts[s] for s in range(1, num_steps + 1)]
    assert min(reveals) >= 0
    if num_masked >= num_steps:
        assert min(reveals) >= 1  # every forward pass reveals something


def test_formulas():
    s, n = 3, 8
    assert fraction_masked("linear", s, n) == pytest.approx(1 - s / n)
    # MaskGIT's cosine: masked = cos(pi/2 * s/S), slow at first (not 1 - sin)
    assert fraction_masked("cosine", s, n) == pytest.approx(math.cos(math.pi / 2 * s / n))
    k = EXPONENTIAL_K
    expected = (math.exp(-k * s / n) - math.exp(-k)) / (1 - math.exp(-k))
    assert fraction_masked("exponential", s, n) == pytest.approx(expected)
    for schedule in SCHEDULES:
        assert fraction_masked(schedule, 0, n) == 1.0
        assert fraction_masked(schedule, n, n) == 0.0


def test_curvatures_differ_as_documented():
    n = 100
    early = {name: n - masked_counts(name, n, 10)[1] for name in SCHEDULES}
    assert early["cosine"] < early["linear"] < early["exponential"]


def test_counts_follow_the_rounded_formula_when_unconstrained():
    assert masked_counts("linear", 10, 5) == [10, 8, 6, 4, 2, 0]
    assert masked_counts("cosine", 100, 4) == [round(100 * math.cos(math.pi / 8 * s)) for s in range(4)] + [0]


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="linear, cosine, exponential"):
        masked_counts("sigmoid", 10, 4)
    with pytest.raises(UserError, match="at least 1"):
        fraction_masked("linear", 0, 0)
