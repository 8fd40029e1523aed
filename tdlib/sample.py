"""The sampler: write text by iterative unmasking, and record the whole trajectory.

`sample` starts from a canvas whose positions equal to ``mask_id`` are to be
generated and runs ``num_steps`` denoiser calls (at most, for ``threshold`` and
``entropy-bound``). At each step it

1. calls the denoiser once on the whole batch: ``logits = denoiser(xt)  # (B, L, V)``,
   or, if it has ``accepts_positions`` (`tdlib.model.as_denoiser` with
   ``masked_only``), ``denoiser(xt, positions=where)  # (M, V)`` for just the
   positions it will draw at, so the LM head runs nowhere else;
2. draws tokens (greedy, top-k or nucleus, at a temperature; forbidden ids get
   -inf logits) only where a drawn token can be shown: for ``confidence``
   wherever the position's largest probability could still make the cut
   (`_reveal_by_confidence`), for ``margin`` and ``entropy``, whose scores do not
   depend on the draw, at the revealed positions, for ``random`` and
   ``resample`` wherever a token will stay. The score-based strategies still
   take one uniform per masked position from the generator, so their output is
   that of drawing everywhere;
3. decides which positions to reveal so that the number still masked follows the
   schedule (`tdlib.schedules.masked_counts`, counted per row, so rows with
   different numbers of masks, as in infilling, are fine):

   - ``random``: a uniformly random subset (ancestral sampling; exact with an
     exact denoiser when one token is revealed per step);
   - ``confidence``: the highest probability of the drawn token;
   - ``margin``: the largest top-1 minus top-2 probability;
   - ``entropy``: the lowest entropy of the position's distribution;
   - ``resample`` (the original experiment's method): every generated position is redrawn, then
     a random subset of the scheduled size is masked again;
   - ``threshold`` (Fast-dLLM): every drawn token with p_T(v_i) >= ``threshold``, and at
     least one (at least the schedule's count, so ``num_steps`` bounds the passes);
   - ``entropy-bound`` (EB-sampler): positions in order of increasing entropy, as many as
     keep sum(H) - max(H) of the revealed set <= ``entropy_bound`` nats, and at least one
     (at least the schedule's count);
   - ``remask-cap`` and ``remask-conf`` (ReMDM): before the denoiser call, each revealed
     token is hidden again with probability ``remask_eta`` (`_hide`: capped so that the
     step reveals no more than the schedule's busiest step), uniformly at random
     (``cap``) or the unlikely ones first (``conf``); then a random subset is revealed.

   Revealed tokens stay fixed in every strategy but ``resample`` and ``remask-*``. The
   `ADAPTIVE` strategies (``threshold``, ``entropy-bound``) stop a block as soon as it is
   finished, so the model decides the number of forward passes (at most ``num_steps``).

All samples of a call run as one batch; the only Python loop is over steps.
Scores ("probabilities") are those of the model's distribution at the chosen
temperature, softmax(logits / T), before top-k or nucleus truncation.
Draws are exact inverse-CDF draws in float64 (one uniform per position, from an
explicit generator; no Gumbel noise), so the same generator seed gives the same
output.

`generate` is the high-level entry: tokenizer, canvas, sampling, text.
`filter_log_probs` is the one top-k/nucleus filter; the sampling explorer shows
it (`tdlib.render.kept_distribution`). This module does not load models or
render anything; `tdlib.render` draws the `Trajectory` it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tdlib.data import boundary_ids
from tdlib.errors import check
from tdlib.schedules import SCHEDULES, masked_counts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tdlib.model import Denoiser

STRATEGIES = ("random", "confidence", "margin", "entropy", "resample",
              "threshold", "entropy-bound", "remask-cap", "remask-conf")
# strategies that may finish in fewer forward passes than ``num_steps``: the model decides how many
ADAPTIVE = ("threshold", "entropy-bound")
# strategies that may hide revealed tokens again (ReMDM), revealing in random order
REMASKING = ("remask-cap", "remask-conf")
SAMPLINGS = ("greedy", "topk", "nucleus")


@dataclass
class Trajectory:
    """Everything a sampling run did, step by step, for display and analysis."""

    tokens: torch.Tensor  # (S+1, B, L) canvas after each step; tokens[0] is the initial canvas
    revealed: torch.Tensor  # (S+1, B, L) positions newly revealed (or changed, for resample) at step s
    probs: torch.Tensor  # (S+1, B, L) probability of the token now shown; nan where masked or given
    mask_id: int
    given: torch.Tensor  # (B, L) positions fixed from the start (special tokens, prefix)
    forward_passes: int
    seconds: float

    @property
    def passes_per_row(self) -> torch.Tensor:
        """Long (B,): the steps in which each row still had a masked position, its forward passes if sampled alone."""
        return (self.tokens[:-1] == self.mask_id).any(-1).sum(0)

    @property
    def final(self) -> torch.Tensor:
        """The finished canvas, shape (B, L)."""
        return self.tokens[-1]

    @property
    def num_steps(self) -> int:
        """Number of sampling steps S."""
        return self.tokens.shape[0] - 1


def check_options(
    *,
    num_steps: int,
    schedule: str,
    strategy: str,
    sampling: str,
    temperature: float,
    top_k: int,
    top_p: float,
    threshold: float = 0.9,
    entropy_bound: float = 1.0,
    remask_eta: float = 0.1,
    block_length: int | None = None,
) -> None:
    """Raise `UserError` with a helpful message for any invalid sampler option."""
    check(num_steps >= 1, f"--steps must be at least 1, got {num_steps}")
    check(schedule in SCHEDULES, f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check(strategy in STRATEGIES, f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    check(sampling in SAMPLINGS, f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    check(
        temperature > 0 and math.isfinite(temperature),
        f"--temperature must be > 0, got {temperature}; use --sampling greedy for temperature 0",
    )
    check(top_k >= 1, f"--top-k must be at least 1, got {top_k}")
    check(0 < top_p <= 1, f"--top-p must be in (0, 1], got {top_p}; 1 keeps the whole distribution")
    check(0 < threshold <= 1, f"--threshold must be in (0, 1], got {threshold}; 1 reveals one token per pass")
    check(
        entropy_bound >= 0 and math.isfinite(entropy_bound),
        f"--entropy-bound must be a finite number of nats >= 0, got {entropy_bound}; 0 reveals one token per pass",
    )
    check(0 <= remask_eta <= 1, f"--remask-eta must be in [0, 1], got {remask_eta}; 0 never hides a token")
    check(block_length is None or block_length >= 1, f"--block-length must be at least 1, got {block_length}")


def _block_plan(
    generated: torch.Tensor, num_steps: int, block_length: int | None
) -> list[tuple[torch.Tensor, int]]:
    """Column masks of the blocks, left to right, and the number of steps each one gets.

    Blocks are ``block_length`` consecutive columns starting at the first generated
    column of the batch; the steps are split as evenly as possible, earlier blocks
    getting one more when they do not divide.
    """
    length = generated.shape[1]
    columns = torch.arange(length, device=generated.device)
    if block_length is None:
        return [(torch.ones(length, dtype=torch.bool, device=generated.device), num_steps)]
    check(block_length >= 1, f"block length must be at least 1, got {block_length}")
    used = generated.any(0).nonzero()[:, 0]
    first, last = (int(used[0]), int(used[-1])) if len(used) else (0, length - 1)
    num_blocks = (last - first) // block_length + 1
    check(
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


def _step_targets(
    generated: torch.Tensor, schedule: str, plan: list[tuple[torch.Tensor, int]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For every step: the active columns (L,), per-row masked counts wanted after it (B,), and per row the
    most tokens any step of the block reveals (B,), the schedule's busiest step."""
    targets = []
    cache: dict[tuple[int, int], list[int]] = {}
    for cols, steps in plan:
        per_row = (generated & cols).sum(1).tolist()  # masked positions of each row in this block
        for n in set(per_row):
            cache.setdefault((n, steps), masked_counts(schedule, n, steps))
        table = torch.tensor([cache[(n, steps)] for n in per_row], device=generated.device)  # (B, S_j+1)
        busiest = (table[:, :-1] - table[:, 1:]).amax(1)  # (B,)
        targets += [(cols, table[:, s], busiest) for s in range(1, steps + 1)]
    return targets


def _row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Long (B, L): the place of each score within its row, 0 for the highest, ties in column order."""
    order = scores.argsort(dim=1, descending=True, stable=True)  # (B, L)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def _top_per_row(scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bool (B, L): the ``count[b]`` eligible positions of each row with the highest scores."""
    return (_row_ranks(scores.masked_fill(~eligible, float("-inf"))) < count[:, None]) & eligible


def _categorical(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of non-negative ``weights`` (N, K), drawn exactly by inverse CDF in float64.

    ``u`` (N, 1) holds one uniform in [0, 1) per row (`_uniforms`).
    """
    cdf = weights.double().cumsum(-1)  # (N, K)
    # the first index whose cumulative weight exceeds u * total; zero-weight entries are never chosen
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)


def _uniforms(n: int, sampling: str, generator: torch.Generator | None, device) -> torch.Tensor | None:
    """The uniforms (n, 1) for drawing n rows, float64; greedy draws none."""
    if sampling == "greedy":
        return None
    return torch.rand(n, 1, dtype=torch.float64, generator=generator, device=device)


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` of a contiguous (N, V), sorted: the same values, faster for k << V.

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
    best = chunks.amax(-1).topk(k, dim=-1).indices.sort(-1).values  # (N, k) chunk numbers, ascending
    rows = torch.arange(n, device=x.device)[:, None]
    columns = (best[:, :, None] * width + torch.arange(width, device=x.device)).flatten(1)  # (N, k*32)
    candidates = chunks[rows, best].flatten(1)  # (N, k*32)
    if whole < v:
        tail = torch.arange(whole, v, device=x.device).expand(n, -1)  # (N, v - whole)
        columns = torch.cat([columns, tail], 1)
        candidates = torch.cat([candidates, x[:, whole:]], 1)
    values, where = candidates.topk(k, dim=-1)  # (N, k)
    return values, columns.gather(1, where)


def _nucleus(logp: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens of each row, in order, enough to hold the nucleus: (probs, ids), (N, K)."""
    k = min(64, logp.shape[-1])
    while True:  # widen the candidate set until every row's top-k mass reaches p (rarely more than once)
        top_logp, ids = _topk(logp, k)  # (N, k), sorted
        probs = top_logp.exp()
        if k == logp.shape[-1] or bool((probs.sum(-1) >= top_p).all()):
            return probs, ids
        k = min(8 * k, logp.shape[-1])


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities (N, V) of ``logits`` (N, V) at temperature T: log_softmax(logits / T)."""
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def filter_log_probs(
    logp: torch.Tensor, *, sampling: str, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens a draw picks from in each row of ``logp`` (N, V): (weights (N, K), ids (N, K)), 0 = dropped."""
    if sampling == "greedy":
        return torch.ones_like(logp[:, :1]), logp.argmax(-1, keepdim=True)  # (N, 1) each
    if sampling == "topk":
        top_logp, ids = _topk(logp, min(top_k, logp.shape[-1]))  # (N, k)
        return top_logp.exp(), ids
    if top_p >= 1.0:
        return logp.exp(), torch.arange(logp.shape[-1], device=logp.device).expand_as(logp)  # (N, V)
    probs, ids = _nucleus(logp, top_p)  # (N, K) each, most likely first
    # nucleus: keep a token while the mass before it is < p, so the token crossing p stays
    keep = probs.cumsum(-1) - probs < top_p
    keep[:, 0] = True
    return probs * keep, ids


def _draw_from(logp: torch.Tensor, u: torch.Tensor | None, *, sampling: str, top_k: int, top_p: float) -> torch.Tensor:
    """One token (N,) per row of ``logp`` (N, V), each row's draw a function of that row and its uniform ``u``."""
    weights, ids = filter_log_probs(logp, sampling=sampling, top_k=top_k, top_p=top_p)  # (N, K) each
    if u is None:  # greedy: the most likely token
        return ids[:, 0]
    return ids.gather(1, _categorical(weights, u)[:, None])[:, 0]


def _draw(
    logits: torch.Tensor,
    *,
    sampling: str,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` (N, V); returns (tokens (N,), log-probs (N, V) at T)."""
    logp = _log_probs(logits, temperature)
    u = _uniforms(len(logp), sampling, generator, logp.device)
    return _draw_from(logp, u, sampling=sampling, top_k=top_k, top_p=top_p), logp


DRAW_ALL_UP_TO = 4096  # vocabulary size up to which `confidence` draws at every masked position in one go


def _reveal_by_confidence(
    logp: torch.Tensor,
    masked: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    count: torch.Tensor,
    draw: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``confidence`` step, drawing only where a draw could be revealed.

    ``logp`` (N, V) holds the log-probs at the ``masked`` (B, L) positions of the
    canvas (``rows``, ``cols`` = ``masked.nonzero()``); canvas row b reveals the
    ``count[b]`` drawn tokens with the highest probability. A drawn token's probability is at most its position's largest
    probability, its bound. So positions are drawn in rounds, in order of
    their bound: first the ``count[b]`` highest, then twice as many, and so
    on, while any position not yet drawn has a bound that reaches the
    ``count[b]``-th best probability drawn so far in its row; once none does,
    no undrawn position could make the cut. ``draw(idx)`` returns the tokens of
    rows ``idx``, each a function of its own row and uniform, so the result is
    exactly that of drawing everywhere.

    With a small vocabulary (at most `DRAW_ALL_UP_TO` tokens) a draw costs less
    than the bookkeeping of the rounds, so every position is drawn at once.

    Returns (revealed (B, L) bool, tokens (N,), probability of each token (N,)),
    tokens and probabilities meaningful where a draw was made.
    """
    n, device = len(logp), logp.device
    if logp.shape[-1] <= DRAW_ALL_UP_TO:
        tokens = draw()
        p_token = logp.gather(1, tokens[:, None])[:, 0].exp()
        scores = torch.full(masked.shape, float("-inf"), dtype=logp.dtype, device=device)  # (B, L)
        scores[rows, cols] = p_token
        return _top_per_row(scores, masked, count), tokens, p_token
    bound = logp.amax(-1).exp()  # (N,) the largest probability at each position
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    p_token = torch.full((n,), float("nan"), dtype=logp.dtype, device=device)
    scores = torch.full(masked.shape, float("-inf"), dtype=logp.dtype, device=device)  # (B, L) drawn probabilities
    upper = scores.clone()
    upper[rows, cols] = bound
    rank = _row_ranks(upper)[rows, cols]  # (N,) place of each position's bound within its canvas row
    budget = count.clone()  # (B,) positions drawn in each row by the end of this round
    todo = rank < budget[rows]
    while True:
        where = todo.nonzero()[:, 0]
        tokens[where] = draw(where)
        p_token[where] = logp[where, tokens[where]].exp()
        scores[rows[where], cols[where]] = p_token[where]
        # the count[b]-th best drawn probability of each canvas row (+inf when nothing is to be revealed)
        ranked = scores.sort(1, descending=True).values  # (B, L)
        worst = ranked.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0].masked_fill(count <= 0, float("inf"))
        needed = p_token.isnan() & (bound >= worst[rows])  # (N,) could still make the cut
        if not bool(needed.any()):
            return _top_per_row(scores, masked, count), tokens, p_token
        budget = 2 * budget
        todo = needed & (rank < budget[rows])


def _scores(strategy: str, logp: torch.Tensor) -> torch.Tensor:
    """Reveal priority (higher first) of positions with log-probs ``logp`` (N, V): margin or entropy."""
    if strategy == "margin":
        top2 = _topk(logp, 2)[0].exp()  # (N, 2)
        return top2[:, 0] - top2[:, 1]
    return -_entropy(logp)  # the lowest entropy goes first


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p(v) log p(v) for each row of ``logp`` (N, V); a banned token (p = 0, log p = -inf) adds 0.

    One dot product per row instead of an elementwise p log p and a sum: a third of the time at 30k tokens.
    """
    return -torch.linalg.vecdot(logp.exp(), logp.clamp(min=torch.finfo(logp.dtype).min))


@dataclass
class _Sampler:
    """One sampling run's state: the canvas, log-probs from the denoiser at chosen positions, draws from them."""

    denoiser: Denoiser
    xt: torch.Tensor  # (B, L) the canvas; `sample` changes it in place
    attention_mask: torch.Tensor | None
    forbidden_ids: Sequence[int]
    forbidden_at: dict[int, Sequence[int]] | None
    temperature: float
    sampling: str
    top_k: int
    top_p: float
    generator: torch.Generator | None
    threshold: float = 0.9
    entropy_bound: float = 1.0
    remask_eta: float = 0.1
    forward_passes: int = 0
    banned: dict[str, torch.Tensor] = field(default_factory=dict)

    def noise(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniforms (B, L) for choosing positions at random."""
        return torch.rand(self.xt.shape, dtype=dtype, generator=self.generator, device=self.xt.device)

    def log_probs(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One denoiser call: (rows, cols) of ``positions`` (B, L) and their log-probs (M, V) at T."""
        self.forward_passes += 1
        rows, cols = positions.nonzero(as_tuple=True)
        if getattr(self.denoiser, "accepts_positions", False):  # logits at the given positions only
            logits = self.denoiser(self.xt, self.attention_mask, positions=positions)  # (M, V)
        else:
            logits = self.denoiser(self.xt, self.attention_mask)  # (B, L, V)
            logits = logits[rows, cols].to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
        return rows, cols, _log_probs(self._ban(cols, logits), self.temperature)

    def _ban(self, cols: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (M, V) at columns ``cols`` (M,), forbidden ids set to -inf in place."""
        if not self.banned:  # built once the vocabulary size is known
            device = self.xt.device
            self.banned["all"] = torch.tensor(sorted(set(self.forbidden_ids)), dtype=torch.long, device=device)
            self.banned["at"] = torch.zeros(self.xt.shape[1], logits.shape[-1], dtype=torch.bool, device=device)
            for col, ids in (self.forbidden_at or {}).items():
                self.banned["at"][col, list(ids)] = True  # (L, V)
            self.banned["cols"] = self.banned["at"].any(-1)  # (L,) columns with extra bans
            self.banned["some"] = bool(self.banned["cols"].any())
        with torch.inference_mode():  # a model denoiser returns inference tensors; change them in place
            logits.index_fill_(1, self.banned["all"], float("-inf"))  # (M, V)
            if not self.banned["some"]:
                return logits
            extra = self.banned["cols"][cols].nonzero()[:, 0]  # rows of `logits` at columns with extra bans
            if len(extra):
                logits[extra] = logits[extra].masked_fill(self.banned["at"][cols[extra]], float("-inf"))
        return logits

    def drawer(self, logp: torch.Tensor) -> Callable[..., torch.Tensor]:
        """``draw(idx)``: tokens of rows ``idx`` of ``logp`` (all rows without ``idx``).

        The uniforms of every row come from the generator now, so drawing only
        some rows gives them the very tokens that drawing all would.
        """
        u = _uniforms(len(logp), self.sampling, self.generator, logp.device)
        options = dict(sampling=self.sampling, top_k=self.top_k, top_p=self.top_p)

        def draw(idx: torch.Tensor | None = None) -> torch.Tensor:
            if idx is None:  # no copy of the whole (N, V)
                return _draw_from(logp, u, **options)
            return _draw_from(logp[idx], None if u is None else u[idx], **options)

        return draw


# A step of a strategy that keeps revealed tokens: (sampler, masked (B, L), count (B,)) ->
# (revealed (B, L), rows (N,), cols (N,), tokens (N,), probability of each token (N,)).
_Reveal = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _reveal_random(sampler: _Sampler, masked: torch.Tensor, count: torch.Tensor) -> _Reveal:
    """``random``: reveal a uniformly random subset, then draw only there."""
    revealed = _top_per_row(sampler.noise(), masked, count)
    rows, cols, logp = sampler.log_probs(revealed)
    tokens = sampler.drawer(logp)()
    return revealed, rows, cols, tokens, logp.gather(1, tokens[:, None])[:, 0].exp()


def _reveal_confident(sampler: _Sampler, masked: torch.Tensor, count: torch.Tensor) -> _Reveal:
    """``confidence``: reveal the drawn tokens of highest probability, drawing only where one could win."""
    rows, cols, logp = sampler.log_probs(masked)
    revealed, tokens, p_token = _reveal_by_confidence(logp, masked, rows, cols, count, sampler.drawer(logp))
    where = revealed[rows, cols].nonzero()[:, 0]
    return revealed, rows[where], cols[where], tokens[where], p_token[where]


def _reveal_by_score(strategy: str) -> Callable[[_Sampler, torch.Tensor, torch.Tensor], _Reveal]:
    """``margin`` or ``entropy``: the score does not depend on the draw, so draw only where a token is revealed."""

    def reveal(sampler: _Sampler, masked: torch.Tensor, count: torch.Tensor) -> _Reveal:
        rows, cols, logp = sampler.log_probs(masked)
        draw = sampler.drawer(logp)
        scores = torch.full(masked.shape, float("-inf"), dtype=logp.dtype, device=masked.device)  # (B, L)
        scores[rows, cols] = _scores(strategy, logp)
        revealed = _top_per_row(scores, masked, count)
        where = revealed[rows, cols].nonzero()[:, 0]
        tokens = draw(where)
        return revealed, rows[where], cols[where], tokens, logp[where, tokens].exp()

    return reveal


def _at_least_one(masked: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Long (B,): the schedule's ``count`` but at least one in every row that still has a masked position."""
    return count.clamp(min=1).minimum(masked.sum(1))


def _reveal_threshold(sampler: _Sampler, masked: torch.Tensor, count: torch.Tensor) -> _Reveal:
    """``threshold`` (Fast-dLLM): reveal every drawn token with p_T(v_i) >= threshold, and at least the
    ``count`` (at least one) most probable draws, so the schedule still bounds the passes."""
    rows, cols, logp = sampler.log_probs(masked)
    draw = sampler.drawer(logp)
    least = _at_least_one(masked, count)  # (B,)
    revealed, tokens, p_token = _reveal_by_confidence(logp, masked, rows, cols, least, draw)
    undrawn = p_token.isnan()  # (N,) none with a small vocabulary, where every position is drawn at once
    if bool(undrawn.any()):
        # a drawn token can reach the threshold only where the position's largest probability does
        todo = (undrawn & (logp.amax(-1).exp() >= sampler.threshold)).nonzero()[:, 0]
        tokens[todo] = draw(todo)
        p_token[todo] = logp[todo, tokens[todo]].exp()
    # reveal i  <=>  p_T(v_i) >= threshold  (or i is among the `least` most probable draws)
    revealed[rows, cols] |= p_token >= sampler.threshold
    where = revealed[rows, cols].nonzero()[:, 0]
    return revealed, rows[where], cols[where], tokens[where], p_token[where]


def _entropy_bound_count(entropy: torch.Tensor, masked: torch.Tensor, bound: float) -> torch.Tensor:
    """Long (B,): the largest k whose k lowest entropies, minus their largest, sum to at most ``bound``.

    ``entropy`` (B, L) holds H_i at the ``masked`` positions. Sorted ascending, the set of
    the first k has its largest last, so sum - max is the sum of the first k - 1.
    """
    ordered = entropy.masked_fill(~masked, float("inf")).sort(1).values  # (B, L) lowest first
    # before_j = sum_{j' < j} H_(j'): the sum of the set {0..j} minus its largest H_(j)
    before = ordered.cumsum(1) - ordered  # (B, L); nan past the masked positions (inf - inf)
    inside = torch.arange(masked.shape[1], device=masked.device) < masked.sum(1, keepdim=True)  # (B, L)
    return ((before <= bound) & inside).sum(1)


def _reveal_entropy_bounded(sampler: _Sampler, masked: torch.Tensor, count: torch.Tensor) -> _Reveal:
    """``entropy-bound`` (EB-sampler): reveal, lowest entropy first, the most positions whose summed entropy
    minus its largest stays <= the bound, and at least the schedule's ``count`` (at least one)."""
    rows, cols, logp = sampler.log_probs(masked)
    draw = sampler.drawer(logp)
    entropy = torch.zeros(masked.shape, dtype=logp.dtype, device=masked.device)  # (B, L)
    # H_i = -sum_v p_T,i(v) log p_T,i(v)
    entropy[rows, cols] = _entropy(logp)
    k = _entropy_bound_count(entropy, masked, sampler.entropy_bound).maximum(_at_least_one(masked, count))  # (B,)
    revealed = _top_per_row(-entropy, masked, k)
    where = revealed[rows, cols].nonzero()[:, 0]
    tokens = draw(where)
    return revealed, rows[where], cols[where], tokens, logp[where, tokens].exp()


_REVEAL = {"random": _reveal_random, "confidence": _reveal_confident,
          "margin": _reveal_by_score("margin"), "entropy": _reveal_by_score("entropy"),
          "threshold": _reveal_threshold, "entropy-bound": _reveal_entropy_bounded,
          "remask-cap": _reveal_random, "remask-conf": _reveal_random}


def _hide(
    sampler: _Sampler, probs: torch.Tensor, strategy: str, active: torch.Tensor, target: torch.Tensor,
    busiest: torch.Tensor, mask_id: int,
) -> torch.Tensor:
    """ReMDM remasking before the step's denoiser call: hide some revealed tokens of the block; returns hidden (B, L).

    Each revealed token is hidden with probability eta (the count r = floor(eta * revealed + u),
    u ~ U[0, 1), one per row), capped as in ReMDM by the tokens the schedule still wants
    masked after the step (sigma_max), and so that the step reveals no more tokens than the
    schedule's busiest step (r <= busiest - scheduled reveals). ``remask-cap`` picks the hidden
    tokens uniformly at random; ``remask-conf`` with weights softmax(-psi), psi the probability a
    token had when it was revealed, so unlikely tokens are taken back first.
    """
    xt = sampler.xt
    shown = active & (xt != mask_id)  # (B, L) revealed tokens of the block
    scheduled = (active & (xt == mask_id)).sum(1) - target  # (B,) tokens the schedule reveals at this step
    u = torch.rand(len(xt), dtype=torch.float64, generator=sampler.generator, device=xt.device)  # (B,)
    # r = min(floor(eta * revealed + u), m_s, busiest - scheduled)
    r = (sampler.remask_eta * shown.sum(1) + u).floor().long().minimum(target).minimum(busiest - scheduled)
    if strategy == "remask-cap":
        keys = sampler.noise()  # (B, L) a uniformly random subset
    else:
        # weighted sampling without replacement (Efraimidis-Spirakis): the r largest log(u) / w, w ~ exp(-psi)
        keys = sampler.noise(torch.float64).log() * probs.double().nan_to_num(0.0).exp()  # (B, L)
    hidden = _top_per_row(keys, shown, r.clamp(min=0))
    xt[hidden] = mask_id
    probs[hidden] = float("nan")
    return hidden


def _resample_step(
    sampler: _Sampler, probs: torch.Tensor, active: torch.Tensor, target: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """``resample``: redraw every ``active`` position, then mask ``target`` (B,) of them again; returns revealed.

    The re-masked subset does not depend on the draws, so it is picked first and
    tokens are drawn only where they stay.
    """
    xt = sampler.xt
    previous = xt.clone()
    remask = _top_per_row(sampler.noise(), active, target)
    rows, cols, logp = sampler.log_probs(active & ~remask)
    tokens = sampler.drawer(logp)()
    xt[rows, cols] = tokens
    probs[rows, cols] = logp.gather(1, tokens[:, None])[:, 0].exp().float()
    xt[remask] = mask_id
    probs[remask] = float("nan")
    return (xt != previous) & (xt != mask_id)


def _snapshot(*canvases: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CPU copies of the canvases after a step (the sampler changes them in place)."""
    return tuple(c.to("cpu", copy=True) for c in canvases)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_init: torch.Tensor,
    *,
    mask_id: int,
    num_steps: int,
    schedule: str = "linear",
    strategy: str = "confidence",
    sampling: str = "topk",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    forbidden_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    block_length: int | None = None,
    attention_mask: torch.Tensor | None = None,
    forbidden_at: dict[int, Sequence[int]] | None = None,
    threshold: float = 0.9,
    entropy_bound: float = 1.0,
    remask_eta: float = 0.1,
) -> Trajectory:
    """Fill every ``mask_id`` position of ``x_init`` (B, L) in ``num_steps`` denoiser calls (at most, for `ADAPTIVE`).

    ``forbidden_ids`` are never drawn anywhere; ``forbidden_at`` maps a column to
    extra ids never drawn there. With ``block_length``, blocks of that many columns
    are generated left to right (semi-autoregressive), the steps split evenly
    between blocks, each block following the schedule within its own steps.
    ``threshold`` (a probability), ``entropy_bound`` (nats) and ``remask_eta`` (a
    probability per revealed token and step) are the knobs of ``threshold``,
    ``entropy-bound`` and the ``remask-*`` strategies. An adaptive strategy skips
    the remaining steps of a block once the block is finished, so it may use fewer passes.
    """
    check_options(num_steps=num_steps, schedule=schedule, strategy=strategy, sampling=sampling,
                  temperature=temperature, top_k=top_k, top_p=top_p, threshold=threshold,
                  entropy_bound=entropy_bound, remask_eta=remask_eta, block_length=block_length)
    start = time.perf_counter()
    xt = x_init.clone()  # (B, L)
    generated = xt == mask_id  # (B, L) positions the sampler writes
    probs = torch.full(xt.shape, float("nan"), device=xt.device)  # (B, L) probability of each shown token
    sampler = _Sampler(denoiser, xt, attention_mask, forbidden_ids, forbidden_at, temperature, sampling, top_k,
                   top_p, generator, threshold=threshold, entropy_bound=entropy_bound, remask_eta=remask_eta)
    history = [_snapshot(xt, torch.zeros_like(generated), probs)]
    plan = _block_plan(generated, num_steps, block_length)
    for block, target, busiest in _step_targets(generated, schedule, plan):
        active = generated & block  # (B, L) generated positions of the current block
        masked = active & (xt == mask_id)  # (B, L)
        if strategy in ADAPTIVE and not masked.any():
            continue  # the block is finished early: no forward pass for its remaining steps
        if strategy == "resample":
            revealed = _resample_step(sampler, probs, active, target, mask_id)
        else:
            if strategy in REMASKING:
                _hide(sampler, probs, strategy, active, target, busiest, mask_id)
                masked = active & (xt == mask_id)  # (B, L) with the hidden tokens
            # reveal as many as take the masked count down to the schedule's target
            count = masked.sum(1) - target  # (B,)
            revealed, rows, cols, tokens, p_token = _REVEAL[strategy](sampler, masked, count)
            xt[rows, cols] = tokens
            probs[rows, cols] = p_token.float()
        history.append(_snapshot(xt, revealed, probs))
    tokens, revealed, probs = (torch.stack(h) for h in zip(*history, strict=True))
    return Trajectory(tokens=tokens, revealed=revealed, probs=probs, mask_id=mask_id, given=~generated.cpu(),
                      forward_passes=sampler.forward_passes, seconds=time.perf_counter() - start)


def continuation_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of tokens that continue a word ("##ing" in WordPiece, no leading "Ġ" in byte-level BPE)."""
    vocab = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        prefix = backend.model.continuing_subword_prefix
        return sorted(i for t, i in vocab.items() if t.startswith(prefix))
    counts = {m: sum(t.startswith(m) for t in vocab) for m in ("Ġ", "▁")}
    marker = max(counts, key=counts.get)
    if counts[marker] == 0:
        return sorted(i for t, i in vocab.items() if t.startswith("##"))
    special = set(tokenizer.all_special_ids)
    return sorted(i for t, i in vocab.items() if not t.startswith(marker) and i not in special)


def _denoiser_and_device(model, device):
    """A denoiser for ``model`` and the device its inputs go to."""
    if isinstance(model, torch.nn.Module):
        from tdlib.model import as_denoiser

        if device is not None:
            model = model.to(device)
        # `sample` asks for logits only where it draws (`positions`): the LM head runs nowhere else
        return as_denoiser(model, masked_only=True), next(model.parameters()).device
    return model, torch.device(device or "cpu")


def _position_limit(model, tokenizer) -> int | None:
    """Longest canvas the model takes: its position embeddings, else the tokenizer's limit, else None."""
    if isinstance(model, torch.nn.Module):
        from tdlib.model import max_sequence_length

        limit = max_sequence_length(model)
        if limit is not None:
            return limit
    limit = tokenizer.model_max_length
    return limit if limit <= 100_000 else None  # transformers uses a huge number for "no limit"


def build_canvas(tokenizer: PreTrainedTokenizerBase, prefix: str, max_length: int) -> tuple[list[int], dict[int, list[int]] | None]:
    """The ids `generate` starts from, and the positions where a word-continuation piece is banned.

    ``[start] prefix [mask] ... [mask] [end]``, ``max_length`` ids, or, when
    ``prefix`` holds the tokenizer's mask token, ``[start] text [end]`` with its own
    mask tokens as the positions to fill.
    """
    start_id, end_id = boundary_ids(tokenizer)
    mask_id = tokenizer.mask_token_id
    infill = tokenizer.mask_token in prefix
    text = prefix if infill else prefix.rstrip()
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"] if text.strip() else []
    room = max_length - 2
    if infill:
        check(len(ids) <= room, f"the text is {len(ids)} tokens; --max-length {max_length} allows {room}")
        canvas = [start_id, *ids, end_id]
        # a mask after whitespace (or at the start) is a new word: no continuation piece there
        word_starts = [1 + i for i, (token, (begin, _)) in enumerate(zip(ids, encoded["offset_mapping"], strict=True))
                       if token == mask_id and (begin == 0 or text[begin - 1].isspace())]
        forbidden_at = dict.fromkeys(word_starts, continuation_ids(tokenizer))
    else:
        check(
            len(ids) < room,
            f"the prefix is {len(ids)} tokens, leaving no room in --max-length {max_length} "
            f"(at most {room - 1} prefix tokens); shorten the prefix or raise --max-length",
        )
        canvas = [start_id, *ids, *[mask_id] * (room - len(ids)), end_id]
        # the first generated token starts a new word, so it is never glued onto the prefix
        forbidden_at = {1 + len(ids): continuation_ids(tokenizer)} if ids else None
    return canvas, forbidden_at


def generate(
    model: torch.nn.Module | Denoiser,
    tokenizer: PreTrainedTokenizerBase,
    *,
    prefix: str = "",
    num_samples: int = 1,
    max_length: int = 64,
    num_steps: int = 32,
    schedule: str = "linear",
    strategy: str = "confidence",
    sampling: str = "topk",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    seed: int | None = 0,
    block_length: int | None = None,
    device: torch.device | str | None = None,
    threshold: float = 0.9,
    entropy_bound: float = 1.0,
    remask_eta: float = 0.1,
) -> tuple[list[str], Trajectory]:
    """Generate ``num_samples`` texts continuing ``prefix`` (or filling its mask tokens); returns (texts, trajectory).

    The canvas is ``[CLS] prefix [MASK] ... [MASK] [SEP]`` (``<s> ... </s>`` for
    RoBERTa), ``max_length`` tokens, with no end token right after the prefix.
    The first generated token must start a new word, so each text is the prefix,
    one space, then the generated words. If ``prefix`` contains the tokenizer's
    mask token, the text itself is the canvas and each mask token is filled.
    ``model`` is a Hugging Face masked LM (moved to ``device`` when given) or any
    denoiser callable; ``seed=None`` draws a fresh seed. ``threshold``, ``entropy_bound``
    and ``remask_eta`` are passed to `sample`.
    """
    knobs = dict(threshold=threshold, entropy_bound=entropy_bound, remask_eta=remask_eta)
    check_options(num_steps=num_steps, schedule=schedule, strategy=strategy, sampling=sampling,
                  temperature=temperature, top_k=top_k, top_p=top_p, block_length=block_length, **knobs)
    check(num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}")
    check(max_length >= 3, f"--max-length must be at least 3 (start, one token, end), got {max_length}")
    denoiser, device = _denoiser_and_device(model, device)
    limit = _position_limit(model, tokenizer)
    check(
        limit is None or max_length <= limit,
        f"--max-length {max_length} exceeds the model's {limit} positions; use --max-length {limit} or less",
    )
    mask_id = tokenizer.mask_token_id
    canvas, forbidden_at = build_canvas(tokenizer, prefix, max_length)
    infill = tokenizer.mask_token in prefix
    prefix_tokens = len(canvas) - 2 - canvas.count(mask_id)  # continuation: the tokens before the masks
    x_init = torch.tensor([canvas] * num_samples, dtype=torch.long, device=device)  # (B, L)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    trajectory = sample(
        denoiser,
        x_init,
        mask_id=mask_id,
        num_steps=num_steps,
        schedule=schedule,
        strategy=strategy,
        sampling=sampling,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        forbidden_ids=tokenizer.all_special_ids,
        generator=generator,
        block_length=block_length,
        forbidden_at=forbidden_at,
        **knobs,
    )
    if infill:
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in trajectory.final]
    else:
        tails = [tokenizer.decode(row[1 + prefix_tokens:], skip_special_tokens=True).strip()
                 for row in trajectory.final]
        text = prefix.rstrip()
        texts = [f"{text} {tail}" if text else tail for tail in tails]
    return texts, trajectory
