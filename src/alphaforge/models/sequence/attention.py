"""Heatmaps of the Transformer's attention weights (:meth:`SequenceForecaster.attention_weights`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_attention(weights: np.ndarray, path: Path, *, title: str = "attention") -> Path:
    """Write a grid of attention heatmaps (one per layer and head) to the PNG ``path``.

    ``weights`` is one row's ``(n_layers, n_heads, lookback, lookback)`` from
    :meth:`SequenceForecaster.attention_weights`, or several rows' ``(n_rows, ...)`` which are
    averaged (ignoring NaN rows). Uses the Agg canvas directly, so no GUI and no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 5:
        with np.errstate(invalid="ignore"):
            array = np.nanmean(array, axis=0)
    if array.ndim != 4 or array.shape[-1] != array.shape[-2]:
        raise ValueError(
            "weights must be (n_layers, n_heads, lookback, lookback) or (n_rows, ...) of it, "
            f"got shape {np.shape(weights)}"
        )
    if np.isnan(array).all():
        raise ValueError("weights are all NaN (no row had a full window)")
    n_layers, n_heads, lookback, _ = array.shape
    figure = Figure(figsize=(3.2 * n_heads + 1, 3.0 * n_layers), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_layers, n_heads, squeeze=False)
    # Step labels count back from the predicted bar: t, t-1, ...
    labels = [f"t-{lookback - 1 - step}" if step < lookback - 1 else "t" for step in range(lookback)]
    tick_every = max(1, lookback // 8)
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            axis = axes[layer, head]
            image = axis.imshow(array[layer, head], cmap="viridis", vmin=0.0, vmax=float(np.nanmax(array)))
            axis.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=9)
            ticks = list(range(0, lookback, tick_every))
            axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
            axis.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
            axis.set_xlabel("key (attended bar)", fontsize=8)
            axis.set_ylabel("query bar", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="weight")
    figure.suptitle(title)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    return target
