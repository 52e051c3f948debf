"""An Alphalens-style tear sheet per model: returns by signal quantile, IC decay, net equity and turnover.

Everything is out of sample and at the execution price (:mod:`alphaforge.backtest.market`): the k-bar return of a
signal from bar t is ``P[t+1+k] / P[t+1] - 1``, so the decay curve shows how long the signal lasts after it can
first be traded. Drawn on Agg canvases (no display, pyplot untouched), one PNG per model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alphaforge.io import atomic_write

if TYPE_CHECKING:
    from alphaforge.evaluate import Evaluation

__all__ = ["ic_decay", "quantile_returns", "write_tear_sheets"]


def _forward_execution_returns(market: pd.DataFrame, keys: pd.DataFrame, horizons: range) -> pd.DataFrame:
    """k-bar simple returns from the execution price at t+1, per (timestamp, symbol) of ``keys``."""
    ordered = market[["timestamp", "symbol", "exec_price"]].sort_values(["symbol", "timestamp"], kind="mergesort")
    log_price = np.log(ordered["exec_price"].to_numpy(dtype=float))
    grouped = pd.Series(log_price, index=ordered.index).groupby(ordered["symbol"].to_numpy())
    columns = {f"return_{k}": np.expm1(grouped.shift(-k).to_numpy() - log_price) for k in horizons}
    frame = pd.DataFrame({"timestamp": ordered["timestamp"].to_numpy(), "symbol": ordered["symbol"].to_numpy(),
                          **columns})
    frame["timestamp"] = ordered["timestamp"].array
    return keys[["timestamp", "symbol"]].merge(frame, on=["timestamp", "symbol"], how="left")


def quantile_returns(frame: pd.DataFrame, signal: str, returns: pd.Series, n_quantiles: int = 5) -> pd.Series:
    """Mean next-bar return (execution price to execution price) by cross-sectional signal quantile, in bps."""
    data = pd.DataFrame({"timestamp": frame["timestamp"].to_numpy(), "signal": frame[signal].to_numpy(dtype=float),
                         "ret": returns.to_numpy(dtype=float)}).dropna()
    if data.empty:
        return pd.Series(dtype=float)
    ranks = data.groupby("timestamp")["signal"].rank(pct=True, method="first")
    data["quantile"] = np.ceil(ranks * n_quantiles).clip(1, n_quantiles).astype(int)
    by_stamp = data.groupby(["timestamp", "quantile"])["ret"].mean().unstack()
    return by_stamp.mean() * 1e4


def ic_decay(frame: pd.DataFrame, signal: str, forward: pd.DataFrame, horizons: range) -> pd.Series:
    """Mean cross-sectional rank IC of the signal with the k-bar execution return, k in ``horizons``."""
    out = {}
    for k in horizons:
        data = pd.DataFrame({"timestamp": frame["timestamp"].to_numpy(),
                             "x": frame[signal].to_numpy(dtype=float),
                             "y": forward[f"return_{k}"].to_numpy(dtype=float)}).dropna()
        if data.empty:
            out[k] = np.nan
            continue
        grouped = data.groupby("timestamp")
        data["x"], data["y"] = grouped["x"].rank(), grouped["y"].rank()
        grouped = data.groupby("timestamp")
        dx = data["x"] - grouped["x"].transform("mean")
        dy = data["y"] - grouped["y"].transform("mean")
        num = (dx * dy).groupby(data["timestamp"]).sum()
        den = np.sqrt((dx * dx).groupby(data["timestamp"]).sum() * (dy * dy).groupby(data["timestamp"]).sum())
        out[k] = float((num / den.where(den > 0)).mean())
    return pd.Series(out, name="rank_ic")


def write_tear_sheets(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """One ``tearsheet_<model>.png`` per model; returns {model: path}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = evaluation.frame
    horizons = range(1, evaluation.params.ic_decay_bars + 1)
    forward = _forward_execution_returns(evaluation.market, frame, horizons)
    paths: dict[str, Path] = {}
    for model in evaluation.models:
        figure = Figure(figsize=(12, 8), dpi=90)
        FigureCanvasAgg(figure)
        axes = figure.subplots(2, 2)
        if evaluation.mode == "cross_sectional":
            by_quantile = quantile_returns(frame, model, forward["return_1"])
            axes[0, 0].bar([str(q) for q in by_quantile.index], by_quantile.to_numpy())
            axes[0, 0].set_title("mean next-bar return by signal quintile (bps, gross)")
            decay = ic_decay(frame, model, forward, horizons)
            axes[0, 1].plot(decay.index, decay.to_numpy(), marker="o")
            axes[0, 1].axhline(0.0, color="grey", linewidth=0.5)
            axes[0, 1].set_title("IC decay: rank IC with the k-bar return after execution")
            axes[0, 1].set_xlabel("k (bars)")
        else:
            axes[0, 0].text(0.5, 0.5, "single series: no cross-sectional quantiles", ha="center")
            axes[0, 1].text(0.5, 0.5, "single series: see the IC by fold", ha="center")
        for strategy in evaluation.strategies:
            returns = evaluation.returns[(model, strategy)].set_index("timestamp")
            axes[1, 0].plot(returns.index, (1 + returns["net_return"]).cumprod().to_numpy(), label=f"{strategy} net")
            axes[1, 1].plot(returns.index, returns["turnover"].rolling(20, min_periods=1).mean().to_numpy(),
                            label=strategy)
        benchmark = evaluation.returns[("equal_weight", evaluation.strategies[-1])].set_index("timestamp")
        axes[1, 0].plot(benchmark.index, (1 + benchmark["net_return"]).cumprod().to_numpy(), linestyle="--",
                        label="equal-weight universe")
        axes[1, 0].set_title("cumulative net return")
        axes[1, 0].legend(fontsize="small")
        axes[1, 1].set_title("turnover (20-bar mean, one-way)")
        axes[1, 1].legend(fontsize="small")
        figure.suptitle(f"{model}: tear sheet ({evaluation.execution} execution, out of sample)")
        figure.autofmt_xdate()
        figure.tight_layout()
        path = out_dir / f"tearsheet_{model}.png"
        atomic_write(path, lambda p, figure=figure: figure.savefig(p, format="png"))
        paths[model] = path
    return paths
