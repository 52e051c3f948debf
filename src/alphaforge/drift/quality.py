"""Prediction performance on matured labels, its alert, and data quality of the current window."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.drift.params import DriftParams
from alphaforge.drift.windows import Windows, _require, _stamps
from alphaforge.metrics import directional_accuracy
from alphaforge.schema import finite_or_none as _finite
from alphaforge.schema import format_metric as _fmt


# --------------------------------------------------------------------------------------------- performance


def performance_metrics(frame: pd.DataFrame, prediction_column: str, target_column: str, *, centre: float = 0.0,
                        min_cross_section: int = 3, lags: int = 0) -> dict[str, Any]:
    """How good the predictions were on rows whose label has matured (finite ``target_column``).

    ``ic`` / ``rank_ic``: mean over timestamps of the cross-sectional Pearson / Spearman correlation (one
    correlation over all rows when there are fewer than ``min_cross_section`` symbols per timestamp);
    ``directional_accuracy``: share of rows where sign(prediction - centre) equals the sign of the target;
    ``rmse`` / ``mae``: prediction against target (meaningful for return forecasts); ``bars``: matured timestamps;
    ``rank_ic_se`` / ``directional_accuracy_se``: Newey-West standard errors of the per-timestamp figures' means
    (at least ``lags`` lags: overlapping labels; None for a single series).
    """
    from alphaforge.evaluate import information_coefficients

    _require(frame, ["timestamp", "symbol", prediction_column, target_column], "performance_metrics")
    matured = frame[np.isfinite(frame[target_column].astype(float)) & np.isfinite(frame[prediction_column].astype(float))]
    out: dict[str, Any] = {"rows": len(matured), "bars": int(matured["timestamp"].nunique())}
    if matured.empty:
        return out | {"ic": None, "rank_ic": None, "directional_accuracy": None, "rmse": None, "mae": None}
    matured = matured.assign(fold=0)
    from alphaforge.stats import newey_west

    for name, method in (("ic", "pearson"), ("rank_ic", "spearman")):
        series = information_coefficients(matured, prediction_column, target_column, method=method,
                                          min_cross_section=min_cross_section)
        out[name] = _finite(series.mean())
        if name == "rank_ic":
            per_bar = series.to_numpy(dtype=float) if series.index.name == "timestamp" else np.array([])
            out["rank_ic_se"] = _finite(newey_west(per_bar, min_lags=lags).std_error)
    prediction = matured[prediction_column].to_numpy(dtype=float)
    target = matured[target_column].to_numpy(dtype=float)
    error = prediction - target
    out["directional_accuracy"] = _finite(directional_accuracy(prediction - centre, target))
    usable = (prediction - centre != 0) & np.isfinite(target)
    hits = pd.Series(np.sign(prediction - centre) == np.sign(target)).where(usable)
    per_bar_hits = hits.groupby(matured["timestamp"].to_numpy()).mean().dropna().to_numpy()
    out["directional_accuracy_se"] = _finite(newey_west(per_bar_hits, min_lags=lags).std_error)
    out["rmse"] = _finite(float(np.sqrt(np.mean(error ** 2))))
    out["mae"] = _finite(float(np.mean(np.abs(error))))
    return out


def _performance_alert(reference: Mapping[str, Any], current: Mapping[str, Any],
                       params: DriftParams) -> tuple[bool | None, str]:
    """(fired, detail); fired is None when either window lacks matured bars or a defined metric."""
    thin = [name for name, block in (("reference", reference), ("current", current))
            if block["bars"] < params.performance_min_bars]
    if thin:
        return None, (f"performance not checked: {', '.join(thin)} window has fewer than performance_min_bars "
                      f"({params.performance_min_bars}) bars with matured labels")
    drops = []
    for metric, limit in (("rank_ic", params.rank_ic_drop_threshold),
                          ("directional_accuracy", params.accuracy_drop_threshold)):
        before, now = reference.get(metric), current.get(metric)
        if before is None or now is None or before - now <= limit:
            continue
        errors = [block.get(f"{metric}_se") for block in (reference, current)]
        if all(e is not None for e in errors):
            z = (before - now) / max(math.sqrt(errors[0] ** 2 + errors[1] ** 2), 1e-12)
            if z < params.performance_z:
                continue  # within the noise of the two windows
            significance = f", {z:.1f} standard errors"
        else:
            significance = " (no standard error: a single series)"
        drops.append(f"{metric} fell from {before:.4f} (reference) to {now:.4f} (current), "
                     f"a drop of {before - now:.4f} > {limit:g}{significance}")
    if drops:
        return True, "performance: " + "; ".join(drops)
    return False, (f"performance held (no drop beyond the thresholds and {params.performance_z:g} standard errors): "
                   f"rank IC {_fmt(reference.get('rank_ic'))} -> {_fmt(current.get('rank_ic'))}, "
                   f"directional accuracy {_fmt(reference.get('directional_accuracy'))} -> "
                   f"{_fmt(current.get('directional_accuracy'))}")


# --------------------------------------------------------------------------------------------- data quality


def data_quality(dataset: pd.DataFrame, windows: Windows, columns: Sequence[str],
                 params: DriftParams) -> tuple[dict[str, Any], pd.DataFrame]:
    """Missing bars, stale symbols and NaN rates (a summary), and coverage and NaN rate per timestamp.

    The market calendar is the union of every symbol's timestamps. A symbol is expected at every calendar
    timestamp of the current window from its first bar on; a missing one counts against ``missing_share``.
    Stale: no bar in the last ``stale_after_bars`` calendar bars, or a flat close over its last
    ``stale_after_bars`` bars (``close`` when the frame has it, else ``log_return_1`` == 0).
    """
    calendar = _stamps(dataset)
    current_stamps = _stamps(windows.current)
    first_bar = dataset.groupby("symbol", sort=True)["timestamp"].min()
    last_bar = dataset.groupby("symbol", sort=True)["timestamp"].max()
    observed = windows.current.groupby("symbol")["timestamp"].nunique().reindex(first_bar.index, fill_value=0)
    expected = pd.Series([int((current_stamps >= first).sum()) for first in first_bar], index=first_bar.index)
    missing = (expected - observed).clip(lower=0)
    horizon = calendar[-params.stale_after_bars]
    no_recent_bar = sorted(last_bar.index[last_bar < horizon])
    flat = sorted(_flat_symbols(dataset, params.stale_after_bars))
    nan_current = windows.current[list(columns)].isna().mean()
    nan_reference = windows.reference[list(columns)].isna().mean()
    summary = {
        "missing_bars": int(missing.sum()),
        "expected_bars": int(expected.sum()),
        "missing_share": _finite(missing.sum() / expected.sum()) if expected.sum() else None,
        "missing_by_symbol": {s: int(n) for s, n in missing.items() if n > 0},
        "stale_symbols": sorted(set(no_recent_bar) | set(flat)),
        "no_recent_bar": no_recent_bar,
        "flat_close": flat,
        "nan_rate_current": {c: _finite(v) for c, v in nan_current.items()},
        "nan_rate_reference": {c: _finite(v) for c, v in nan_reference.items()},
        "max_nan_rate": _finite(nan_current.max()) if len(nan_current) else None,
    }
    problems = []
    if summary["stale_symbols"]:
        problems.append(f"stale symbols {summary['stale_symbols']}")
    worst = [c for c, v in nan_current.items() if v > params.max_nan_rate]
    summary["features_over_nan_limit"] = worst
    if worst:
        problems.append(f"NaN rate above {params.max_nan_rate:g} in {worst}")
    if summary["missing_share"] is not None and summary["missing_share"] > params.max_missing_share:
        problems.append(f"{summary['missing_bars']} of {summary['expected_bars']} bars missing "
                        f"(share {summary['missing_share']:.3f} > {params.max_missing_share:g})")
    summary["problems"] = problems

    both = pd.concat([windows.reference.assign(window="reference"), windows.current.assign(window="current")])
    per_stamp = both.groupby("timestamp", sort=True)
    listed = pd.DatetimeIndex(first_bar).sort_values().searchsorted(per_stamp.size().index, side="right")
    over_time = pd.DataFrame({
        "window": per_stamp["window"].first(),
        "symbols": per_stamp["symbol"].nunique(),
        "expected_symbols": listed,
        "nan_rate": both[list(columns)].isna().mean(axis=1).groupby(both["timestamp"], sort=True).mean(),
    })
    over_time["coverage"] = over_time["symbols"] / over_time["expected_symbols"].clip(lower=1)
    return summary, over_time.reset_index()


def _flat_symbols(dataset: pd.DataFrame, bars: int) -> list[str]:
    """Symbols whose last ``bars`` bars show no price change at all."""
    tail = dataset.groupby("symbol", sort=True).tail(bars)
    if "close" in tail.columns:
        moved = tail.groupby("symbol")["close"].agg(lambda c: c.nunique(dropna=True) > 1)
    elif "log_return_1" in tail.columns:
        moved = tail.groupby("symbol")["log_return_1"].agg(lambda r: bool((r.fillna(0.0) != 0).any()))
    else:
        return []
    counts = tail.groupby("symbol").size()
    return [s for s, m in moved.items() if not m and counts[s] >= bars]
