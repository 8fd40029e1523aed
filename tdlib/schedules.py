"""Unmasking schedules: how many tokens are still masked after each sampling step.

A schedule is a function f(s/S) in [0, 1], the fraction of the generated positions
still masked after step s of S (f(0) = 1, f(1) = 0, non-increasing). With
r = s/S:

- ``linear``:      f(r) = 1 - r                        (the same number revealed every step)
- ``cosine``:      f(r) = cos(pi/2 * r)                (MaskGIT's curvature: few tokens early,
                                                        many late; other codebases call
                                                        1 - sin(pi/2 * r) "cosine", which has
                                                        the opposite curvature)
- ``exponential``: f(r) = (exp(-k r) - exp(-k)) / (1 - exp(-k)),  k = 5
                                                       (many tokens early, few late)

`masked_counts` turns a schedule into whole numbers of masked tokens per step.
`block_plan` splits a canvas into blocks generated left to right (semi-autoregressive)
and the steps between them; `step_targets` gives every step of the plan its masked
count per row. `dilated_plan` says *which* positions each pass reveals so that the
positions of one pass sit far apart (the ``dilated`` strategy; dilated scheduling,
arXiv 2506.19037). This module knows nothing about models or tokens; `tdlib.sample` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tdlib.errors import UserError, require

SCHEDULES = ("linear", "cosine", "exponential")
EXPONENTIAL_K = 5.0  # rate k of the exponential schedule


def fraction_masked(schedule: str, s: int, num_steps: int) -> float:
    """Fraction of generated positions still masked after step ``s`` of ``num_steps``."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise UserError(f"the number of steps must be at least 1, got {num_steps}")
    r = min(max(s / num_steps, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - r
    if schedule == "cosine":
        # MaskGIT: masked = cos(pi/2 * s/S); cos(pi/2) is 6e-17, so pin the end to exactly 0
        return 0.0 if r == 1.0 else math.cos(math.pi / 2 * r)
    k = EXPONENTIAL_K
    return (math.exp(-k * r) - math.exp(-k)) / (1.0 - math.exp(-k))


def masked_counts(schedule: str, num_masked: int, num_steps: int) -> list[int]:
    """Masked-token counts after steps 0..num_steps: starts at ``num_masked``, ends at 0.

    count[s] = round(num_masked * f(s/S)), then adjusted so the counts never increase
    and, when ``num_masked >= num_steps``, every step reveals at least one token (so
    exactly ``num_steps`` forward passes unmask everything). With fewer masked tokens
    than steps some steps reveal nothing.
    """
    if num_masked < 0:
        raise UserError(f"the number of masked tokens must be >= 0, got {num_masked}")
    counts = [num_masked]
    for s in range(1, num_steps + 1):
        target = round(num_masked * fraction_masked(schedule, s, num_steps))
        low = num_steps - s if num_masked >= num_steps else 0  # leave one token per remaining step
        high = counts[-1] - 1 if num_masked >= num_steps else counts[-1]  # reveal >= 1 per step
        counts.append(min(max(target, low), high))
    return counts


def block_plan(
    generated: torch.Tensor, num_steps: int, block_length: int | None
) -> list[tuple[torch.Tensor, int]]:
    """Column masks (L,) of the blocks, left to right, and the number of steps each one gets.

    ``generated`` (B, L) marks the positions to write. Blocks are ``block_length``
    consecutive columns starting at the first generated column of the batch; the
    steps are split as evenly as possible, earlier blocks getting one more when
    they do not divide. Without ``block_length`` the whole canvas is one block.
    """
    length = generated.shape[1]
    columns = torch.arange(length, device=generated.device)
    if block_length is None:
        return [(torch.ones(length, dtype=torch.bool, device=generated.device), num_steps)]
    used = generated.any(0).nonzero()[:, 0]
    first, last = (int(used[0]), int(used[-1])) if len(used) else (0, length - 1)
    num_blocks = (last - first) // block_length + 1
    require(
        num_steps >= num_blocks,
        f"{num_blocks} blocks of {block_length} need at least {num_blocks} steps, got {num_steps}",
    )
    plan = []
    for j in range(num_blocks):
        lo = first + j * block_length
        cols = (columns >= lo) & (columns < lo + block_length)
        if j == 0:
            cols |= columns < first
        if j == num_blocks - 1:
            cols |= columns > last
        plan.append((cols, num_steps // num_blocks + (j < num_steps % num_blocks)))
    return plan


def step_targets(
    generated: torch.Tensor, schedule: str, plan: list[tuple[torch.Tensor, int]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For every step of ``plan``: (active columns (L,), masked count per row wanted after it
    (B,), busiest (B,)), busiest being the most tokens any step of the block reveals in the row.

    The schedule runs per row, so rows with different numbers of masks (infilling) are fine.
    """
    targets = []
    cache: dict[tuple[int, int], list[int]] = {}
    for cols, steps in plan:
        per_row = (generated & cols).sum(1).tolist()  # masked positions of each row in this block
        for n in set(per_row):
            cache.setdefault((n, steps), masked_counts(schedule, n, steps))
        rows = [cache[(n, steps)] for n in per_row]
        table = torch.tensor(rows, device=generated.device)  # (B, S_j + 1)
        busiest = (table[:, :-1] - table[:, 1:]).amax(1)  # (B,)
        targets += [(cols, table[:, s], busiest) for s in range(1, steps + 1)]
    return targets


def coarse_to_fine(n: int) -> list[int]:
    """0..n-1 middle first, then the middles of each half, breadth first: 4 -> [2, 1, 3, 0]."""
    order, queue = [], [(0, n)]
    while queue:
        lo, hi = queue.pop(0)
        if lo < hi:
            mid = (lo + hi) // 2
            order.append(mid)
            queue += [(lo, mid), (mid + 1, hi)]
    return order


def dilated_plan(num_positions: int, num_steps: int, schedule: str = "linear") -> list[list[int]]:
    """Passes whose positions sit far apart: residues mod G, coarse to fine; K sets.

    The rule, for n positions and K passes: G = min(K, n) groups, group r holds
    the positions i with i mod G = r (so its positions sit G apart). Pass t
    reveals ``masked_counts(schedule, n, K)[t-1] - [t]`` positions, the linear
    schedule's sizes, as ``random`` does; with the linear schedule those sizes
    are the group sizes (floor or ceil of n/K), so each pass takes one whole
    group: the first not yet taken, in coarse-to-fine order of residues (the
    middle residue, then the middles of each half, breadth first; see
    `coarse_to_fine`), that has the pass's size. Example, n = 10, K = 3: sizes
    3, 4, 3, groups {0,3,6,9} {1,4,7} {2,5,8}, residue order 1, 0, 2::

        dilated_plan(10, 3) == [[1, 4, 7], [0, 3, 6, 9], [2, 5, 8]]

    K = 1 reveals everything at once; K >= n one position per pass (with K > n
    the schedule leaves some passes empty, and so does the plan: there are
    always K sets, non-empty when K <= n). Another schedule's sizes, which need
    not match the groups, are filled from the residue order read position by
    position.
    """
    counts = masked_counts(schedule, num_positions, num_steps)
    sizes = [a - b for a, b in zip(counts[:-1], counts[1:])]
    groups = max(1, min(num_steps, num_positions))
    classes = [list(range(r, num_positions, groups)) for r in coarse_to_fine(groups)]
    if sorted(sizes) != sorted(len(c) for c in classes if c) + [0] * (num_steps - groups):
        flat = [i for c in classes for i in c]
        return [flat[sum(sizes[:t]): sum(sizes[: t + 1])] for t in range(num_steps)]
    plan = []
    for size in sizes:
        k = next((k for k, c in enumerate(classes) if len(c) == size), None) if size else None
        plan.append(classes.pop(k) if k is not None else [])
    return plan


def dilated_plan_for(positions: Sequence[int] | torch.Tensor, num_steps: int,
                     schedule: str = "linear") -> list[list[int]]:
    """`dilated_plan` over arbitrary generated columns: ``positions[k]`` plays the part of position k.

    For a canvas with a prompt or infill: pass the canvas columns to generate
    (in increasing order), get K lists of columns.
    """
    cols = [int(c) for c in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
    return [[cols[k] for k in s] for s in dilated_plan(len(cols), num_steps, schedule)]
