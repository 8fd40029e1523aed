"""The strategies: which masked positions a step of the sampler reveals, and what it hides again.

`REVEAL` maps each strategy's name to its rule. A rule that keeps revealed
tokens gets the `Run` (canvas, denoiser, draws), the ``masked`` positions of
the block (B, L) and ``count`` (B,), how many each row reveals, and returns a
`Reveal`: (revealed (B, L), rows (N,), cols (N,), tokens (N,), probability of
each token (N,)); the loop (`tdlib.sample.sample`) writes the tokens.

- ``random``: a uniformly random subset (ancestral sampling);
- ``dilated``: the positions a plan fixed in advance gives the pass, spread far apart
  (`tdlib.schedules.dilated_plan`: residues mod K, coarse to fine);
- ``confidence``: the drawn tokens of highest probability;
- ``margin``: the largest top-1 minus top-2 probability;
- ``entropy``: the lowest entropy of the position's distribution;
- ``threshold`` (Fast-dLLM): every drawn token with p_T(v_i) >= threshold, at least ``count``;
- ``entropy-bound`` (EB-sampler): lowest entropy first while sum(H) - max(H) <= the bound;
- ``remask-cap``, ``remask-conf`` (ReMDM): `hide` some revealed tokens, then reveal at random;
- ``resample`` (the original experiment's method): `resample` redraws every position of
  the block, then masks a random subset again.

``min_gap`` G spaces the rules that rank positions (`SPACED`): no two positions
revealed in one pass closer than G columns (`spaced_top_per_row`).

Each rule is written first in its plain form. The fast paths sit at the end of
the module, marked, each held equal to its plain form by `tests/test_strategies.py`:
drawing ``confidence`` tokens in rounds (`_most_confident_in_rounds`) and
banning ids in place (`Run._ban_in_place`). A new strategy is one rule and one
`REVEAL` entry. Draws and filters are `tdlib.draws`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tdlib import draws
from tdlib.schedules import dilated_plan_for

if TYPE_CHECKING:
    from tdlib.model import Denoiser

# strategies that may finish in fewer forward passes than ``num_steps``: the model decides
ADAPTIVE = ("threshold", "entropy-bound")
# strategies that may hide revealed tokens again (ReMDM), revealing in random order
REMASKING = ("remask-cap", "remask-conf")
# strategies that rank positions and pick the top of the ranking: --min-gap spaces them
SPACED = ("random", "dilated", "confidence", "margin", "entropy")
DRAW_ALL_UP_TO = 4096  # vocabulary size up to which `confidence` draws everywhere in one go

# (revealed (B, L), rows (N,), cols (N,), tokens (N,), probability of each token (N,))
Reveal = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Run:
    """One sampling run's state: the canvas, log-probs from the denoiser, draws from them."""

    denoiser: Denoiser
    config: Any  # the run's `tdlib.sample.SamplerConfig` (which imports this module)
    xt: torch.Tensor  # (B, L) the canvas, changed in place
    probs: torch.Tensor  # (B, L) probability of each shown token, nan where masked or given
    mask_id: int
    generator: torch.Generator | None = None
    attention_mask: torch.Tensor | None = None
    forbidden_ids: Sequence[int] = ()
    forbidden_at: dict[int, Sequence[int]] | None = None
    generated: torch.Tensor | None = None  # (B, L) the positions the run writes
    blocks: list | None = None  # `tdlib.schedules.block_plan`: (columns (L,), steps) per block
    forward_passes: int = 0
    banned: dict[str, torch.Tensor] = field(default_factory=dict)
    order: torch.Tensor | None = None  # (B, L) place of each position in the dilated plan (built once)

    def noise(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniforms (B, L) for choosing positions at random."""
        xt = self.xt
        return torch.rand(xt.shape, dtype=dtype, generator=self.generator, device=xt.device)

    def pick(self, scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Bool (B, L): the ``count[b]`` best-scored eligible positions, spaced by ``min_gap``."""
        if self.config.min_gap > 1:
            return spaced_top_per_row(scores, eligible, count, self.config.min_gap)
        return top_per_row(scores, eligible, count)

    def dilated_order(self) -> torch.Tensor:
        """Float (B, L): each generated position's place in its block's `dilated_plan_for`
        (pass by pass), +inf elsewhere; rows with the same generated columns share one plan."""
        if self.order is None:
            patterns, which = self.generated.cpu().unique(dim=0, return_inverse=True)
            places = torch.full(patterns.shape, float("inf"))
            for k, row in enumerate(patterns):
                for cols, steps in self.blocks:
                    columns = (row & cols.cpu()).nonzero()[:, 0]
                    plan = dilated_plan_for(columns, steps, self.config.schedule)
                    flat = torch.tensor([c for s in plan for c in s], dtype=torch.long)
                    places[k, flat] = torch.arange(len(flat), dtype=places.dtype)
            self.order = places[which].to(self.xt.device)
        return self.order

    def log_probs(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One denoiser call: (rows, cols) of ``positions`` (B, L), their log-probs (M, V) at T."""
        self.forward_passes += 1
        rows, cols = positions.nonzero(as_tuple=True)
        if getattr(self.denoiser, "accepts_positions", False):  # logits at those positions only
            logits = self.denoiser(self.xt, self.attention_mask, positions=positions)  # (M, V)
        else:
            logits = self.denoiser(self.xt, self.attention_mask)  # (B, L, V)
            wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
            logits = logits[rows, cols].to(wide)  # (M, V)
        logits = self._ban_in_place(cols, logits)
        return rows, cols, draws.log_probs(logits, self.config.temperature)

    def banned_table(self, vocab: int) -> torch.Tensor:
        """Bool (L, V): the ids never drawn at each column (``forbidden_ids``, ``forbidden_at``)."""
        if "at" not in self.banned:  # built once the vocabulary size is known
            device = self.xt.device
            ids = sorted(set(self.forbidden_ids))
            self.banned["all"] = torch.tensor(ids, dtype=torch.long, device=device)
            length = self.xt.shape[1]
            self.banned["at"] = torch.zeros(length, vocab, dtype=torch.bool, device=device)
            for col, extra in (self.forbidden_at or {}).items():
                self.banned["at"][col, list(extra)] = True  # (L, V)
            self.banned["cols"] = self.banned["at"].any(-1)  # (L,) columns with extra bans
            self.banned["some"] = bool(self.banned["cols"].any())
        table = self.banned["at"].clone()
        table[:, self.banned["all"]] = True
        return table

    def ban(self, cols: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (M, V) at columns ``cols`` (M,) with every banned id at -inf (plain form)."""
        return logits.masked_fill(self.banned_table(logits.shape[-1])[cols], float("-inf"))

    def drawer(self, logp: torch.Tensor) -> Callable[..., torch.Tensor]:
        """``draw(idx)``: tokens of rows ``idx`` of ``logp`` (all rows without ``idx``).

        The uniforms of every row come from the generator now, so drawing only
        some rows gives them the very tokens that drawing all would.
        """
        c = self.config
        u = draws.uniforms(len(logp), c.sampling, self.generator, logp.device)
        options = dict(sampling=c.sampling, top_k=c.top_k, top_p=c.top_p)

        def draw(idx: torch.Tensor | None = None) -> torch.Tensor:
            if idx is None:  # no copy of the whole (N, V)
                return draws.draw(logp, u, **options)
            return draws.draw(logp[idx], None if u is None else u[idx], **options)

        return draw

    def _ban_in_place(self, cols: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Fast path of `ban`: the same logits, set to -inf in place, no (M, V) mask built."""
        if "at" not in self.banned:
            self.banned_table(logits.shape[-1])
        with torch.inference_mode():  # a model denoiser returns inference tensors
            logits.index_fill_(1, self.banned["all"], float("-inf"))  # (M, V)
            if not self.banned["some"]:
                return logits
            extra = self.banned["cols"][cols].nonzero()[:, 0]  # rows at columns with extra bans
            if len(extra):
                banned = self.banned["at"][cols[extra]]
                logits[extra] = logits[extra].masked_fill(banned, float("-inf"))
        return logits


def top_per_row(scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bool (B, L): the ``count[b]`` eligible positions of each row with the highest scores."""
    return (_row_ranks(scores.masked_fill(~eligible, float("-inf"))) < count[:, None]) & eligible


def spaced_top_per_row(
    scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor, gap: int
) -> torch.Tensor:
    """Bool (B, L): `top_per_row`, but no two chosen positions of a row closer than ``gap``.

    Down each row's ranking, a position is taken unless it lies within ``gap`` - 1
    columns of one taken before. If fewer than ``count[b]`` positions can be spaced
    so, the best-ranked of the rest fill the pass, so that the schedule's counts (and
    the number of passes) stay as they are. One loop over ranks, all rows at once.
    """
    length = scores.shape[1]
    order = scores.masked_fill(~eligible, float("-inf")).argsort(dim=1, descending=True, stable=True)
    columns = torch.arange(length, device=scores.device)
    taken = torch.zeros_like(eligible)
    blocked = ~eligible  # (B, L) not eligible, or too close to a taken position
    n = torch.zeros_like(count)
    for r in range(length):
        if bool((n >= count).all()):
            break
        pos = order[:, r]  # (B,) the r-th best position of each row
        ok = ~blocked.gather(1, pos[:, None])[:, 0] & (n < count)
        taken[ok, pos[ok]] = True
        n += ok
        blocked |= ((columns - pos[:, None]).abs() < gap) & ok[:, None]
    rest = eligible & ~taken
    return taken | top_per_row(scores, rest, (count - n).clamp(min=0))


def _row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Long (B, L): the place of each score in its row, 0 for the highest, ties in column order."""
    order = scores.argsort(dim=1, descending=True, stable=True)  # (B, L)
    ranks = torch.empty_like(order)
    places = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return ranks.scatter_(1, order, places)


def _on_canvas(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape) -> torch.Tensor:
    """(B, L) scores: ``values`` (N,) at (rows, cols), -inf elsewhere."""
    scores = torch.full(shape, float("-inf"), dtype=values.dtype, device=values.device)
    scores[rows, cols] = values
    return scores


def _at(revealed: torch.Tensor, rows, cols, tokens, p_token) -> Reveal:
    """The `Reveal` of the ``revealed`` (B, L) positions, from the draws at (rows, cols)."""
    where = revealed[rows, cols].nonzero()[:, 0]
    return revealed, rows[where], cols[where], tokens[where], p_token[where]


def reveal_random(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
    """``random``: reveal a uniformly random subset, then draw only there."""
    return _draw_at(run, run.pick(run.noise(), masked, count))


def reveal_dilated(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
    """``dilated``: reveal the next ``count`` positions of the plan fixed at the start
    (`Run.dilated_order`), then draw only there. With the plan's own schedule each pass
    reveals exactly one set of `tdlib.schedules.dilated_plan`."""
    return _draw_at(run, run.pick(-run.dilated_order(), masked, count))


def _draw_at(run: Run, revealed: torch.Tensor) -> Reveal:
    """The `Reveal` of positions chosen before the denoiser call: one call at ``revealed`` (B, L),
    one draw at each of them."""
    rows, cols, logp = run.log_probs(revealed)
    tokens = run.drawer(logp)()
    return revealed, rows, cols, tokens, logp.gather(1, tokens[:, None])[:, 0].exp()


def reveal_confidence(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
    """``confidence``: reveal the ``count`` drawn tokens of highest probability in each row."""
    rows, cols, logp = run.log_probs(masked)  # logp (N, V) at the masked positions
    if run.config.min_gap > 1:  # spaced: draw everywhere, then pick down the ranking
        revealed, tokens, p_token = most_confident(logp, masked, rows, cols, count, run.drawer(logp), run.pick)
        return _at(revealed, rows, cols, tokens, p_token)
    choose = most_confident if logp.shape[-1] <= DRAW_ALL_UP_TO else _most_confident_in_rounds
    revealed, tokens, p_token = choose(logp, masked, rows, cols, count, run.drawer(logp))
    return _at(revealed, rows, cols, tokens, p_token)


def most_confident(logp, masked, rows, cols, count, draw, pick=None) -> tuple[torch.Tensor, ...]:
    """Draw at every masked position, reveal each row's ``count[b]`` most probable draws.

    ``logp`` (N, V) are the log-probs at (``rows``, ``cols``) = ``masked.nonzero()``;
    ``draw(idx)`` draws rows ``idx`` (all without); ``pick`` (default `top_per_row`)
    chooses from the scores. Returns (revealed (B, L), tokens (N,), probability of each
    token (N,)).
    """
    tokens = draw()  # (N,)
    p_token = logp.gather(1, tokens[:, None])[:, 0].exp()  # p_T(v_i)
    scores = _on_canvas(p_token, rows, cols, masked.shape)
    return (pick or top_per_row)(scores, masked, count), tokens, p_token


def _at_least_one(masked: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Long (B,): ``count`` but at least one in every row that still has a masked position."""
    return count.clamp(min=1).minimum(masked.sum(1))


def reveal_threshold(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
    """``threshold`` (Fast-dLLM): every drawn token with p_T(v_i) >= threshold, and at least the
    ``count`` (at least one) most probable draws, so the schedule still bounds the passes."""
    rows, cols, logp = run.log_probs(masked)
    draw = run.drawer(logp)
    choose = most_confident if logp.shape[-1] <= DRAW_ALL_UP_TO else _most_confident_in_rounds
    revealed, tokens, p_token = choose(logp, masked, rows, cols, _at_least_one(masked, count), draw)
    undrawn = p_token.isnan()  # (N,) positions the fast path did not draw (none in plain form)
    if bool(undrawn.any()):
        # a drawn token can reach the threshold only where the position's largest probability does
        todo = (undrawn & (logp.amax(-1).exp() >= run.config.threshold)).nonzero()[:, 0]
        tokens[todo] = draw(todo)
        p_token[todo] = logp[todo, tokens[todo]].exp()
    # reveal i  <=>  p_T(v_i) >= threshold  (or i is among the most probable draws)
    revealed[rows, cols] |= p_token >= run.config.threshold
    return _at(revealed, rows, cols, tokens, p_token)


def _reveal_by_score(score: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Reveal]:
    """A rule revealing the highest ``score(logp)`` first; the score does not depend on the draw,
    so tokens are drawn only where revealed (the uniforms of all rows are taken all the same)."""

    def reveal(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
        rows, cols, logp = run.log_probs(masked)
        draw = run.drawer(logp)
        revealed = run.pick(_on_canvas(score(logp), rows, cols, masked.shape), masked, count)
        where = revealed[rows, cols].nonzero()[:, 0]
        tokens = draw(where)
        return revealed, rows[where], cols[where], tokens, logp[where, tokens].exp()

    return reveal


def margin(logp: torch.Tensor) -> torch.Tensor:
    """p^(1) - p^(2) per row of ``logp`` (N, V): top-1 minus top-2 probability."""
    top2 = draws._topk(logp, 2)[0].exp()  # (N, 2)
    return top2[:, 0] - top2[:, 1]


def negative_entropy(logp: torch.Tensor) -> torch.Tensor:
    """-H per row of ``logp`` (N, V): the lowest entropy goes first."""
    return -draws.entropy(logp)


def entropy_bound_count(entropy: torch.Tensor, masked: torch.Tensor, bound: float) -> torch.Tensor:
    """Long (B,): the largest k whose k lowest entropies, minus their largest, sum to <= ``bound``.

    ``entropy`` (B, L) holds H_i at the ``masked`` positions. Sorted ascending, the
    set of the first k has its largest last, so sum - max is the sum of the first k - 1.
    """
    ordered = entropy.masked_fill(~masked, float("inf")).sort(1).values  # (B, L) lowest first
    # before_j = sum_{j' < j} H_(j'): the sum of the set {0..j} minus its largest H_(j)
    before = ordered.cumsum(1) - ordered  # (B, L); nan past the masked positions (inf - inf)
    columns = torch.arange(masked.shape[1], device=masked.device)
    inside = columns < masked.sum(1, keepdim=True)  # (B, L)
    return ((before <= bound) & inside).sum(1)


def reveal_entropy_bounded(run: Run, masked: torch.Tensor, count: torch.Tensor) -> Reveal:
    """``entropy-bound`` (EB-sampler): lowest entropy first, the most positions whose summed
    entropy minus its largest stays <= the bound, and at least ``count`` (at least one)."""
    rows, cols, logp = run.log_probs(masked)
    draw = run.drawer(logp)
    entropy = torch.zeros(masked.shape, dtype=logp.dtype, device=masked.device)  # (B, L)
    entropy[rows, cols] = draws.entropy(logp)  # H_i = -sum_v p_T,i(v) log p_T,i(v)
    k = entropy_bound_count(entropy, masked, run.config.entropy_bound)
    revealed = top_per_row(-entropy, masked, k.maximum(_at_least_one(masked, count)))
    where = revealed[rows, cols].nonzero()[:, 0]
    tokens = draw(where)
    return revealed, rows[where], cols[where], tokens, logp[where, tokens].exp()


def hide(
    run: Run, active: torch.Tensor, target: torch.Tensor, busiest: torch.Tensor
) -> torch.Tensor:
    """ReMDM remasking before the step's denoiser call: hide revealed tokens of the block.

    Each revealed token is hidden with probability eta (r = floor(eta * revealed + u),
    u ~ U[0, 1) per row), capped as in ReMDM by the tokens the schedule still wants masked
    after the step (sigma_max), and so that the step reveals no more tokens than the
    schedule's busiest step. ``remask-cap`` hides uniformly at random; ``remask-conf`` with
    weights softmax(-psi), psi the probability a token had when revealed, so unlikely
    tokens go first. Returns hidden (B, L).
    """
    xt, mask_id = run.xt, run.mask_id
    shown = active & (xt != mask_id)  # (B, L) revealed tokens of the block
    scheduled = (active & (xt == mask_id)).sum(1) - target  # (B,) reveals the schedule wants
    u = torch.rand(len(xt), dtype=torch.float64, generator=run.generator, device=xt.device)
    # r = min(floor(eta * revealed + u), m_s, busiest - scheduled)
    r = (run.config.remask_eta * shown.sum(1) + u).floor().long()
    r = r.minimum(target).minimum(busiest - scheduled)
    if run.config.strategy == "remask-cap":
        keys = run.noise()  # (B, L) a uniformly random subset
    else:
        # weighted sampling without replacement (Efraimidis-Spirakis): the r largest log(u) / w
        keys = run.noise(torch.float64).log() * run.probs.double().nan_to_num(0.0).exp()
    hidden = top_per_row(keys, shown, r.clamp(min=0))
    xt[hidden] = mask_id
    run.probs[hidden] = float("nan")
    return hidden


def resample(run: Run, active: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``resample``: redraw every ``active`` position, then mask ``target`` (B,) of them again.

    The re-masked subset does not depend on the draws, so it is picked first and
    tokens are drawn only where they stay. Returns the changed positions (B, L).
    """
    xt, previous = run.xt, run.xt.clone()
    remask = top_per_row(run.noise(), active, target)
    rows, cols, logp = run.log_probs(active & ~remask)
    tokens = run.drawer(logp)()
    xt[rows, cols] = tokens
    run.probs[rows, cols] = logp.gather(1, tokens[:, None])[:, 0].exp().float()
    xt[remask] = run.mask_id
    run.probs[remask] = float("nan")
    return (xt != previous) & (xt != run.mask_id)


# name -> rule; `resample` alone has another signature (run, active, target): the loop calls it
# apart, as it rewrites revealed tokens too
REVEAL: dict[str, Callable] = {
    "random": reveal_random,
    "dilated": reveal_dilated,
    "confidence": reveal_confidence,
    "margin": _reveal_by_score(margin),
    "entropy": _reveal_by_score(negative_entropy),
    "resample": resample,
    "threshold": reveal_threshold,
    "entropy-bound": reveal_entropy_bounded,
    "remask-cap": reveal_random,  # after `hide`
    "remask-conf": reveal_random,  # after `hide`
}
STRATEGIES = tuple(REVEAL)


# ---------------------------------------------------------------- fast path


def _most_confident_in_rounds(logp, masked, rows, cols, count, draw) -> tuple[torch.Tensor, ...]:
    """Fast path of `most_confident`: the same result, drawing only where a draw could win.

    A drawn token's probability is at most its position's largest probability, its
    bound. So positions are drawn in rounds, in order of their bound: first the
    ``count[b]`` highest, then twice as many, and so on, while any undrawn position
    has a bound that reaches the ``count[b]``-th best probability drawn so far in its
    row; once none does, no undrawn position could make the cut. ``draw(idx)`` draws
    each row from its own uniform, so the tokens are those of drawing everywhere.
    Tokens and probabilities are meaningful where drawn (nan probability elsewhere).
    """
    n, device = len(logp), logp.device
    bound = logp.amax(-1).exp()  # (N,) the largest probability at each position
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    p_token = torch.full((n,), float("nan"), dtype=logp.dtype, device=device)
    scores = torch.full(masked.shape, float("-inf"), dtype=logp.dtype, device=device)  # drawn p
    rank = _row_ranks(_on_canvas(bound, rows, cols, masked.shape))[rows, cols]  # (N,) in-row place
    budget = count.clone()  # (B,) positions drawn in each row by the end of this round
    todo = rank < budget[rows]
    while True:
        where = todo.nonzero()[:, 0]
        tokens[where] = draw(where)
        p_token[where] = logp[where, tokens[where]].exp()
        scores[rows[where], cols[where]] = p_token[where]
        # the count[b]-th best drawn probability of each row (+inf when nothing is to be revealed)
        ranked = scores.sort(1, descending=True).values  # (B, L)
        worst = ranked.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0]
        worst = worst.masked_fill(count <= 0, float("inf"))
        needed = p_token.isnan() & (bound >= worst[rows])  # (N,) could still make the cut
        if not bool(needed.any()):
            return top_per_row(scores, masked, count), tokens, p_token
        budget = 2 * budget
        todo = needed & (rank < budget[rows])
