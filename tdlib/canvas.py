"""Canvases and text: from a prompt to the sampler's starting canvas, and back to text.

`generate` is the high-level entry: tokenizer, canvas (`build_canvas`), the sampler
(`tdlib.sample.sample`), then the texts. A canvas is ``[start] prefix [mask] ... [mask]
[end]``, or, when the prompt holds the tokenizer's mask token, the prompt itself with
its mask tokens to fill. The first generated token of a word must start a word
(`tdlib.pieces.continuation_ids` are banned there). This module holds no sampling rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tdlib.data import boundary_ids
from tdlib.errors import require
from tdlib.pieces import continuation_ids
from tdlib.sample import SamplerConfig, Trajectory, sample, sampler_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tdlib.model import Denoiser


def build_canvas(
    tokenizer: PreTrainedTokenizerBase, prefix: str, max_length: int
) -> tuple[list[int], dict[int, list[int]] | None]:
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
        require(len(ids) <= room,
              f"the text is {len(ids)} tokens; --max-length {max_length} allows {room}")
        canvas = [start_id, *ids, end_id]
        # a mask after whitespace (or at the start) is a new word: no continuation piece there
        offsets = encoded["offset_mapping"]
        word_starts = [1 + i for i, (token, (begin, _)) in enumerate(zip(ids, offsets, strict=True))
                       if token == mask_id and (begin == 0 or text[begin - 1].isspace())]
        forbidden_at = dict.fromkeys(word_starts, continuation_ids(tokenizer))
    else:
        require(
            len(ids) < room,
            f"the prefix is {len(ids)} tokens, leaving no room in --max-length {max_length} "
            f"(at most {room - 1} prefix tokens); shorten the prefix or raise --max-length",
        )
        canvas = [start_id, *ids, *[mask_id] * (room - len(ids)), end_id]
        # the first generated token starts a new word (glued onto neither the prefix nor the start)
        forbidden_at = {1 + len(ids): continuation_ids(tokenizer)}
    return canvas, forbidden_at


def position_limit(model, tokenizer) -> int | None:
    """Longest canvas the model takes: its position embeddings, else the tokenizer's limit."""
    if isinstance(model, torch.nn.Module):
        from tdlib.model import max_sequence_length

        limit = max_sequence_length(model)
        if limit is not None:
            return limit
    limit = tokenizer.model_max_length
    return limit if limit <= 100_000 else None  # transformers uses a huge number for "no limit"


def _denoiser_and_device(model, device):
    """A denoiser for ``model`` and the device its inputs go to."""
    if isinstance(model, torch.nn.Module):
        from tdlib.model import as_denoiser

        if device is not None:
            model = model.to(device)
        # `sample` asks for logits only where it draws (`positions`): the LM head runs nowhere else
        return as_denoiser(model, masked_only=True), next(model.parameters()).device
    return model, torch.device(device or "cpu")


def _texts(
    tokenizer, final: torch.Tensor, prefix: str, prefix_tokens: int, infill: bool
) -> list[str]:
    """The texts of the finished canvases (B, L): the prefix, one space, the generated words."""
    if infill:
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in final]
    tails = [tokenizer.decode(row[1 + prefix_tokens:], skip_special_tokens=True).strip()
             for row in final]
    text = prefix.rstrip()
    return [f"{text} {tail}" if text else tail for tail in tails]


def generate(
    model: torch.nn.Module | Denoiser,
    tokenizer: PreTrainedTokenizerBase,
    config: SamplerConfig | None = None,
    *,
    prefix: str = "",
    num_samples: int = 1,
    max_length: int = 64,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    **options,
) -> tuple[list[str], Trajectory]:
    """Generate ``num_samples`` texts continuing ``prefix`` (or filling its mask tokens).

    Returns (texts, trajectory). The sampler runs with ``config`` (default
    `SamplerConfig()`), its fields overridden by ``options`` given by name, e.g.
    ``generate(model, tokenizer, num_steps=8, strategy="random")``. The canvas is
    ``[CLS] prefix [MASK] ... [MASK] [SEP]``, ``max_length`` tokens, with no end token
    right after the prefix; each text is the prefix, one space, then the generated
    words. ``model`` is a Hugging Face masked LM (moved to ``device`` when given) or
    any denoiser callable; ``seed=None`` draws a fresh seed.
    """
    config = sampler_config(config, **options)
    require(num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}")
    require(max_length >= 3,
          f"--max-length must be at least 3 (start, one token, end), got {max_length}")
    denoiser, device = _denoiser_and_device(model, device)
    limit = position_limit(model, tokenizer)
    require(limit is None or max_length <= limit,
          f"--max-length {max_length} exceeds the model's {limit} positions; "
          f"use --max-length {limit} or less")
    mask_id = tokenizer.mask_token_id
    canvas, forbidden_at = build_canvas(tokenizer, prefix, max_length)
    require(config.min_gap <= len(canvas) - 2,
          f"--min-gap {config.min_gap} is wider than the canvas ({len(canvas) - 2} tokens between "
          f"start and end); use a gap of at most {len(canvas) - 2}")
    prefix_tokens = len(canvas) - 2 - canvas.count(mask_id)  # continuation: tokens before masks
    x_init = torch.tensor([canvas] * num_samples, dtype=torch.long, device=device)  # (B, L)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    trajectory = sample(denoiser, x_init, config, mask_id=mask_id, generator=generator,
                        forbidden_ids=tokenizer.all_special_ids, forbidden_at=forbidden_at)
    infill = tokenizer.mask_token in prefix
    return _texts(tokenizer, trajectory.final, prefix, prefix_tokens, infill), trajectory
