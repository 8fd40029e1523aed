"""The explorers' tables as HTML: a schedule step by step, the sampler's filter on a distribution.

`schedule_table_html` lists, for a schedule, the tokens still masked and revealed
at each step (`tdlib.schedules.masked_counts`). `kept_distribution` and
`sampling_table_html` show which tokens a draw picks from: they call the sampler's
own filter (`tdlib.draws.filter_log_probs`) with a `tdlib.sample.SamplerConfig`,
so the explorer and the sampler cannot disagree. Pure functions, no Jupyter import;
`tdlib.widgets` wraps them in controls.
"""

from __future__ import annotations

import html

import numpy as np
import torch

from tdlib import draws
from tdlib.errors import require
from tdlib.pieces import candidate_label
from tdlib.render import FONT, themed
from tdlib.sample import SamplerConfig, sampler_config
from tdlib.schedules import masked_counts


def schedule_table_html(schedule: str, num_steps: int, num_masked: int) -> str:
    """HTML table: tokens still masked and revealed at each step of a schedule."""
    counts = masked_counts(schedule, num_masked, num_steps)  # length num_steps + 1
    cell = "padding:0 8px;text-align:right;"
    rows = [
        f"<tr><th style='{cell}'>step s</th><th style='{cell}'>still masked</th>"
        f"<th style='{cell}'>revealed at s</th><th style='{cell}'>fraction masked</th></tr>"
    ]
    for s, count in enumerate(counts):
        revealed = "&ndash;" if s == 0 else str(counts[s - 1] - count)
        fraction = count / num_masked if num_masked else 0.0
        rows.append(
            f"<tr class='td-step'><td style='{cell}'>{s}</td><td style='{cell}'>{count}</td>"
            f"<td style='{cell}'>{revealed}</td><td style='{cell}'>{fraction:.2f}</td></tr>"
        )
    caption = (
        f"<caption>{html.escape(schedule)}: {num_masked} masked tokens, {num_steps} steps</caption>"
    )
    return (
        f"<table class='td-schedule' style='{FONT}font-size:12px;'>{caption}{''.join(rows)}</table>"
    )


def kept_distribution(
    logits: torch.Tensor, config: SamplerConfig | None = None, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens a draw of the sampler picks from, for each distribution of ``logits`` (..., V).

    Returns (probs, kept): ``kept`` the tokens `tdlib.draws.filter_log_probs` keeps
    at the config's temperature (greedy: the most likely; ``topk``: the ``top_k`` most
    likely; ``nucleus``: the smallest most-likely set whose mass reaches ``top_p``,
    including the token that crosses it; ``top_p=1`` keeps all), ``probs`` the kept
    distribution renormalised. ``options`` override fields of ``config`` by name.
    """
    config = sampler_config(config, **options)
    logits = torch.as_tensor(logits, dtype=torch.float64)  # (..., V)
    logp = draws.log_probs(logits.reshape(-1, logits.shape[-1]), config.temperature)  # (N, V)
    weights, ids = draws.filter_log_probs(logp, sampling=config.sampling, top_k=config.top_k,
                                          top_p=config.top_p)  # (N, K) each, 0 = dropped
    kept = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, ids, weights > 0)
    probs = torch.zeros_like(logp).scatter_(1, ids, weights)
    probs = probs / probs.sum(-1, keepdim=True)
    return probs.reshape(logits.shape), kept.reshape(logits.shape)


def as_logits(logits_or_probs: torch.Tensor | np.ndarray, kind: str = "auto") -> torch.Tensor:
    """One distribution (V,) as float64 logits; "auto" takes values >= 0 summing to 1 as probs."""
    values = logits_or_probs
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    values = torch.as_tensor(np.asarray(values), dtype=torch.float64).reshape(-1)  # (V,)
    require(kind in ("auto", "logits", "probs"), f"kind must be auto, logits or probs, got {kind!r}")
    if kind == "auto":
        is_probs = bool(
            (values >= 0).all() and (values <= 1).all() and abs(float(values.sum()) - 1) < 1e-3
        )
        kind = "probs" if is_probs else "logits"
    return values.log() if kind == "probs" else values


def _settings(config: SamplerConfig) -> str:
    """The filter's settings as the table's summary shows them."""
    if config.sampling == "greedy":
        return "greedy"
    top_k = config.top_k if config.sampling == "topk" else "off"
    top_p = config.top_p if config.sampling == "nucleus" else 1.0
    return f"T={config.temperature:g}, top-k={top_k}, top-p={top_p:g}"


def sampling_table_html(
    logits: torch.Tensor | np.ndarray,
    tokenizer,
    config: SamplerConfig | None = None,
    *,
    num_candidates: int = 12,
    **options,
) -> str:
    """HTML table of the top candidates: p at T=1, p at temperature T, and the kept, renormalised p.

    The filter is the sampler's, set by ``config`` and ``options`` (`kept_distribution`).
    """
    config = sampler_config(config, **options)
    logits = as_logits(logits, "logits")
    base = torch.softmax(logits, dim=-1)  # (V,)
    kept_p, kept = kept_distribution(logits, config)
    greedy = config.sampling == "greedy"  # the T -> 0 limit: all mass on the most likely token
    temperature = 0 if greedy else config.temperature
    tempered = kept_p if greedy else torch.softmax(logits / temperature, dim=-1)
    order = base.argsort(descending=True, stable=True)[:num_candidates]
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in order])
    cell = "padding:0 6px;"
    rows = [
        f"<tr><th style='{cell}'>#</th><th style='{cell}'>token</th><th style='{cell}'>p (T=1)</th>"
        f"<th style='{cell}'>p (T={temperature:g})</th><th style='{cell}'>kept p</th><th></th></tr>"
    ]
    for rank, (i, piece) in enumerate(zip(order.tolist(), pieces, strict=True), start=1):
        cls = "td-kept" if kept[i] else "td-dropped"
        look = "" if kept[i] else f"{themed(3, '#aaa')}text-decoration:line-through;"
        width = 160 * float(kept_p[i])
        bar = f"<div style='background:#4a7ab0;height:10px;width:{width:.1f}px'></div>"
        rows.append(
            f"<tr class='{cls}' style='{look}'><td style='{cell}'>{rank}</td>"
            f"<td style='{cell}font-family:monospace'>{html.escape(candidate_label(piece))}</td>"
            f"<td style='{cell}'>{float(base[i]):.3f}</td>"
            f"<td style='{cell}'>{float(tempered[i]):.3f}</td>"
            f"<td style='{cell}'>{float(kept_p[i]):.3f}</td><td>{bar}</td></tr>"
        )
    summary = (
        f"<div class='td-summary' style='{FONT}font-size:12px;{themed(2, '#555')}'>"
        f"kept {int(kept.sum())} of {kept.numel()} tokens ({_settings(config)})</div>"
    )
    return (
        f"<table class='td-sampling' style='{FONT}font-size:12px;'>{''.join(rows)}</table>{summary}"
    )
