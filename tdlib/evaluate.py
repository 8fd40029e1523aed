"""Likelihood side of evaluation: masked loss per ratio and bounds on -log p(x).

Everything for the masked model needs only a *denoiser* (see `tdlib.oracle` and
`tdlib.model.as_denoiser`): a callable ``denoiser(xt, attention_mask) -> logits``
of shape (B, L, V). Three quantities, and the baseline's exact one:

- `loss_by_ratio`: mean masked cross-entropy at fixed mask ratios, with masks
  derived from a seed, so curves are comparable between evaluations and runs;
- `nelbo`: the continuous-time bound (any masking schedule gives the same one),
  estimated without bias, in bits per character of the original text;
- `discrete_bound`: the bound of a model that only ever reveals tokens at K
  fixed ratios, and why it is looser;
- `causal_nll`: the autoregressive baseline's exact -log p(x), in the same
  bits per character.

`scorable` (B, L) bool marks the positions that may be masked and scored: not
special tokens, not padding, not the prefix (`tdlib.masking.protected_positions`
gives the complement). Positions outside it always stay visible.

This module is not about samples: sample metrics (distinct-n, self-BLEU,
MAUVE, ...) live in `tdlib.metrics`. It trains nothing and never moves a model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tdlib.errors import require
from tdlib.masking import IGNORE_INDEX, ORIGINAL_RATIOS, check_ratios

if TYPE_CHECKING:
    from tdlib.data import Examples
    from tdlib.model import Denoiser
    from tdlib.toylang import ToyLanguage

LN2 = math.log(2.0)  # nats per bit


def _check_inputs(x0: torch.Tensor, scorable: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    require(x0.dim() == 2, f"x0 must have shape (B, L), got {tuple(x0.shape)}")
    require(scorable.shape == x0.shape, f"scorable {tuple(scorable.shape)} must match x0 {tuple(x0.shape)}")
    require(scorable.dtype == torch.bool, "scorable must be a bool tensor")
    if attention_mask is not None:
        require(attention_mask.shape == x0.shape, "attention_mask must have the shape of x0")


def _fixed_scores(x0: torch.Tensor, scorable: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform(0, 1) scores per position from `seed`; 2.0 where not scorable, shape (B, L).

    Position i is masked at ratio t iff score_i < t: each scorable token is
    masked with probability t, the masks are nested across ratios, and they do
    not depend on the batch size or on the model being evaluated.
    """
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(x0.shape, generator=g, dtype=torch.float64)  # (B, L)
    return u.masked_fill(~scorable.cpu(), 2.0)


@torch.no_grad()
def _masked_ce(
    denoiser: Denoiser,
    x0: torch.Tensor,
    masked: torch.Tensor,
    mask_id: int,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """-log p(x0_i | xt) at masked positions (0 elsewhere), float64 on CPU, shape (B, L)."""
    xt = x0.masked_fill(masked, mask_id)  # (B, L)
    logits = denoiser(xt, attention_mask)  # (B, L, V)
    on = masked.to(logits.device)
    logp = logits[on].log_softmax(-1)  # (M, V) only masked positions: cheap for big vocabularies
    ce = -logp.gather(-1, x0.to(logits.device)[on][:, None])[:, 0]  # (M,)
    out = torch.zeros(x0.shape, dtype=torch.float64)
    out[masked.cpu()] = ce.double().cpu()
    return out


def _ce_at_ratios(
    denoiser: Denoiser,
    x0: torch.Tensor,
    scorable: torch.Tensor,
    ratios: Sequence[float],
    *,
    mask_id: int,
    seed: int,
    batch_size: int,
    attention_mask: torch.Tensor | None,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of masked CE and masked counts at each ratio, both (N, K)."""
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    scores = _fixed_scores(x0, scorable, seed)  # (N, L)
    n = x0.shape[0]
    ce_sum = torch.zeros(n, len(ratios), dtype=torch.float64)
    count = torch.zeros(n, len(ratios), dtype=torch.long)
    starts = range(0, n, batch_size)
    with tqdm(total=len(ratios) * len(starts), desc=desc, disable=not progress, file=sys.stderr) as bar:
        for j, t in enumerate(ratios):
            for s in starts:
                rows = slice(s, s + batch_size)
                masked = scores[rows] < t  # (b, L) each scorable token with probability t
                am = None if attention_mask is None else attention_mask[rows]
                ce = _masked_ce(denoiser, x0[rows], masked.to(x0.device), mask_id, am)  # (b, L)
                ce_sum[rows, j] = ce.sum(-1)
                count[rows, j] = masked.sum(-1)
                bar.update(1)
    return ce_sum, count


def loss_by_ratio(
    denoiser: Denoiser,
    x0: torch.Tensor,
    scorable: torch.Tensor,
    ratios: Sequence[float] = ORIGINAL_RATIOS,
    *,
    mask_id: int,
    seed: int = 0,
    batch_size: int = 16,
    attention_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> dict[float, float]:
    """Mean masked cross-entropy (nats per masked token) at each mask ratio, with fixed masks.

    Each scorable token is masked with probability t; the masks come from `seed`
    alone (nested across ratios, independent of batch size and model), so two
    calls, two checkpoints or two runs are scored on the very same masks. The
    mean is over all masked tokens of all sequences (token-weighted); a ratio at
    which no token was masked gives nan.
    """
    _check_inputs(x0, scorable, attention_mask)
    ratios = check_ratios(ratios, distinct=True)
    ce_sum, count = _ce_at_ratios(
        denoiser, x0, scorable, ratios, mask_id=mask_id, seed=seed, batch_size=batch_size,
        attention_mask=attention_mask, progress=progress, desc="loss by ratio",
    )
    total, masked = ce_sum.sum(0), count.sum(0)  # (K,)
    return {t: (float(total[j] / masked[j]) if masked[j] > 0 else math.nan) for j, t in enumerate(ratios)}


def _bound_summary(per_sequence: torch.Tensor, variance: float, tokens: int, num_characters: int) -> dict:
    """Common fields of a bound: totals in nats converted to bits/char and per-token units."""
    nats = float(per_sequence.sum())
    nats_per_token = nats / tokens if tokens else math.nan
    return {
        "nelbo_bits_per_char": nats / LN2 / num_characters,
        "nelbo_bits_per_char_stderr": math.sqrt(variance) / LN2 / num_characters,
        "nats_per_token": nats_per_token,
        "perplexity_bound": math.exp(nats_per_token) if tokens else math.nan,
        "nelbo_nats": nats,
        "tokens": tokens,
        "characters": int(num_characters),
        "sequences": int(per_sequence.numel()),
    }


def _across_sequence_variance(per_sequence: torch.Tensor) -> float:
    """Variance of a sum of N independent terms estimated as N times their sample variance."""
    n = per_sequence.numel()
    return float(n * per_sequence.var(unbiased=True)) if n > 1 else math.nan


def _nelbo_draws(scorable: torch.Tensor, n: torch.Tensor, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The NELBO's random draws from ``seed`` alone: k ~ U{1..n} (R, N) and each position's rank (R, N, L).

    Masking the positions of rank < k masks a uniformly random set of size k.
    Everything is drawn up front, so results do not depend on the batch size.
    """
    num_seq, length = scorable.shape
    g = torch.Generator().manual_seed(int(seed))
    k = (torch.rand(draws, num_seq, generator=g, dtype=torch.float64) * n).long() + 1  # (R, N) k ~ U{1..n}
    k = torch.minimum(k, n.clamp(min=1))  # guards the u -> 1 rounding edge; n = 0 rows score nothing
    scores = torch.rand(draws, num_seq, length, generator=g, dtype=torch.float64)  # (R, N, L)
    scores = scores.masked_fill(~scorable.cpu(), math.inf)
    return k, scores.argsort(-1).argsort(-1)  # (R, N), (R, N, L) rank of each position's score in its row


def _nelbo_variance(estimates: torch.Tensor) -> tuple[float, str]:
    """The variance of the NELBO total from its (R, N) estimates, and which kind it is.

    The total is a sum over sequences whose draws are independent, so
    Var(total) = sum_x Var(estimate of x). With
    ``samples_per_sequence`` R > 1 each term is estimated by the sample variance
    across that sequence's R draws divided by R (``stderr_kind`` =
    "monte_carlo"): the Monte Carlo error for this fixed evaluation set, the
    right one for comparing models on the same data. With R = 1 there is no
    within-sequence spread, so we use N times the sample variance of the N
    per-sequence estimates (``stderr_kind`` = "across_sequences"). That spread
    also contains the genuine differences between sequences (length, content),
    so it overstates the Monte Carlo error of this set; it is the standard error
    one would quote if the N sequences were a random sample from the data
    distribution and the quantity of interest were its expectation.
    """
    draws = estimates.shape[0]
    if draws > 1:
        return float((estimates.var(0, unbiased=True) / draws).sum()), "monte_carlo"
    return _across_sequence_variance(estimates.mean(0)), "across_sequences"


def nelbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    scorable: torch.Tensor,
    *,
    mask_id: int,
    num_characters: int,
    samples_per_sequence: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    attention_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> dict:
    """Unbiased estimate of the continuous-time NELBO, in bits per character, with its standard error.

    For a sequence with n scorable tokens and CE_i = -log p(x_i | x without M),

        NELBO(x) = sum_{k=1..n} (1/k) E_{|M|=k} [ sum_{i in M} CE_i ]
                 = n * E_{k ~ U{1..n}} E_{|M|=k} [ (1/k) sum_{i in M} CE_i ].

    Each draw takes k uniformly in 1..n and a uniformly random set M of size k
    (random scores per position, the k smallest are masked), and returns
    ``(n / k) * sum_{i in M} CE_i``: one unbiased sample of NELBO(x) per
    (sequence, draw), one forward pass each.

    Why it bounds -log p(x), and when it is tight: reveal the n tokens one at a
    time in a uniformly random order. When k tokens are still hidden, the hidden
    set is a uniform k-subset and the next revealed token is uniform within it,
    so the expected cost of that step is (1/k) sum_{i in M} CE_i. Summing over
    k = n..1 gives the formula above, which is therefore the expected
    any-order autoregressive loss E_order[-sum log p(x_next | revealed)]. With
    the exact conditionals every order is an exact chain-rule factorisation of
    p(x), so NELBO(x) = -log p(x) for each x (checked on the Markov oracle in
    tests/test_evaluate.py); a learned denoiser is not consistent across orders,
    and the gap is what it pays for that.

    Returns ``nelbo_bits_per_char`` = sum_x NELBO(x) / ln 2 / num_characters
    (characters of the original text, so tokenizers are comparable),
    ``nelbo_bits_per_char_stderr``, ``nats_per_token`` (per scorable token),
    ``perplexity_bound`` = exp(nats_per_token), ``tokens``, ``characters``,
    ``nelbo_nats``, ``sequences``, ``samples_per_sequence`` and ``stderr_kind``
    (`_nelbo_variance` says which standard error is which). Every k and M comes from `seed` alone (not from the model or the batch
    size), so two models scored with one seed see the same masks: their
    difference is less noisy than their two standard errors suggest.
    """
    _check_inputs(x0, scorable, attention_mask)
    require(num_characters > 0, f"num_characters must be positive, got {num_characters}")
    require(samples_per_sequence >= 1, f"samples_per_sequence must be >= 1, got {samples_per_sequence}")
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    draws = int(samples_per_sequence)
    n = scorable.sum(-1).cpu()  # (N,) scorable tokens per sequence
    k, rank = _nelbo_draws(scorable, n, draws, seed)  # (R, N), (R, N, L)
    num_seq = x0.shape[0]
    estimates = torch.zeros(draws, num_seq, dtype=torch.float64)  # (R, N)
    starts = range(0, num_seq, batch_size)
    with tqdm(total=draws * len(starts), desc="nelbo", disable=not progress, file=sys.stderr) as bar:
        for r in range(draws):
            for s in starts:
                rows = slice(s, s + batch_size)
                masked = (rank[r, rows] < k[r, rows, None]) & scorable[rows].cpu()  # (b, L) |M| = k
                am = None if attention_mask is None else attention_mask[rows]
                ce = _masked_ce(denoiser, x0[rows], masked.to(x0.device), mask_id, am)  # (b, L)
                # n/k * sum_{i in M} CE_i is one unbiased sample of NELBO(x)
                estimates[r, rows] = n[rows] / k[r, rows] * ce.sum(-1)
                bar.update(1)
    per_sequence = estimates.mean(0)  # (N,)
    variance, kind = _nelbo_variance(estimates)
    out = _bound_summary(per_sequence, variance, int(n.sum()), num_characters)
    out.update(samples_per_sequence=draws, stderr_kind=kind)
    return out


def discrete_bound(
    denoiser: Denoiser,
    x0: torch.Tensor,
    scorable: torch.Tensor,
    ratios: Sequence[float] = ORIGINAL_RATIOS,
    *,
    mask_id: int,
    num_characters: int,
    seed: int = 0,
    batch_size: int = 16,
    attention_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> dict:
    """The K-level bound of a model that only reveals tokens at the given mask ratios, in bits per char.

    The chain. Levels 1 = t_1 > t_2 > ... > t_K > t_{K+1} = 0 (1.0 is added if
    `ratios` lacks it: generation starts from the all-masked canvas). Forward:
    a token masked at level j stays masked at level j+1 with probability
    t_{j+1}/t_j, so it is masked at level j with probability t_j. Reverse: from
    x_{t_j} each masked token is revealed with probability 1 - t_{j+1}/t_j (the
    forward posterior, which does not depend on the token values), and a
    revealed token takes value v with the denoiser's probability
    p(v | x_{t_j}), independently of the others revealed at the same step.

    The bound. The prior term vanishes (x_{t_1} is all-masked under both), and
    so does the reconstruction term (at t_{K+1} = 0 nothing is hidden), leaving
    one KL per step. The reveal patterns have the same law under both chains,
    so each KL is the expected cross-entropy of the tokens revealed at that step:

        NELBO_K(x) = sum_{j=1..K} (1 - t_{j+1}/t_j) E_{x_{t_j}} [ sum_{i masked in x_{t_j}} CE_i(x_{t_j}) ]

    with t_{K+1} = 0, so the last level has weight 1: every token still masked
    at t_K is revealed in one final step from the state at t_K, and that step
    is part of the bound. The estimate uses one fixed mask per level (the masks
    of `loss_by_ratio` with the same seed), which keeps each term unbiased.

    The gap to the continuous bound (`nelbo`). Writing f(t) = E_{x_t}[sum over
    masked CE], the continuous NELBO is the integral of f(t)/t over t in (0, 1];
    NELBO_K is the Riemann sum sum_j (t_j - t_{j+1}) f(t_j)/t_j, which reads the
    integrand at the noisier end of every interval. The discrete chain reveals
    about (t_j - t_{j+1}) n tokens at once, each from its own marginal given
    x_{t_j}, so it pays for every dependence among tokens revealed together
    (their total correlation), including ~10 % of the tokens revealed in the
    last step of the original experiment's grid (0.1 -> 0). It shrinks to 0 as the grid is
    refined. Even with the exact denoiser the discrete chain is a different
    model p_K, so NELBO_K(x) may fall below -log p(x) for a given x; only its
    average over x ~ p is guaranteed to exceed the entropy (cross-entropy >=
    entropy). On a 3-state Markov chain with 4 tokens (entropy 3.29 nats), the
    average NELBO_K is 4.08 for the grid {1}, 3.67 for {1, .5}, 3.36 for
    {1, .9, ..., .1} and 3.30 for 100 levels; the continuous bound is 3.29.
    For a learned denoiser either bound may come out lower: they bound the
    likelihoods of two different generative models built from the same network.

    Returns the fields of `nelbo` (standard error across sequences, since each
    sequence gets one draw per level) plus ``levels``, ``bits_per_char_by_level``
    (each step's share of the total) and ``loss_by_ratio`` (mean CE per masked
    token at each level, from the same forward passes).
    """
    _check_inputs(x0, scorable, attention_mask)
    require(num_characters > 0, f"num_characters must be positive, got {num_characters}")
    levels = sorted(set(check_ratios(ratios, distinct=True)) | {1.0}, reverse=True)  # 1 = t_1 > ... > t_K
    ce_sum, count = _ce_at_ratios(
        denoiser, x0, scorable, levels, mask_id=mask_id, seed=seed, batch_size=batch_size,
        attention_mask=attention_mask, progress=progress, desc="discrete bound",
    )
    nxt = torch.tensor(levels[1:] + [0.0], dtype=torch.float64)
    weight = 1.0 - nxt / torch.tensor(levels, dtype=torch.float64)  # (K,) 1 - t_{j+1}/t_j, last = 1
    per_sequence = (ce_sum * weight).sum(-1)  # (N,)
    tokens = int(scorable.sum())
    out = _bound_summary(per_sequence, _across_sequence_variance(per_sequence), tokens, num_characters)
    by_level = (ce_sum * weight).sum(0) / LN2 / num_characters  # (K,)
    total, masked = ce_sum.sum(0), count.sum(0)
    out.update(
        stderr_kind="across_sequences",
        levels=levels,
        bits_per_char_by_level={t: float(by_level[j]) for j, t in enumerate(levels)},
        loss_by_ratio={t: (float(total[j] / masked[j]) if masked[j] > 0 else math.nan) for j, t in enumerate(levels)},
    )
    return out


def next_token_labels(x0: torch.Tensor, scorable: torch.Tensor) -> torch.Tensor:
    """Targets for positions 0..L-2: the next token where it is scorable, else -100; shape (B, L-1)."""
    return torch.where(scorable[:, 1:], x0[:, 1:], torch.full_like(x0[:, 1:], IGNORE_INDEX))


@torch.inference_mode()
def causal_nll(model, x0, scorable, *, num_characters: int, attention_mask=None, batch_size: int = 16) -> dict:
    """Exact -log p(x) of the scorable tokens under a causal LM, in bits per character.

    -log p(x) = sum_i -log p(x_i | x_<i), summed over scorable tokens; divided by
    ln 2 and by the characters of the original text, it is comparable with the
    diffusion model's NELBO in bits per character.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for lo in range(0, x0.shape[0], batch_size):
        x = x0[lo : lo + batch_size].to(device)  # (b, L)
        am = None if attention_mask is None else attention_mask[lo : lo + batch_size].to(device)
        keep = scorable[lo : lo + batch_size].to(device)  # (b, L)
        logits = model(input_ids=x, attention_mask=am).logits[:, :-1].float()  # (b, L-1, V)
        labels = next_token_labels(x, keep)  # (b, L-1)
        # sum_i -log p(x_i | x_<i)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        total += float(ce)
        tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return {
        "nll_bits_per_char": total / LN2 / num_characters,
        "nats_per_token": total / max(tokens, 1),
        "perplexity": math.exp(total / max(tokens, 1)),
        "tokens": tokens,
        "characters": int(num_characters),
    }


def bound_against_truth(denoiser: Denoiser, language: ToyLanguage, examples: Examples, *, mask_id: int,
                        samples_per_sequence: int = 4, seed: int = 0, batch_size: int = 64) -> dict:
    """The NELBO of toy-language examples beside their exact NLL under the language, both in bits per char.

    Every content token is scored (no prefix is kept back), so the two numbers
    measure the same sentences and ``ratio`` = NELBO / true NLL is at least 1 up
    to the estimate's noise: by how much the network (and the bound) miss the truth.
    """
    x0, am = examples.input_ids, examples.attention_mask  # (N, L)
    scorable = language.content_mask(x0)  # (N, L) the words, not [CLS]/[SEP]/[PAD]
    bound = nelbo(denoiser, x0, scorable, mask_id=mask_id, num_characters=examples.num_characters,
                  samples_per_sequence=samples_per_sequence, seed=seed, batch_size=batch_size, attention_mask=am)
    truth = language.nll(x0, examples.num_characters)
    return {
        "nelbo_bits_per_char": bound["nelbo_bits_per_char"],
        "nelbo_bits_per_char_stderr": bound["nelbo_bits_per_char_stderr"],
        "true_bits_per_char": truth["bits_per_char"],
        # NELBO / true NLL: 1 for a perfect denoiser
        "ratio": bound["nelbo_bits_per_char"] / truth["bits_per_char"],
        "sequences": len(examples),
    }
