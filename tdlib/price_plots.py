"""Figures of the price of parallel decoding (`tdlib.price`): dependence by distance, price by reveal order.

Like `tdlib.plots`, each function takes plain numbers and returns a
`matplotlib.figure.Figure` built without pyplot (Jupyter shows it inline;
`tdlib.plots.save_figure` writes it). Nothing here computes a price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure


def information_by_distance_figure(
    bits: Sequence[float] | torch.Tensor,
    *,
    label: str | None = None,
    log_scale: bool = True,
    title: str = "How much two words tell about each other, by distance",
) -> Figure:
    """Mutual information (bits) of two positions against their distance d = 1, 2, ...

    ``bits``: `tdlib.price.information_by_distance`'s output, entry d-1 for
    distance d. A log y axis shows the geometric fade of an HMM as a line.
    """
    values = [float(b) for b in (bits.tolist() if isinstance(bits, torch.Tensor) else bits)]
    distances = list(range(1, len(values) + 1))
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    shown = [(d, v) for d, v in zip(distances, values) if math.isfinite(v) and (v > 0 or not log_scale)]
    ax.plot([d for d, _ in shown], [v for _, v in shown], marker="o", label=label)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("distance d between the two positions (words)")
    ax.set_ylabel("I(x_i ; x_i+d), bits")
    ax.set_xticks(distances)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if label:
        ax.legend()
    return fig


def price_by_plan_figure(
    results: Mapping[str, Sequence[tuple[float, float, float]]],
    *,
    entropy_rate: float | None = None,
    log_scale: bool = False,
    title: str = "The price of revealing words together (exact denoiser)",
) -> Figure:
    """The price KL(p || q) in bits per token against forward passes, one line per reveal order.

    ``results``: order name -> [(passes, price, standard error), ...], e.g.
    ``{"random": [(6, 0.28, 0.01), (12, 0.12, 0.01)], "dilated": [...]}`` from
    `tdlib.price.parallel_price`. ``entropy_rate`` (bits per token), if given,
    is drawn as a dashed reference: the whole information a token carries.
    """
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, points in results.items():
        points = sorted(points)
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=name)
    if entropy_rate is not None:
        ax.axhline(entropy_rate, color="grey", linestyle="--", label="entropy rate")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("forward passes")
    ax.set_ylabel("KL(language || sampler), bits per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
