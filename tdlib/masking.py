"""The forward process: hide tokens behind ``<mask>`` at a mask ratio t.

Absorbing-state diffusion corrupts clean ids ``x0`` into ``xt`` by replacing each
non-protected token by ``mask_id`` independently with probability ``t``. Protected
positions (special tokens, padding and the first ``prefix_length`` content tokens,
the prompt) are never masked. The training collator picks ``t`` per batch (as the
original experiment did), per example, or continuously from U(eps, 1) (optionally
stratified over the batch), and returns the batch with labels that are -100
wherever nothing was masked. The mask ratios ``ratios`` and their check live here
too. This module does not compute losses or touch models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from tdlib.errors import require

if TYPE_CHECKING:
    from tdlib.data import Examples

ORIGINAL_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # the original experiment's mask ratios
MASKING_MODES = ("batch", "example", "continuous", "stratified")  # how the collator draws t
IGNORE_INDEX = -100  # the label of a position no loss scores


def check_ratios(ratios: Sequence[float], distinct: bool = False) -> tuple[float, ...]:
    """Validate mask ratios: a non-empty list, each in (0, 1] (and, if asked, no two equal)."""
    ratios = tuple(float(r) for r in ratios)
    require(len(ratios) > 0, "give at least one mask ratio")
    for r in ratios:
        require(0.0 < r <= 1.0, f"mask ratio {r} is outside (0, 1]; ratios are fractions such as 0.5")
    require(not distinct or len(set(ratios)) == len(ratios), f"mask ratios must be distinct, got {list(ratios)}")
    return ratios


def parse_ratios(text: str) -> tuple[float, ...]:
    """Parse ``"1.0,0.5,0.1"`` into validated ratios."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        require(False, f"--mask-ratios must be comma-separated numbers such as 1.0,0.5,0.1, got {text!r}")
    return check_ratios(values)


def protected_positions(
    input_ids: torch.Tensor,
    tokenizer,
    attention_mask: torch.Tensor | None = None,
    prefix_length: int = 0,
) -> torch.Tensor:
    """True where a token must never be masked: special tokens, padding, and the prefix."""
    special = torch.isin(input_ids, torch.tensor(sorted(tokenizer.all_special_ids), device=input_ids.device))
    protected = special.clone()  # (B, L)
    if attention_mask is not None:
        protected |= attention_mask == 0
    if prefix_length > 0:
        # rank of each content token within its row: 1, 2, ... (0 on special tokens)
        content_rank = torch.cumsum((~special).long(), dim=1) * (~special).long()
        protected |= (content_rank >= 1) & (content_rank <= prefix_length)
    return protected


def content_ids(examples: Examples, tokenizer) -> torch.Tensor:
    """The token ids (flat) of ``examples`` at the positions training may mask and score."""
    return examples.input_ids[~protected_positions(examples.input_ids, tokenizer, examples.attention_mask)]


def mask_tokens(
    x0: torch.Tensor,
    t: float | torch.Tensor,
    mask_id: int,
    protected: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each unprotected token of ``x0`` with probability ``t``; returns (xt, masked)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x0.device)
    if t.dim() == 1:
        t = t[:, None]  # one ratio per row: (B, 1)
    u = torch.rand(x0.shape, generator=generator, device=x0.device)  # (B, L)
    masked = u < t
    if protected is not None:
        masked &= ~protected
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked


class MaskingCollator:
    """Collate examples into a noised batch: input_ids=xt, attention_mask, labels, t, scorable.

    ``scorable`` marks the positions that could have been masked (the complement
    of `protected_positions`); the ELBO weighting normalises by their number.

    ``mode``: ``batch`` draws one ratio from ``ratios`` for the whole batch (the
    original experiment), ``example`` one per example, ``continuous`` draws t ~ U(eps, 1) per example,
    ``stratified`` does the same with the batch's t spread evenly over (eps, 1):
    t_i = eps + (1 - eps) * ((i + u) / B) mod 1 with one u ~ U(0, 1) per batch, in
    shuffled order. Each t_i is still uniform, so the ELBO loss stays unbiased, but a
    batch never piles up at small t, where the 1/t weight makes the loss noisy.
    """

    def __init__(
        self,
        tokenizer,
        ratios: Sequence[float] = ORIGINAL_RATIOS,
        mode: str = "batch",
        prefix_length: int = 5,
        eps: float = 1e-3,
        seed: int | None = None,
    ):
        require(mode in MASKING_MODES, f"unknown masking mode {mode!r}: use one of {', '.join(MASKING_MODES)}")
        require(prefix_length >= 0, f"prefix length must be >= 0, got {prefix_length}")
        require(tokenizer.mask_token_id is not None, "the tokenizer has no mask token")
        self.tokenizer = tokenizer
        self.ratios = torch.tensor(check_ratios(ratios))
        self.mode = mode
        self.prefix_length = prefix_length
        self.eps = eps
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def draw_t(self, batch_size: int) -> torch.Tensor:
        """The mask ratio of each example, shape (B,)."""
        g = self.generator
        if self.mode == "batch":
            i = torch.randint(len(self.ratios), (1,), generator=g)
            return self.ratios[i].expand(batch_size).clone()
        if self.mode == "example":
            return self.ratios[torch.randint(len(self.ratios), (batch_size,), generator=g)]
        if self.mode == "stratified":
            u = torch.rand(1, generator=g)
            grid = (torch.arange(batch_size) + u) / batch_size  # one t in each 1/B slice of (0, 1)
            return self.eps + (1 - self.eps) * grid[torch.randperm(batch_size, generator=g)]
        return self.eps + (1 - self.eps) * torch.rand(batch_size, generator=g)

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        x0 = torch.stack([torch.as_tensor(e["input_ids"]) for e in examples])  # (B, L)
        if "attention_mask" in examples[0]:
            attention_mask = torch.stack([torch.as_tensor(e["attention_mask"]) for e in examples])  # (B, L)
        else:
            attention_mask = (x0 != self.tokenizer.pad_token_id).long()  # (B, L)
        t = self.draw_t(x0.shape[0])  # (B,)
        protected = protected_positions(x0, self.tokenizer, attention_mask, self.prefix_length)  # (B, L)
        xt, masked = mask_tokens(x0, t, self.tokenizer.mask_token_id, protected, self.generator)  # (B, L), (B, L)
        labels = torch.where(masked, x0, torch.full_like(x0, IGNORE_INDEX))  # (B, L) x0 where masked
        return {"input_ids": xt, "attention_mask": attention_mask, "labels": labels, "t": t, "scorable": ~protected}
