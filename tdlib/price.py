"""The price of parallel decoding, exactly: what revealing several words in one pass costs.

A sampler with an exact denoiser and a reveal plan fixed in advance (disjoint
position sets S_1..S_K, revealed in that order) draws every position of S_t
independently from its own exact conditional p(x_i | x_{S_<t}). Its
distribution q differs from the language p by

    KL(p || q) = E_{x~p} sum_t [ log p(x_{S_t} | x_{S_<t}) - sum_{i in S_t} log p(x_i | x_{S_<t}) ],

the total correlation of the words revealed together, pass by pass. On a hidden
Markov model every term is exact: log p(x_{S_t} | x_{S_<t}) is the difference of
two forward passes with the hidden positions summed out, and the single-word
conditionals are the exact denoiser's output. One position per pass costs
nothing, in any order; all positions in one pass cost the whole dependence.

- `parallel_price`: that KL per token in bits, for a fixed plan or a plan drawn
  per sample (``random`` order: `random_plan`), by Monte Carlo over draws of the
  language or exactly by enumeration on tiny models;
- the plans it prices: `random_plan` here, and `tdlib.schedules.dilated_plan`
  (passes of positions about K apart, as the sampler's ``dilated`` strategy reveals them);
- `pair_information` / `information_by_distance`: the exact mutual information
  of two positions given the visible ones, and how it fades with distance;
- `first_clash` / `possible_share`: when a sampler's canvas became impossible.

A `tdlib.toylang.ToyLanguage` is read as its HMM over the words of a canvas
drawn from the start state (the course's canvas of 46 words between [CLS] and
[SEP]); positions index those words. Only `first_clash` and `possible_share`
take tokenized canvases with their frame. Nothing here imports matplotlib (the
figures are in `tdlib.price_plots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tdlib.oracle import HiddenMarkovModel
from tdlib.schedules import masked_counts

LOG2 = math.log(2.0)

PlanLike = Sequence[Sequence[int]] | torch.Tensor


@dataclass
class PlanPrice:
    """The exact KL(p || q) of a reveal plan, per token in bits, and its terms pass by pass."""

    bits_per_token: float  # E_x sum_t term_t / L, bits
    stderr: float  # its standard error over the draws (0 when exact)
    step_bits: torch.Tensor  # (K,) mean term of pass t over the draws, bits (whole canvas, not per token)
    step_stderr: torch.Tensor  # (K,) standard errors of step_bits
    num_samples: int  # draws from the language (0 when exact)
    num_tokens: int  # generated positions L
    exact: bool  # True: the expectation is a sum over every sequence, not a mean over draws


def _hmm(language) -> HiddenMarkovModel:
    """The HMM of a `HiddenMarkovModel` or of a `ToyLanguage` (its ``hmm``)."""
    return language if isinstance(language, HiddenMarkovModel) else language.hmm


def plan_steps(plan: PlanLike, length: int | None = None) -> torch.Tensor:
    """A plan as the 1-based pass of each position, LongTensor (L,).

    ``plan`` is a list of K index collections (pass t reveals ``plan[t-1]``; an
    empty one is a pass that reveals nothing) or already a LongTensor (L,) of
    passes 1..K. Every position 0..L-1 must be revealed exactly once.
    """
    if isinstance(plan, torch.Tensor):
        steps = plan.long().flatten()
        if length is not None and steps.numel() != length:
            raise ValueError(f"the plan has {steps.numel()} positions, expected {length}")
        if steps.numel() and int(steps.min()) < 1:
            raise ValueError("pass numbers start at 1")
        return steps
    sets = [[int(i) for i in (s.tolist() if isinstance(s, torch.Tensor) else s)] for s in plan]
    flat = [i for s in sets for i in s]
    n = len(flat) if length is None else int(length)
    if sorted(flat) != list(range(n)):
        raise ValueError(f"the plan must reveal each of the positions 0..{n - 1} exactly once")
    steps = torch.zeros(n, dtype=torch.long)
    for t, s in enumerate(sets, start=1):
        steps[s] = t
    return steps


def random_plan(num_positions: int, num_steps: int, generator: torch.Generator | None = None,
                schedule: str = "linear") -> list[list[int]]:
    """One plan of the ``random`` order: a uniformly random subset per pass, sizes from ``masked_counts``.

    Use ``lambda g: random_plan(46, 12, g)`` as the plan of `parallel_price` to
    draw a new one for every sample, as the sampler does.
    """
    counts = masked_counts(schedule, num_positions, num_steps)
    order = torch.randperm(num_positions, generator=generator).tolist()
    return [sorted(order[num_positions - a: num_positions - b]) for a, b in zip(counts[:-1], counts[1:])]


# ---- the price of a plan ------------------------------------------------------------------


def _step_terms(hmm: HiddenMarkovModel, x: torch.Tensor, steps: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Per-draw terms (B, K) in nats: log p(x_{S_t} | x_{S_<t}) - sum_{i in S_t} log p(x_i | x_{S_<t}).

    ``x`` (B, L) are possible sequences, ``steps`` (B, L) the pass of each position (1..K).
    """
    terms = torch.zeros(x.shape[0], num_steps, dtype=torch.float64)  # (B, K)
    before = torch.zeros(x.shape[0], dtype=torch.float64)  # log p(x_{S_<t}); the empty canvas has log p = 0
    for t in range(1, num_steps + 1):
        now = steps == t  # (B, L)
        if not now.any():
            continue
        seen = torch.where(steps < t, x, hmm.mask_id)  # (B, L) the canvas before pass t
        # the sampler's draw: each position of S_t from its own exact conditional
        single = hmm.marginals(seen).gather(-1, x[..., None])[..., 0].log()  # (B, L)
        singles = torch.where(now, single, torch.zeros_like(single)).sum(-1)  # (B,)
        after = hmm.log_prob(torch.where(steps <= t, x, hmm.mask_id))  # (B,) log p(x_{S_<=t})
        terms[:, t - 1] = after - before - singles
        before = after
    return terms


def _draw_steps(plan, num: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """The pass of every position for ``num`` draws, (num, L): one fixed plan, or a new one per draw."""
    if callable(plan):
        return torch.stack([plan_steps(plan(generator), length) for _ in range(num)])
    return plan_steps(plan, length).expand(num, -1)


def parallel_price(
    language,
    plan: PlanLike | Callable[[torch.Generator], PlanLike],
    *,
    length: int | None = None,
    num_samples: int = 200,
    seed: int = 0,
    exact: bool = False,
    batch_size: int = 512,
) -> PlanPrice:
    """The exact KL(p || q) per token, in bits, of the sampler that reveals by ``plan`` with an exact denoiser.

    ``language``: a `HiddenMarkovModel` or a `ToyLanguage`; the canvas is ``length``
    tokens drawn from the start state (no end), all generated. ``plan``: K index
    collections, a LongTensor (L,) of passes 1..K, or a callable ``(generator) ->
    plan`` called once per draw (e.g. ``lambda g: random_plan(46, 12, g)``); then
    the result is the mean KL over the plans, E_plan KL(p || q_plan), which is the
    KL between the joint laws of (plan, text) and bounds the KL of the mixture.
    ``length`` defaults to the fixed plan's size and is needed with a callable.

    Monte Carlo: the expectation over x ~ p is a mean over ``num_samples`` draws
    from the language's own sampler (``seed``; the plans use the same generator),
    each term computed exactly. ``exact=True`` (a fixed plan on a tiny model)
    sums over all V**L sequences weighted by p(x) instead.
    """
    hmm = _hmm(language)
    if length is None:
        if callable(plan):
            raise ValueError("give the length of the canvas with a plan drawn per sample")
        length = int(plan_steps(plan).numel())
    generator = torch.Generator().manual_seed(int(seed))
    if exact:
        if callable(plan):
            raise ValueError("exact=True needs a fixed plan")
        x = hmm.all_sequences(length)  # (V**L, L)
        weights = hmm.log_prob(x).exp()  # (V**L,) p(x)
        x, weights = x[weights > 0], weights[weights > 0]
    else:
        x = hmm.sample(num_samples, length, generator)  # (N, L)
        weights = torch.full((num_samples,), 1.0 / num_samples, dtype=torch.float64)
    steps = _draw_steps(plan, x.shape[0], length, generator)  # (N, L)
    num_steps = int(steps.max()) if steps.numel() else 0
    terms = torch.cat([_step_terms(hmm, x[i: i + batch_size], steps[i: i + batch_size], num_steps)
                       for i in range(0, x.shape[0], batch_size)]) / LOG2  # (N, K) bits
    step_bits = weights @ terms  # (K,)
    total = terms.sum(-1)  # (N,)
    if exact:
        zero = torch.zeros_like(step_bits)
        return PlanPrice(float(total @ weights) / length, 0.0, step_bits, zero, 0, length, True)
    root = math.sqrt(num_samples)
    step_se = terms.std(0) / root if num_samples > 1 else torch.full_like(step_bits, math.nan)
    se = float(total.std() / root) / length if num_samples > 1 else math.nan
    return PlanPrice(float(total.mean()) / length, se, step_bits, step_se, num_samples, length, False)


# ---- dependence between two positions -----------------------------------------------------


def _mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """I(a; b) in bits of normalised joint tables (P, V, V), shape (P,)."""
    plogp = torch.special.xlogy  # p log p, 0 at p = 0
    # I = H(a) + H(b) - H(a, b) = sum p(a,b) log p(a,b) - sum p(a) log p(a) - sum p(b) log p(b)
    nats = plogp(joint, joint).sum((-1, -2))
    for pa in (joint.sum(-1), joint.sum(-2)):
        nats = nats - plogp(pa, pa).sum(-1)
    return (nats / LOG2).clamp_min(0.0)  # rounding can leave -1e-16 where the truth is 0


def _pairs(canvas, i, j) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Size]:
    """Canvas rows (P, L) and positions (P,), (P,) of every pair, broadcast together, and their shape."""
    canvas = torch.as_tensor(canvas).long()
    i, j = torch.as_tensor(i).long(), torch.as_tensor(j).long()
    shape = torch.broadcast_shapes(canvas.shape[:-1], i.shape, j.shape)
    rows = canvas.expand(*shape, canvas.shape[-1]).reshape(-1, canvas.shape[-1])
    return rows, i.expand(shape).reshape(-1), j.expand(shape).reshape(-1), shape


def pair_joint(hmm_or_language, canvas: torch.Tensor, i, j) -> torch.Tensor:
    """p(x_i = a, x_j = b | the other visible tokens), tables (P, V, V) for pairs i < j, float64.

    ``canvas`` (L,) or (B, L) holds tokens or the mask id; ``i`` and ``j`` are ints
    or LongTensors, broadcast with the canvas rows into P pairs (flattened). The
    tokens at i and j themselves are summed out. With alpha_i the forward
    message at i, beta_j the backward message at j, A the transition, E the
    emission and D_k the evidence of position k, the joint is proportional to
    E^T diag(alpha_i) A D_i+1 A ... D_j-1 A diag(beta_j) E.
    """
    hmm = _hmm(hmm_or_language)
    canvas, i, j, _ = _pairs(canvas, i, j)
    if bool((i >= j).any()):
        raise ValueError("pair_joint needs i < j")
    canvas, rows = canvas.clone(), torch.arange(canvas.shape[0])
    canvas[rows, i] = hmm.mask_id  # sum x_i and x_j out
    canvas[rows, j] = hmm.mask_id
    alpha, _ = hmm.forward(canvas)  # (P, L, S)
    beta = hmm.backward(canvas)  # (P, L, S)
    evidence = hmm.evidence(canvas)  # (P, L, S)
    span = hmm.transition.expand(canvas.shape[0], -1, -1).clone()  # (P, S, S) from i to i+1
    for k in range(1, int((j - i).max())):
        inside = (i + k < j)[:, None, None]  # (P, 1, 1) pairs still short of j
        ev = evidence[rows, (i + k).clamp(max=canvas.shape[1] - 1)]  # (P, S)
        step = (span * ev[:, None, :]) @ hmm.transition  # (P, S, S)
        step = step / step.sum((-1, -2), keepdim=True).clamp_min(1e-300)  # a constant: the joint is normalised
        span = torch.where(inside, step, span)
    left = hmm.emission.T[None] * alpha[rows, i][:, None, :]  # (P, V, S) E^T diag(alpha_i)
    right = beta[rows, j][:, :, None] * hmm.emission[None]  # (P, S, V) diag(beta_j) E
    joint = left @ span @ right  # (P, V, V)
    return joint / joint.sum((-1, -2), keepdim=True).clamp_min(1e-300)


def pair_information(hmm_or_language, visible_canvas: torch.Tensor, i, j) -> torch.Tensor:
    """Exact I(x_i; x_j | visible tokens) in bits, float64, of the broadcast shape of canvas rows, i and j.

    Symmetric in i and j, which must differ. A visible position (not the mask
    id) is known, so its information with anything is 0. ``visible_canvas``:
    (L,) or (B, L) token ids or the mask id; for a `ToyLanguage`, word ids and
    its ``mask_id``, positions indexing words (no [CLS]).
    """
    hmm = _hmm(hmm_or_language)
    canvas, i, j, shape = _pairs(visible_canvas, i, j)
    if bool((i == j).any()):
        raise ValueError("pair_information needs two different positions")
    lo, hi = torch.minimum(i, j), torch.maximum(i, j)
    info = _mutual_information(pair_joint(hmm, canvas, lo, hi))  # (P,)
    rows = torch.arange(canvas.shape[0])
    known = (canvas[rows, lo] != hmm.mask_id) | (canvas[rows, hi] != hmm.mask_id)  # (P,)
    return torch.where(known, torch.zeros_like(info), info).reshape(shape)


def information_by_distance(language, length: int, max_distance: int, position: int | None = None) -> torch.Tensor:
    """I(x_i; x_i+d) in bits on the empty canvas of ``length``, for d = 1..max_distance, shape (max_distance,).

    Averaged over every i with i + d < length, or at ``position`` alone. In an
    HMM the dependence fades with distance (geometrically, at the rate of the
    transition matrix's second eigenvalue), so words far apart can be revealed
    in one pass almost for free.
    """
    hmm = _hmm(language)
    empty = torch.full((length,), hmm.mask_id, dtype=torch.long)
    out = torch.zeros(max_distance, dtype=torch.float64)
    for d in range(1, max_distance + 1):
        starts = torch.arange(length - d) if position is None else torch.tensor([position])
        if starts.numel() == 0 or int(starts.max()) + d >= length:
            out[d - 1] = math.nan
            continue
        out[d - 1] = pair_information(hmm, empty, starts, starts + d).mean()
    return out


# ---- when a sampler's canvas became impossible --------------------------------------------


def _possible(language, canvases: torch.Tensor, mask_id: int | None) -> torch.Tensor:
    """Whether each canvas (B, L) is possible: a `ToyLanguage` reads its frame, an HMM the plain canvas."""
    hmm = _hmm(language)
    if mask_id is not None and mask_id != hmm.mask_id:
        canvases = torch.where(canvases == mask_id, hmm.mask_id, canvases)
    return hmm.possible(canvases) if isinstance(language, HiddenMarkovModel) else language.possible(canvases)


def first_clash(trajectory_tokens: torch.Tensor, language, mask_id: int | None = None) -> torch.Tensor:
    """The first pass after which each canvas was impossible, LongTensor (B,): 0 = never.

    ``trajectory_tokens`` (S+1, B, L): the canvases before any pass and after
    each (`tdlib.sample.Trajectory.tokens`). Value s in 1..S: the canvas after
    pass s is the first whose visible tokens the language cannot produce
    together (p = 0); 0: every canvas stayed possible; -1: impossible from the
    start (the given tokens). ``mask_id`` (default the language's) marks hidden
    positions. A `ToyLanguage` reads tokenized canvases ([CLS] words [SEP]
    [PAD]...), an HMM plain ones.
    """
    steps, batch, length = trajectory_tokens.shape
    ok = _possible(language, trajectory_tokens.reshape(steps * batch, length), mask_id).view(steps, batch)
    bad = ~ok  # (S+1, B)
    first = bad.long().argmax(0)  # (B,) first impossible canvas
    return torch.where(bad.any(0), torch.where(first == 0, -1, first), 0)


def possible_share(tokens: torch.Tensor, language, mask_id: int | None = None) -> float:
    """Share of canvases the language can produce: final canvases (B, L), or the last of a trajectory (S+1, B, L)."""
    final = tokens[-1] if tokens.dim() == 3 else tokens
    return float(_possible(language, final, mask_id).double().mean())
