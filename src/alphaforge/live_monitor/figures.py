"""The live figures' arithmetic: one bar's IC / rank IC / hit rate / net P&L, the degradation z-test, the
Prometheus text of ``live.prom`` and the lag quantiles (pure functions, no state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.stats import newey_west


def _bar_figures(prediction: np.ndarray, label: np.ndarray, net: np.ndarray, centre: float,
                 min_cross_section: int) -> tuple[float, float, float, float, int]:
    """(ic, rank_ic, hit_rate, net_pnl, rows) of one bar's matured rows (NaN where undefined)."""
    usable = np.isfinite(prediction) & np.isfinite(label)
    p, y, pnl = prediction[usable], label[usable], net[usable]
    if p.size == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    ic = rank_ic = math.nan
    if p.size >= min_cross_section and p.std() > 0 and y.std() > 0:
        ic = float(np.corrcoef(p, y)[0, 1])
        rp, ry = pd.Series(p).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        rank_ic = float(np.corrcoef(rp, ry)[0, 1]) if rp.std() > 0 and ry.std() > 0 else math.nan
    side = np.sign(p - centre)
    traded = side != 0
    hit = float(np.mean(side[traded] == np.sign(y[traded]))) if traded.any() else math.nan
    return ic, rank_ic, hit, float(pnl.mean()), int(p.size)


def degradation_z(per_bar: Mapping[str, np.ndarray], *, recent_bars: int, min_earlier_bars: int, z_threshold: float,
                  lags: int) -> dict[str, Any]:
    """Earlier vs recent per-bar figures (oldest first) of each metric in ``per_bar``: a drop of
    ``z_threshold`` Newey-West standard errors or more fires. ``fired`` is None with too few bars."""
    n_bars = min(len(v) for v in per_bar.values()) if per_bar else 0
    if n_bars < recent_bars + min_earlier_bars:
        return {"fired": None, "detail": f"not checked: {n_bars} matured bars (< recent_bars + min_earlier_bars = "
                                         f"{recent_bars + min_earlier_bars})", "metrics": {}}
    metrics, drops = {}, []
    for name, values in per_bar.items():
        earlier, recent = newey_west(values[:-recent_bars], min_lags=lags), newey_west(values[-recent_bars:],
                                                                                       min_lags=lags)
        se = math.sqrt((earlier.std_error if math.isfinite(earlier.std_error) else 0.0) ** 2
                       + (recent.std_error if math.isfinite(recent.std_error) else 0.0) ** 2)
        drop = earlier.mean - recent.mean
        z = drop / se if se > 0 else (math.inf if drop > 0 else 0.0)
        metrics[name] = {"earlier": _finite(earlier.mean), "recent": _finite(recent.mean), "z": _finite(z)}
        if math.isfinite(drop) and z >= z_threshold:
            drops.append(f"{name} fell from {earlier.mean:.4f} (earlier {len(values) - recent_bars} bars) to "
                         f"{recent.mean:.4f} (last {recent_bars}), {z:.1f} standard errors >= {z_threshold:g}")
    detail = ("live degradation: " + "; ".join(drops)) if drops else "no degradation: " + ", ".join(
        f"{k} {_fmt(v['earlier'])} -> {_fmt(v['recent'])} (z {_fmt(v['z'])})" for k, v in metrics.items())
    return {"fired": bool(drops), "detail": detail, "metrics": metrics}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _prometheus(document: Mapping[str, Any]) -> str:
    lines = []
    for metric in ("ic", "rank_ic", "hit_rate", "net_pnl_per_bar", "matured_rows", "requests", "pending"):
        lines.append(f"# TYPE alphaforge_live_{metric} gauge")
        for variant, figures in document["variants"].items():
            value = figures.get(metric)
            lines.append(f'alphaforge_live_{metric}{{variant="{variant}"}} {"NaN" if value is None else value}')
    lines.append("# TYPE alphaforge_live_alert_blocking gauge")
    lines.append(f"alphaforge_live_alert_blocking {int(document['alert']['blocking'])}")
    lines.append("# TYPE alphaforge_live_retrain_triggers counter")
    lines.append(f"alphaforge_live_retrain_triggers {document['retrain']['triggers']}")
    return "\n".join(lines) + "\n"


def _quantiles(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "rows": 0}
    array = np.asarray(values, dtype=float)
    return {"p50": float(np.quantile(array, 0.5)), "p95": float(np.quantile(array, 0.95)), "max": float(array.max()),
            "rows": int(array.size)}
