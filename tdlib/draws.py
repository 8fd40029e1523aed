"""Draws and filters: from log-probabilities to one token per row.

Everything the sampler does to one distribution lives here, on plain tensors
(N rows of a vocabulary of V), with no canvas and no model:

- `log_probs`: log p_T = log_softmax(logits / T), the distribution at temperature T;
- `filter_log_probs`: the one filter of the three `SAMPLINGS` (greedy, top-k,
  nucleus); every draw goes through it, and so does the sampling explorer
  (`tdlib.tables.kept_distribution`);
- `uniforms` and `categorical`: exact inverse-CDF draws in float64, one uniform
  per row from an explicit generator (no Gumbel noise), so a seed fixes the tokens;
- `draw`: the three together, one token per row;
- `entropy`: H = -sum_v p(v) log p(v) per row.

Fast path: `_topk` is ``torch.topk`` over chunks of the vocabulary, faster for
k << V (`tests/test_strategies.py` holds the two equal). Which positions to draw
at is `tdlib.strategies`' business.
"""

from __future__ import annotations

import torch

SAMPLINGS = ("greedy", "topk", "nucleus")


def log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities (N, V) of ``logits`` (N, V) at temperature T: log_softmax(logits / T)."""
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p(v) log p(v) per row of ``logp`` (N, V); a banned token (p = 0) adds 0.

    One dot product per row instead of an elementwise p log p and a sum: a third
    of the time at 30k tokens.
    """
    return -torch.linalg.vecdot(logp.exp(), logp.clamp(min=torch.finfo(logp.dtype).min))


def uniforms(
    n: int, sampling: str, generator: torch.Generator | None, device
) -> torch.Tensor | None:
    """The uniforms (n, 1) for drawing n rows, float64; greedy draws none."""
    if sampling == "greedy":
        return None
    return torch.rand(n, 1, dtype=torch.float64, generator=generator, device=device)


def categorical(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``weights`` (N, K) >= 0, drawn exactly by inverse CDF in float64.

    ``u`` (N, 1) holds one uniform in [0, 1) per row (`uniforms`).
    """
    cdf = weights.double().cumsum(-1)  # (N, K)
    # the first index whose cumulative weight exceeds u * total; zero weights are never chosen
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return index.clamp_(max=cdf.shape[1] - 1)


def filter_log_probs(
    logp: torch.Tensor, *, sampling: str, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens a draw picks from in each row of ``logp`` (N, V).

    Returns (weights (N, K), ids (N, K)), weight 0 = dropped: greedy keeps the
    most likely token, ``topk`` the ``top_k`` most likely, ``nucleus`` the
    smallest most-likely set whose mass reaches ``top_p`` (1 keeps all).
    """
    if sampling == "greedy":
        return torch.ones_like(logp[:, :1]), logp.argmax(-1, keepdim=True)  # (N, 1) each
    if sampling == "topk":
        top_logp, ids = _topk(logp, min(top_k, logp.shape[-1]))  # (N, k)
        return top_logp.exp(), ids
    if top_p >= 1.0:
        every = torch.arange(logp.shape[-1], device=logp.device).expand_as(logp)  # (N, V)
        return logp.exp(), every
    probs, ids = _nucleus(logp, top_p)  # (N, K) each, most likely first
    # nucleus: keep a token while the mass before it is < p, so the token crossing p stays
    keep = probs.cumsum(-1) - probs < top_p
    keep[:, 0] = True
    return probs * keep, ids


def draw(
    logp: torch.Tensor, u: torch.Tensor | None, *, sampling: str, top_k: int, top_p: float
) -> torch.Tensor:
    """One token (N,) per row of ``logp`` (N, V), a function of the row and its uniform ``u``."""
    weights, ids = filter_log_probs(logp, sampling=sampling, top_k=top_k, top_p=top_p)  # (N, K)
    if u is None:  # greedy: the most likely token
        return ids[:, 0]
    return ids.gather(1, categorical(weights, u)[:, None])[:, 0]


def _nucleus(logp: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens of each row, in order, enough for the nucleus: (probs, ids) (N, K)."""
    k = min(64, logp.shape[-1])
    while True:  # widen the candidates until every row's top-k mass reaches p (rarely twice)
        top_logp, ids = _topk(logp, k)  # (N, k), sorted
        probs = top_logp.exp()
        if k == logp.shape[-1] or bool((probs.sum(-1) >= top_p).all()):
            return probs, ids
        k = min(8 * k, logp.shape[-1])


# ---------------------------------------------------------------- fast path


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path of ``x.topk(k, dim=-1)`` for a contiguous (N, V), sorted: same values, k << V.

    The k largest of a row lie in the k chunks of 32 consecutive columns with the
    largest maxima (plus the columns past the last whole chunk), so one cheap max
    per chunk narrows the search to k * 32 candidates. Only the indices of tied
    values may come out in another order than plain ``topk``.
    """
    n, v = x.shape
    width = 32
    if v < 4 * k * width or not x.is_contiguous():
        return x.topk(k, dim=-1)
    whole = v // width * width
    chunks = x[:, :whole].unflatten(1, (-1, width))  # (N, C, 32) view
    best = chunks.amax(-1).topk(k, dim=-1).indices.sort(-1).values  # (N, k) chunks, ascending
    rows = torch.arange(n, device=x.device)[:, None]
    offsets = torch.arange(width, device=x.device)
    columns = (best[:, :, None] * width + offsets).flatten(1)  # (N, k*32)
    candidates = chunks[rows, best].flatten(1)  # (N, k*32)
    if whole < v:
        tail = torch.arange(whole, v, device=x.device).expand(n, -1)  # (N, v - whole)
        columns = torch.cat([columns, tail], 1)
        candidates = torch.cat([candidates, x[:, whole:]], 1)
    values, where = candidates.topk(k, dim=-1)  # (N, k)
    return values, columns.gather(1, where)
