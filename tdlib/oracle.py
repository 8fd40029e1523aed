"""An exact denoiser for a first-order Markov chain: ground truth for tests.

For a chain with initial distribution ``pi`` and transition matrix ``A`` over a
small vocabulary, the exact conditional of every hidden position given the
visible ones, ``p(x_i | x_visible)``, follows from the forward-backward
recursions. A sampler driven by this denoiser must reproduce the chain's
distribution over sequences, and the NELBO computed with it must equal the
exact negative log-likelihood; so the sampler and the bounds can be tested
without any trained network. This module is not a model of text.

Token ids ``0..V-1`` are the chain's states; ``mask_id = V`` marks hidden
positions, so the denoiser's logits have ``V + 1`` columns, the last at -inf.
"""

from __future__ import annotations

import torch


class MarkovChain:
    """A first-order Markov chain over ``num_states`` tokens with an exact denoiser."""

    def __init__(self, initial: torch.Tensor, transition: torch.Tensor):
        self.initial = initial.double() / initial.sum()  # (V,)
        self.transition = transition.double() / transition.sum(-1, keepdim=True)  # (V, V)
        self.num_states = int(initial.numel())
        self.mask_id = self.num_states

    @classmethod
    def random(cls, num_states: int = 4, seed: int = 0, concentration: float = 0.5) -> MarkovChain:
        """A chain with Dirichlet(concentration) rows: small values give peaked transitions."""
        g = torch.Generator().manual_seed(seed)
        alpha = torch.full((num_states + 1, num_states), float(concentration), dtype=torch.float64)
        rows = torch._standard_gamma(alpha, generator=g)
        return cls(rows[0], rows[1:])

    def sample(self, num: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` sequences of ``length`` tokens, shape (num, length)."""
        x = torch.empty(num, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial.expand(num, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.transition[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats for sequences x of shape (B, L)."""
        lp = self.initial.log()[x[:, 0]]
        lp = lp + self.transition.log()[x[:, :-1], x[:, 1:]].sum(-1)
        return lp

    def all_sequences(self, length: int) -> torch.Tensor:
        """Every sequence of ``length`` tokens, shape (V**length, length)."""
        grids = torch.cartesian_prod(*[torch.arange(self.num_states)] * length)
        return grids.reshape(-1, length)

    def marginals(self, xt: torch.Tensor) -> torch.Tensor:
        """p(x_i = v | visible tokens of xt) for every position, shape (B, L, V), float64.

        Visible positions get a one-hot row on their token.
        """
        batch, length = xt.shape
        v = self.num_states
        # evidence[b, i, s] = 1 if state s is compatible with what position i shows
        visible = xt != self.mask_id
        evidence = torch.ones(batch, length, v, dtype=torch.float64)
        onehot = torch.nn.functional.one_hot(xt.clamp(max=v - 1), v).double()
        evidence = torch.where(visible[..., None], onehot, evidence)
        # forward: alpha_i(s) proportional to p(evidence_1..i, x_i = s), normalised per step
        alpha = torch.empty(batch, length, v, dtype=torch.float64)
        a = self.initial * evidence[:, 0]
        alpha[:, 0] = a / a.sum(-1, keepdim=True)
        for i in range(1, length):
            a = (alpha[:, i - 1] @ self.transition) * evidence[:, i]
            alpha[:, i] = a / a.sum(-1, keepdim=True)
        # backward: beta_i(s) proportional to p(evidence_{i+1..L} | x_i = s)
        beta = torch.ones(batch, length, v, dtype=torch.float64)
        for i in range(length - 2, -1, -1):
            b = (self.transition @ (evidence[:, i + 1] * beta[:, i + 1]).T).T
            beta[:, i] = b / b.sum(-1, keepdim=True)
        post = alpha * beta
        return post / post.sum(-1, keepdim=True)

    def __call__(self, xt: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser interface: logits of shape (B, L, V + 1); the mask column is -inf."""
        logp = self.marginals(xt).log()
        mask_col = torch.full((*xt.shape, 1), float("-inf"), dtype=torch.float64)
        return torch.cat([logp, mask_col], dim=-1)
