"""The sampler: write text by iterative unmasking, and record the whole trajectory.

`sample` starts from a canvas whose positions equal to ``mask_id`` are to be
generated and runs ``num_steps`` denoiser calls (at most, for the `ADAPTIVE`
strategies). Each step of the loop

1. asks the schedule how many positions of each row stay masked after it
   (`tdlib.schedules.step_targets`, per row and per block);
2. lets the strategy (`tdlib.strategies.REVEAL`) call the denoiser once and pick the
   positions to reveal: ``logits = denoiser(xt)  # (B, L, V)``, or only at the
   positions it will draw at when the denoiser ``accepts_positions``;
3. draws their tokens (greedy, top-k or nucleus at a temperature, `tdlib.draws`) and
   writes them into the canvas.

Revealed tokens stay fixed in every strategy but ``resample`` and ``remask-*``. All
samples of a call run as one batch; the only Python loop is over steps. Scores
("probabilities") are those of softmax(logits / T), before top-k or nucleus
truncation. Draws are exact inverse-CDF draws in float64 from an explicit
generator, so the same seed gives the same output.

`SamplerConfig` holds every option of the sampler, its default and its check, once.
Canvases, tokenizers and text are `tdlib.canvas` (`generate`); this module loads no
model and renders nothing; `tdlib.render` draws the `Trajectory` it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from tdlib.draws import SAMPLINGS
from tdlib.errors import require
from tdlib.schedules import SCHEDULES, block_plan, step_targets
from tdlib.strategies import ADAPTIVE, REMASKING, REVEAL, SPACED, STRATEGIES, Run, hide, resample

if TYPE_CHECKING:
    from tdlib.model import Denoiser


def _option(default, help: str, **flag):
    """A `SamplerConfig` field: its default, and the ``help`` (and ``flag``, ``choices``,
    ``type``) of its `tdlib generate` flag."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class SamplerConfig:
    """Every option of the sampler, with its default; checked once, when made.

    ``generate(model, tokenizer, config)`` or, for short, ``generate(model, tokenizer,
    num_steps=8, strategy="random")``; `dataclasses.replace` makes a variant. A new
    option is one field here and its check in `__post_init__`; the command line
    grows its flag from the field.
    """

    num_steps: int = _option(
        16, "denoising steps: one forward pass each (threshold and entropy-bound may use fewer); "
        "16 is a quarter of the default canvas, where dilated order kept the toy language's grammar",
        flag="--steps")
    schedule: str = _option("linear", "tokens masked after each step", choices=SCHEDULES)
    strategy: str = _option(
        "dilated",
        "which positions to reveal at each step. dilated (default) reveals together positions "
        "far apart, which depend on each other least: on the toy language it kept 94%% of "
        "sentences grammatical at a quarter of the passes (random order 74%%) with the "
        "language's own variety of words, while confidence repeats itself "
        "(bench/toy_samplers.py). resample is the original experiment's method; threshold and "
        "entropy-bound may finish in fewer passes than --steps; remask-* may hide tokens again",
        choices=STRATEGIES)
    sampling: str = _option("topk", "how a token is drawn", choices=SAMPLINGS)
    temperature: float = _option(1.0, "softmax temperature, > 0")
    top_k: int = _option(50, "tokens kept by --sampling topk")
    top_p: float = _option(0.9, "nucleus mass for --sampling nucleus, in (0, 1]")
    threshold: float = _option(
        0.9, "--strategy threshold: reveal every token drawn with probability >= F, "
        "at least one per pass")
    entropy_bound: float = _option(
        1.0, "--strategy entropy-bound: reveal lowest-entropy positions while their "
        "summed entropy minus the largest is <= F nats")
    remask_eta: float = _option(
        0.1, "--strategy remask-cap/remask-conf: chance that a revealed token is hidden "
        "again at a step")
    block_length: int | None = _option(
        None, "generate blocks of N tokens left to right (semi-autoregressive); "
        "--steps are split between blocks", type=int)
    min_gap: int = _option(
        0, "no two positions revealed in one pass closer than G columns (random, dilated, "
        "confidence, margin, entropy); 0 or 1 leaves the strategy as it is", flag="--min-gap")

    def __post_init__(self) -> None:
        """Raise `UserError` with a helpful one-line message for any invalid option."""
        require(self.num_steps >= 1, f"--steps must be at least 1, got {self.num_steps}")
        for name, value, known in (("schedule", self.schedule, SCHEDULES),
                                   ("strategy", self.strategy, STRATEGIES),
                                   ("sampling", self.sampling, SAMPLINGS)):
            require(value in known, f"unknown {name} {value!r}; choose one of {', '.join(known)}")
        t = self.temperature
        require(t > 0 and math.isfinite(t),
              f"--temperature must be > 0, got {t}; use --sampling greedy for temperature 0")
        require(self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        require(0 < self.top_p <= 1,
              f"--top-p must be in (0, 1], got {self.top_p}; 1 keeps the whole distribution")
        require(0 < self.threshold <= 1, f"--threshold must be in (0, 1], got {self.threshold}; "
                                       "1 reveals one token per pass")
        bound = self.entropy_bound
        require(bound >= 0 and math.isfinite(bound),
              f"--entropy-bound must be a finite number of nats >= 0, got {bound}; "
              "0 reveals one token per pass")
        require(0 <= self.remask_eta <= 1, f"--remask-eta must be in [0, 1], got {self.remask_eta}; "
                                         "0 never hides a token")
        require(self.block_length is None or self.block_length >= 1,
              f"--block-length must be at least 1, got {self.block_length}")
        require(self.min_gap >= 0, f"--min-gap must be at least 0, got {self.min_gap}")
        require(self.min_gap <= 1 or self.strategy in SPACED,
              f"--min-gap spaces the strategies that rank positions ({', '.join(SPACED)}), "
              f"not {self.strategy}")


def sampler_config(config: SamplerConfig | None = None, **options) -> SamplerConfig:
    """``config`` (default: `SamplerConfig()`) with the ``options`` given by name replaced."""
    config = config or SamplerConfig()
    return replace(config, **options) if options else config


@dataclass
class Trajectory:
    """Everything a sampling run did, step by step, for display and analysis."""

    tokens: torch.Tensor  # (S+1, B, L) canvas after each step; tokens[0] is the initial canvas
    revealed: torch.Tensor  # (S+1, B, L) newly revealed (or changed, for resample) at step s
    probs: torch.Tensor  # (S+1, B, L) probability of the token shown; nan if masked or given
    mask_id: int
    given: torch.Tensor  # (B, L) positions fixed from the start (special tokens, prefix)
    forward_passes: int
    seconds: float

    @property
    def passes_per_row(self) -> torch.Tensor:
        """Long (B,): the steps in which each row still had a masked position (its own passes)."""
        return (self.tokens[:-1] == self.mask_id).any(-1).sum(0)

    @property
    def final(self) -> torch.Tensor:
        """The finished canvas, shape (B, L)."""
        return self.tokens[-1]

    @property
    def num_steps(self) -> int:
        """Number of sampling steps S."""
        return self.tokens.shape[0] - 1


def _snapshot(*canvases: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CPU copies of the canvases after a step (the sampler changes them in place)."""
    return tuple(c.to("cpu", copy=True) for c in canvases)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_init: torch.Tensor,
    config: SamplerConfig | None = None,
    *,
    mask_id: int,
    forbidden_ids: Sequence[int] = (),
    forbidden_at: dict[int, Sequence[int]] | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    **options,
) -> Trajectory:
    """Fill every ``mask_id`` position of ``x_init`` (B, L) in ``config.num_steps`` denoiser calls.

    ``options`` override fields of ``config`` by name (`sampler_config`).
    ``forbidden_ids`` are never drawn anywhere; ``forbidden_at`` maps a column to
    extra ids never drawn there. With ``block_length``, blocks of that many columns
    are generated left to right, each following the schedule within its own steps.
    An `ADAPTIVE` strategy skips a block's remaining steps once the block is finished.
    """
    config = sampler_config(config, **options)
    start = time.perf_counter()
    xt = x_init.clone()  # (B, L)
    generated = xt == mask_id  # (B, L) positions the sampler writes
    probs = torch.full(xt.shape, float("nan"), device=xt.device)  # (B, L) p of each shown token
    plan = block_plan(generated, config.num_steps, config.block_length)
    run = Run(denoiser, config, xt, probs, mask_id, generator, attention_mask, forbidden_ids,
              forbidden_at, generated=generated, blocks=plan)
    history = [_snapshot(xt, torch.zeros_like(generated), probs)]
    for block, target, busiest in step_targets(generated, config.schedule, plan):
        active = generated & block  # (B, L) generated positions of the current block
        masked = active & (xt == mask_id)  # (B, L)
        if config.strategy in ADAPTIVE and not masked.any():
            continue  # the block is finished early: no forward pass for its remaining steps
        if config.strategy == "resample":
            revealed = resample(run, active, target)
        else:
            if config.strategy in REMASKING:
                hide(run, active, target, busiest)
                masked = active & (xt == mask_id)  # (B, L) with the hidden tokens
            # reveal as many as take the masked count down to the schedule's target
            count = masked.sum(1) - target  # (B,)
            revealed, rows, cols, tokens, p_token = REVEAL[config.strategy](run, masked, count)
            xt[rows, cols] = tokens
            probs[rows, cols] = p_token.float()
        history.append(_snapshot(xt, revealed, probs))
    tokens, revealed, probs = (torch.stack(h) for h in zip(*history, strict=True))
    return Trajectory(tokens=tokens, revealed=revealed, probs=probs, mask_id=mask_id,
                      given=~generated.cpu(), forward_passes=run.forward_passes,
                      seconds=time.perf_counter() - start)
