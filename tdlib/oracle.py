"""Exact hidden Markov models: ground truth for samplers, bounds and the toy language.

A hidden Markov model (HMM) has hidden states ``s = 0..S-1`` and tokens
``v = 0..V-1``: the first state is drawn from ``initial`` (S,), each next state
from a row of ``transition`` (S, S), and each state emits one token from its row
of ``emission`` (S, V). Everything here is exact, in float64:

- `HiddenMarkovModel.sample`: ancestral draws of tokens (and states);
- `HiddenMarkovModel.log_prob`: log p(x_1..n) of a sequence drawn from the start
  (a prefix: what follows position n is summed out, there is no end), by the
  scaled forward algorithm;
- `HiddenMarkovModel.marginals` and ``__call__``: the exact denoiser
  p(x_i = v | visible tokens), by forward-backward, where a position holding
  ``mask_id`` is summed out (its evidence is 1 for every state);
- `HiddenMarkovModel.possible`: whether p(x) > 0, by the same forward recursion
  on booleans (no float threshold);
- `HiddenMarkovModel.entropy_rate`: the entropy rate estimated from exact
  log-probabilities of long draws.

`MarkovChain` is the special case of one token per state (``emission`` is the
identity). A sampler driven by these denoisers must reproduce the model's
distribution, and the NELBO computed with them must equal the exact negative
log-likelihood; so samplers and bounds can be tested without a trained network.

By default ``mask_id = V`` lies outside the vocabulary and the denoiser's logits
have ``V + 1`` columns, the last at -inf. A model over a tokenizer's vocabulary
can instead name one of its own ids (with a zero emission column) as
``mask_id``; then the logits have ``V`` columns. This module is not a model of
text (`tdlib.toylang` builds one on top of it) and learns nothing from data.
"""

from __future__ import annotations

import math

import torch


def _normalise(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``a`` divided by their sums, and the sums; an all-zero row stays zero."""
    total = a.sum(-1, keepdim=True)
    return a / torch.where(total > 0, total, torch.ones_like(total)), total[..., 0]


def _draw_rows(probs: torch.Tensor, given: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw from row ``given[n]`` of ``probs`` (K, V) for every n, shape (N,): one call per distinct row."""
    out = torch.empty_like(given)
    for k in given.unique().tolist():
        rows = given == k  # (N,)
        out[rows] = torch.multinomial(probs[k], int(rows.sum()), replacement=True, generator=generator)
    return out


class HiddenMarkovModel:
    """An HMM with float64 ``initial`` (S,), ``transition`` (S, S) and ``emission`` (S, V); exact inference."""

    def __init__(
        self,
        initial: torch.Tensor,
        transition: torch.Tensor,
        emission: torch.Tensor,
        mask_id: int | None = None,
    ):
        self.initial = initial.double() / initial.sum()  # (S,)
        self.transition = transition.double() / transition.sum(-1, keepdim=True)  # (S, S)
        self.emission = emission.double() / emission.sum(-1, keepdim=True)  # (S, V)
        self.num_states, self.vocab_size = self.emission.shape
        self.mask_id = self.vocab_size if mask_id is None else int(mask_id)
        if self.mask_id < self.vocab_size and bool((self.emission[:, self.mask_id] > 0).any()):
            raise ValueError(f"mask_id {self.mask_id} is a token some state emits")

    @classmethod
    def random(
        cls, num_states: int = 3, vocab_size: int = 4, seed: int = 0, concentration: float = 0.5
    ) -> HiddenMarkovModel:
        """An HMM with Dirichlet(concentration) rows: small values give peaked distributions."""
        g = torch.Generator().manual_seed(seed)
        alpha = torch.full((2 * num_states + 1, max(num_states, vocab_size)), float(concentration), dtype=torch.float64)
        rows = torch._standard_gamma(alpha, generator=g)
        initial, transition = rows[0, :num_states], rows[1 : num_states + 1, :num_states]
        return cls(initial, transition, rows[num_states + 1 :, :vocab_size])

    # ---- drawing -------------------------------------------------------------------------

    def sample_states(self, num: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` state paths of ``length`` steps, shape (num, length)."""
        z = torch.empty(num, length, dtype=torch.long)
        z[:, 0] = torch.multinomial(self.initial.expand(num, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            z[:, i] = torch.multinomial(self.transition[z[:, i - 1]], 1, generator=generator)[:, 0]
        return z

    def sample(
        self, num: int, length: int, generator: torch.Generator | None = None, return_states: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num`` token sequences of ``length`` from the start, shape (num, length); with their states on request."""
        z = self.sample_states(num, length, generator)  # (num, length)
        x = _draw_rows(self.emission, z.flatten(), generator).view_as(z)  # (num, length)
        return (x, z) if return_states else x

    def all_sequences(self, length: int) -> torch.Tensor:
        """Every token sequence of ``length``, shape (V**length, length), in base-V order."""
        grids = torch.cartesian_prod(*[torch.arange(self.vocab_size)] * length)
        return grids.reshape(-1, length)

    # ---- exact inference -----------------------------------------------------------------

    def evidence(self, xt: torch.Tensor) -> torch.Tensor:
        """p(what position i shows | state s): emission at visible tokens, 1 at ``mask_id``, shape (B, L, S)."""
        visible = xt != self.mask_id  # (B, L)
        ev = self.emission.T[xt.clamp(0, self.vocab_size - 1)]  # (B, L, S)
        return torch.where(visible[..., None], ev, torch.ones_like(ev))

    def forward(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled forward pass: alpha (B, L, S) = p(z_i | x_1..i) and log p(x_i | x_1..i-1) (B, L)."""
        ev = self.evidence(xt)  # (B, L, S)
        batch, length, _ = ev.shape
        alpha = torch.empty_like(ev)  # (B, L, S)
        log_c = torch.empty(batch, length, dtype=torch.float64)  # (B, L)
        # alpha_1(s) = pi(s) e_1(s) / c_1
        a = self.initial * ev[:, 0]  # (B, S)
        for i in range(length):
            if i > 0:
                # alpha_i(s) = sum_r alpha_{i-1}(r) A(r, s) e_i(s) / c_i
                a = (alpha[:, i - 1] @ self.transition) * ev[:, i]  # (B, S)
            alpha[:, i], c = _normalise(a)
            log_c[:, i] = c.log()  # c_i = p(x_i | x_1..i-1); -inf when impossible
        return alpha, log_c

    def backward(self, xt: torch.Tensor) -> torch.Tensor:
        """Scaled backward pass: beta (B, L, S) proportional to p(x_i+1..L | z_i = s) (rows sum to 1)."""
        ev = self.evidence(xt)  # (B, L, S)
        beta = torch.ones_like(ev)  # (B, L, S)
        for i in range(ev.shape[1] - 2, -1, -1):
            # beta_i(s) = sum_r A(s, r) e_{i+1}(r) beta_{i+1}(r), up to a constant
            # (computed as (A @ v^T)^T: with this order the result does not depend on the batch size)
            beta[:, i] = _normalise((self.transition @ (ev[:, i + 1] * beta[:, i + 1]).T).T)[0]  # (B, S)
        return beta

    def conditional_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i | x_1..i-1) in nats for every position, shape (B, L); 0 at ``mask_id``."""
        return self.forward(x)[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_1..n) in nats of sequences (B, n) drawn from the start (no end constraint), shape (B,)."""
        # log p(x) = sum_i log p(x_i | x_1..i-1)
        return self.conditional_log_probs(x).sum(-1)

    def marginals(self, xt: torch.Tensor) -> torch.Tensor:
        """p(x_i = v | visible tokens of xt) for every position, shape (B, L, V), float64.

        Visible positions get a one-hot row on their token. If the visible tokens
        are impossible together, the rows are all zero.
        """
        alpha, _ = self.forward(xt)  # (B, L, S)
        beta = self.backward(xt)  # (B, L, S)
        # p(z_i = s | visible) proportional to alpha_i(s) beta_i(s); at a masked i, e_i = 1
        posterior = _normalise(alpha * beta)[0]  # (B, L, S)
        # p(x_i = v | visible) = sum_s p(z_i = s | visible) E(s, v)
        probs = posterior @ self.emission  # (B, L, V)
        visible = xt != self.mask_id  # (B, L)
        onehot = torch.nn.functional.one_hot(xt.clamp(0, self.vocab_size - 1), self.vocab_size).double()
        return torch.where(visible[..., None], onehot, probs)

    def __call__(self, xt: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser interface: log-probabilities as logits; V + 1 columns (mask at -inf) when mask_id = V."""
        logits = self.marginals(xt).log()  # (B, L, V)
        if self.mask_id < self.vocab_size:
            return logits
        mask_col = torch.full((*xt.shape, 1), float("-inf"), dtype=torch.float64)
        return torch.cat([logits, mask_col], dim=-1)  # (B, L, V + 1)

    def possible(self, x: torch.Tensor) -> torch.Tensor:
        """Whether p(x) > 0 for each row of x (B, L), exactly: a forward pass on booleans, shape (B,).

        ``mask_id`` positions may hold any token; there is no end constraint.
        """
        allowed = self.evidence(x) > 0  # (B, L, S) states that can show position i
        step = (self.transition > 0).double()  # (S, S) 0/1; products of 0/1 sums stay exact integers
        # reach_1 = {s : pi(s) > 0 and e_1(s) > 0}
        reach = (self.initial > 0) & allowed[:, 0]  # (B, S)
        for i in range(1, x.shape[1]):
            # reach_i = {s : some r in reach_{i-1} has A(r, s) > 0, and e_i(s) > 0}
            reach = ((reach.double() @ step) > 0) & allowed[:, i]  # (B, S)
        return reach.any(-1)

    # ---- long-run quantities -------------------------------------------------------------

    def stationary(self) -> torch.Tensor:
        """The stationary distribution mu = mu A of the state chain (assumed irreducible), shape (S,)."""
        s = self.num_states
        # solve (A^T - I) mu = 0 with sum(mu) = 1 replacing the last equation
        system = self.transition.T - torch.eye(s, dtype=torch.float64)  # (S, S)
        system[-1] = 1.0
        rhs = torch.zeros(s, dtype=torch.float64)
        rhs[-1] = 1.0
        return torch.linalg.solve(system, rhs)

    def entropy_rate(
        self,
        num: int = 64,
        length: int = 2000,
        burn_in: int = 200,
        seed: int = 0,
        cost: torch.Tensor | None = None,
    ) -> dict:
        """Entropy rate in nats per token (and per unit of ``cost`` (V,), e.g. characters), estimated, with stderrs.

        Shannon-McMillan-Breiman: -1/n log p(x_1..n) -> H for one long draw. Each
        of ``num`` independent draws gives -mean_i log p(x_i | x_1..i-1) over
        positions after ``burn_in`` (which removes most of the start-up bias);
        the standard error is their spread over sqrt(num).
        """
        x = self.sample(num, length, torch.Generator().manual_seed(seed))  # (num, length)
        nats = -self.conditional_log_probs(x)[:, burn_in:]  # (num, n)
        per_draw = nats.mean(-1)  # (num,)
        out = {
            "nats_per_token": float(per_draw.mean()),
            "nats_per_token_stderr": float(per_draw.std() / math.sqrt(num)),
            "tokens": int(nats.numel()),
        }
        if cost is not None:
            units = cost.double()[x[:, burn_in:]].sum(-1)  # (num,)
            per_unit = nats.sum(-1) / units  # (num,)
            out["nats_per_unit"] = float(per_unit.mean())
            out["nats_per_unit_stderr"] = float(per_unit.std() / math.sqrt(num))
        return out


class MarkovChain(HiddenMarkovModel):
    """A first-order Markov chain over ``num_states`` tokens: an HMM whose state is its token."""

    def __init__(self, initial: torch.Tensor, transition: torch.Tensor):
        num_states = int(initial.numel())
        super().__init__(initial, transition, torch.eye(num_states, dtype=torch.float64))

    @classmethod
    def random(cls, num_states: int = 4, seed: int = 0, concentration: float = 0.5) -> MarkovChain:
        """A chain with Dirichlet(concentration) rows: small values give peaked transitions."""
        g = torch.Generator().manual_seed(seed)
        alpha = torch.full((num_states + 1, num_states), float(concentration), dtype=torch.float64)
        rows = torch._standard_gamma(alpha, generator=g)
        return cls(rows[0], rows[1:])

    def sample(self, num: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` sequences of ``length`` tokens, shape (num, length); the tokens are the states."""
        return self.sample_states(num, length, generator)
