"""Information coefficients: per-timestamp (cross-sectional) or per-fold (single series) Pearson and Spearman
correlations, their per-fold HAC statistics and the signal's row of figures.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from alphaforge.evaluate.inputs import _require_columns, evaluation_mode
from alphaforge.evaluate.params import MIN_TIME_SERIES_PAIRS, EvaluationParams, Mode
from alphaforge.metrics import ABSOLUTE_DISPERSION_FLOOR as _ABSOLUTE_DISPERSION_FLOOR
from alphaforge.metrics import directional_accuracy as _directional_accuracy
from alphaforge.metrics import RELATIVE_DISPERSION_FLOOR as _RELATIVE_DISPERSION_FLOOR
from alphaforge.schema import DataError
from alphaforge.stats import newey_west


# ------------------------------------------------------------------------------------ information coefficient


def _grouped_correlation(keys: pd.Series, x: pd.Series, y: pd.Series, *, ranked: bool,
                         min_pairs: int) -> pd.Series:
    """Pearson (or, with ``ranked``, Spearman) correlation of x and y within each key, NaN where undefined.

    Only pairs where both values are finite count. A group is NaN when it has fewer than ``min_pairs`` pairs
    or when either side has no dispersion (a constant signal has no correlation with anything).
    """
    data = pd.DataFrame({
        "key": keys.reset_index(drop=True),
        "x": x.reset_index(drop=True).astype(float),
        "y": y.reset_index(drop=True).astype(float),
    })
    all_keys = pd.Index(data["key"].unique()).sort_values()
    data = data[np.isfinite(data["x"].to_numpy()) & np.isfinite(data["y"].to_numpy())]
    if data.empty:
        return pd.Series(np.nan, index=all_keys, dtype=float)
    grouped = data.groupby("key", sort=True)
    if ranked:
        data = data.assign(x=grouped["x"].rank(method="average"), y=grouped["y"].rank(method="average"))
        grouped = data.groupby("key", sort=True)
    dx = data["x"] - grouped["x"].transform("mean")
    dy = data["y"] - grouped["y"].transform("mean")
    key = data["key"]
    count = grouped.size().astype(float)
    sxy = (dx * dy).groupby(key, sort=True).sum()
    sxx = (dx * dx).groupby(key, sort=True).sum()
    syy = (dy * dy).groupby(key, sort=True).sum()
    scale_x = data["x"].abs().groupby(key, sort=True).max()
    scale_y = data["y"].abs().groupby(key, sort=True).max()
    std_x = np.sqrt(sxx / count)
    std_y = np.sqrt(syy / count)
    flat_x = std_x <= np.maximum(_RELATIVE_DISPERSION_FLOOR * scale_x, _ABSOLUTE_DISPERSION_FLOOR)
    flat_y = std_y <= np.maximum(_RELATIVE_DISPERSION_FLOOR * scale_y, _ABSOLUTE_DISPERSION_FLOOR)
    undefined = flat_x | flat_y | (count < min_pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = (sxy / np.sqrt(sxx * syy)).clip(-1.0, 1.0)
    correlation[undefined] = np.nan
    return correlation.reindex(all_keys).astype(float)


def _ic_series(frame: pd.DataFrame, signal_col: str, target_col: str, method: Literal["pearson", "spearman"],
               mode: Mode, min_cross_section: int) -> pd.Series:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"information_coefficients: method {method!r}; rule: 'pearson' or 'spearman'")
    ranked = method == "spearman"
    x, y = frame[signal_col], frame[target_col]
    if mode == "cross_sectional":
        series = _grouped_correlation(frame["timestamp"], x, y, ranked=ranked, min_pairs=min_cross_section)
        series.index.name = "timestamp"
    else:
        if "fold" not in frame.columns:
            raise DataError(
                f"information_coefficients: column 'fold' missing; rule: single-series mode "
                f"(median symbols per timestamp < {min_cross_section}) computes one correlation per fold"
            )
        series = _grouped_correlation(frame["fold"], x, y, ranked=ranked, min_pairs=MIN_TIME_SERIES_PAIRS)
        series.index.name = "fold"
    series.name = f"{method}_ic"
    series.attrs["mode"] = mode
    return series


def information_coefficients(frame: pd.DataFrame, signal_col: str, target_col: str, *,
                             method: Literal["pearson", "spearman"], min_cross_section: int) -> pd.Series:
    """Correlation between a signal and a target, in the form the data supports.

    Cross-sectional (median symbols per timestamp >= ``min_cross_section``): one correlation across symbols per
    timestamp, indexed by ``timestamp``; timestamps with fewer than ``min_cross_section`` usable pairs are NaN.
    Single series otherwise: one time-series correlation per fold over all of the fold's rows, indexed by
    ``fold`` (needs at least 3 pairs). Either way an IC is NaN where the signal or the target is constant (IC is
    undefined without dispersion). ``method="spearman"`` gives the rank IC. ``series.attrs["mode"]`` says which.
    """
    _require_columns(frame, ["timestamp", "symbol", signal_col, target_col], "information_coefficients")
    mode = evaluation_mode(frame, min_cross_section)
    return _ic_series(frame, signal_col, target_col, method, mode, min_cross_section)


def _product_series(frame: pd.DataFrame, signal: str, target: str, *, ranked: bool) -> pd.Series:
    """Single series: per timestamp, the mean over symbols of standardised signal x standardised label; its
    mean is the pooled correlation, and it is what the HAC test runs on."""
    data = frame[["timestamp", "symbol", signal, target]].dropna()
    if data.empty:
        return pd.Series(dtype=float)
    grouped = data.groupby("symbol")
    x, y = data[signal].astype(float), data[target].astype(float)
    if ranked:
        x, y = grouped[signal].rank(), grouped[target].rank()

    def standardise(values: pd.Series) -> pd.Series:
        by = values.groupby(data["symbol"])
        std = by.transform("std")
        return (values - by.transform("mean")) / std.where(std > _ABSOLUTE_DISPERSION_FLOOR)

    product = standardise(x) * standardise(y)
    return product.groupby(data["timestamp"]).mean().dropna()


def _signal_stats(frame: pd.DataFrame, name: str, mode: Mode, params: EvaluationParams, horizon: int
                  ) -> tuple[dict[str, float], pd.Series, pd.Series, pd.Series]:
    ic = _ic_series(frame, name, "forward_return", "pearson", mode, params.min_cross_section)
    rank_ic = _ic_series(frame, name, "forward_return", "spearman", mode, params.min_cross_section)
    if mode == "cross_sectional":
        tested_ic, tested_rank = ic.dropna(), rank_ic.dropna()
        ic_mean, rank_mean = _mean(ic), _mean(rank_ic)
    else:
        tested_ic = _product_series(frame, name, "forward_return", ranked=False)
        tested_rank = _product_series(frame, name, "forward_return", ranked=True)
        ic_mean, rank_mean = _mean(ic), _mean(rank_ic)
    lags = max(horizon - 1, 0)
    stats = {
        "ic_mean": ic_mean, "ic_tstat": newey_west(tested_ic.to_numpy(), min_lags=lags).t_stat,
        "rank_ic_mean": rank_mean, "rank_ic_tstat": newey_west(tested_rank.to_numpy(), min_lags=lags).t_stat,
        "directional_accuracy": _directional_accuracy(frame[name], frame["forward_return"]),
    }
    return stats, ic, rank_ic, tested_rank


# --------------------------------------------------------------------------------------------- metrics


def _finite(values: pd.Series | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _mean(values: pd.Series | np.ndarray) -> float:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def _fold_ic_stats(ic: pd.Series, rank_ic: pd.Series, fold_of_stamp: pd.Series,
                   mode: Mode, horizon: int) -> dict[int, dict[str, float]]:
    """IC mean and HAC t-stat per fold over the fold's per-timestamp ICs (cross-sectional), or the fold's single
    time-series IC with a NaN t-stat (single series: one observation has no standard error)."""
    stats: dict[int, dict[str, float]] = {}
    lags = max(horizon - 1, 0)
    if mode == "cross_sectional":
        fold_ids = fold_of_stamp.reindex(ic.index).to_numpy()
        for fold in pd.unique(fold_ids):
            in_fold = fold_ids == fold
            stats[int(fold)] = {"ic_mean": _mean(ic[in_fold]),
                                "ic_tstat": newey_west(ic[in_fold].to_numpy(), min_lags=lags).t_stat,
                                "rank_ic_mean": _mean(rank_ic[in_fold]),
                                "rank_ic_tstat": newey_west(rank_ic[in_fold].to_numpy(), min_lags=lags).t_stat}
    else:
        for fold in ic.index:
            stats[int(fold)] = {"ic_mean": float(ic[fold]), "ic_tstat": math.nan,
                                "rank_ic_mean": float(rank_ic[fold]), "rank_ic_tstat": math.nan}
    return stats
