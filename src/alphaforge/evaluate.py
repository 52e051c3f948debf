"""Out-of-sample evaluation: the model against naive baselines, per walk-forward fold and overall.

Input is the out-of-fold (OOF) prediction frame the train stage writes, one row per (timestamp, symbol) that
sits in a test fold, with the columns in :data:`OOF_COLUMNS`. Every number here is computed only from those
rows, so nothing the model saw in training leaks into the scores.

Two evaluation modes, picked once from the data (:func:`evaluation_mode`):

* ``cross_sectional`` when the median number of symbols per timestamp is at least
  ``EvaluationParams.min_cross_section``. The information coefficient (IC) is the correlation across symbols at
  each timestamp, and the strategy is a dollar-neutral long-short portfolio on the signal's ranks.
* ``single_series`` otherwise. The IC is one time-series correlation per fold (all of the fold's rows pooled),
  and the strategy is long-flat: long when the signal is positive, flat otherwise.

Signals compared: each model (by default one, ``model``, read from ``prediction``; the train stage passes one
column per model family) and three baselines that need no training:
``buy_and_hold`` (always long), ``momentum_20`` (the past 20-bar log return: its sign decides every position in
single-series mode, its rank in cross-sectional mode, where the sign alone would tie almost every symbol) and
``last_return`` (the last bar's log return, i.e. continuation).

Conventions that matter when reading the numbers:

* Weights set at bar t earn the simple return ``exp(forward_return_1) - 1`` from close t to close t+1. Rows whose
  ``forward_return_1`` is missing cannot be traded and are left out of the strategy (the train stage drops them
  anyway, since their label needs the same future bar).
* Cost is ``cost_bps / 1e4 * sum_s |w_t,s - w_t-1,s|`` (one-way, per unit of turnover), charged at t. The first
  period pays for building the book from cash. Positions carry across fold boundaries: the OOF history is traded
  as one continuous strategy, and each fold's metrics are the slice of that strategy's periods inside the fold.
* Degenerate cases give NaN, never inf: an IC is NaN where the signal (or target) has no dispersion, e.g.
  ``buy_and_hold`` everywhere, or where there are too few pairs; a t-statistic and a Sharpe ratio are NaN for
  fewer than two observations or a zero standard deviation; the annualised return is NaN for fewer than two
  periods. NaN becomes ``null`` in :meth:`Evaluation.to_metrics_json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.io import atomic_write as _atomic_write
from alphaforge.schema import DataError

__all__ = [
    "BASELINES",
    "METRICS",
    "MODEL_SIGNAL",
    "OOF_COLUMNS",
    "SIGNALS",
    "Evaluation",
    "EvaluationParams",
    "Mode",
    "build_signals",
    "evaluate_oof",
    "evaluation_mode",
    "infer_periods_per_year",
    "information_coefficients",
    "leaderboard",
    "metrics_json_text",
    "strategy_returns",
    "write_plots",
]

Mode = Literal["cross_sectional", "single_series"]

MODEL_SIGNAL = "model"
BASELINES: tuple[str, ...] = ("buy_and_hold", "momentum_20", "last_return")
SIGNALS: tuple[str, ...] = (MODEL_SIGNAL, *BASELINES)
LONG_ONLY_SIGNALS: frozenset[str] = frozenset({"buy_and_hold"})

OOF_COLUMNS: tuple[str, ...] = (
    "timestamp", "symbol", "fold", "prediction", "forward_return", "forward_return_1", "log_return_1",
    "log_return_20",
)
NUMERIC_OOF_COLUMNS: tuple[str, ...] = ("forward_return", "forward_return_1", "log_return_1", "log_return_20")
DEFAULT_MODELS: dict[str, str] = {MODEL_SIGNAL: "prediction"}

METRICS: tuple[str, ...] = (
    "ic_mean", "ic_tstat", "rank_ic_mean", "rank_ic_tstat", "directional_accuracy", "annual_return", "sharpe",
    "max_drawdown", "turnover", "n_periods",
)

# Below this many pooled pairs a time-series correlation is not worth reporting (two points always give +-1).
MIN_TIME_SERIES_PAIRS = 3
# A standard deviation this small relative to the values' magnitude is floating-point noise around a constant.
_RELATIVE_DISPERSION_FLOOR = 1e-12
_ABSOLUTE_DISPERSION_FLOOR = 1e-15


class EvaluationParams(BaseModel):
    """How signals are turned into portfolios and how their returns are scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_bps: float = Field(default=5.0, ge=0.0, description="One-way cost per unit of turnover, in basis points.")
    long_short_quantile: float = Field(
        default=0.2, gt=0.0, le=0.5,
        description="Cross-sectional mode: long the top and short the bottom quantile of the signal "
                    "(at least one symbol per side).",
    )
    min_cross_section: int = Field(
        default=3, ge=2,
        description="Symbols per timestamp needed for a cross-sectional IC or long-short book; the median "
                    "count per timestamp also picks the evaluation mode.",
    )
    periods_per_year: float | None = Field(
        default=None, gt=0.0, description="Bars per year for annualising; None infers it from the timestamps.",
    )


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate_oof`.

    ``per_fold``: tidy, one row per (fold, signal) with the :data:`METRICS`. ``overall``: one row per signal
    (index ``signal``) over all OOF periods. ``equity``: growth of one unit of capital under each signal's net
    returns (index ``timestamp``, one column per signal). ``returns``: the per-timestamp output of
    :func:`strategy_returns` for each signal. ``ic_by_fold``: fold, signal, ic, rank_ic (the fold means).
    """

    mode: Mode
    periods_per_year: float
    params: EvaluationParams
    models: tuple[str, ...]
    per_fold: pd.DataFrame
    overall: pd.DataFrame
    equity: pd.DataFrame
    returns: dict[str, pd.DataFrame]
    ic_by_fold: pd.DataFrame

    @property
    def signals(self) -> tuple[str, ...]:
        """Models first, then the baselines."""
        return (*self.models, *BASELINES)

    def to_metrics_json(self) -> dict[str, Any]:
        """A JSON-able dict for ``dvc metrics show``: NaN becomes None, numpy scalars become Python numbers."""
        def row(signal: str) -> dict[str, float | int | None]:
            return {metric: _json_number(self.overall.at[signal, metric]) for metric in METRICS}

        return {
            "models": {name: row(name) for name in self.models},
            "baselines": {name: row(name) for name in BASELINES},
            "mode": self.mode,
            "periods_per_year": _json_number(self.periods_per_year),
            "cost_bps": _json_number(self.params.cost_bps),
        }


# ---------------------------------------------------------------------------------------------- inputs


def _row(label: Any) -> str:
    """A row label as a user would type it (numpy scalars shown as plain numbers)."""
    return repr(label.item() if isinstance(label, np.generic) else label)


def _validate_oof(oof: pd.DataFrame, model_columns: list[str]) -> None:
    """Raise :class:`DataError` naming column, row and rule when ``oof`` is not a usable OOF frame."""
    if not isinstance(oof, pd.DataFrame):
        raise DataError(f"OOF frame: expected a pandas DataFrame, got {type(oof).__name__}")
    required = [c for c in OOF_COLUMNS if c != "prediction"] + model_columns
    missing = [c for c in required if c not in oof.columns]
    if missing:
        raise DataError(f"OOF frame: missing required column(s) {missing}; rule: columns {required}")
    if oof.empty:
        raise DataError("OOF frame: no rows; rule: at least one out-of-fold prediction is needed")
    timestamps = oof["timestamp"]
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype) or str(timestamps.dt.tz) != "UTC":
        raise DataError(f"OOF frame column 'timestamp': dtype {timestamps.dtype}; rule: datetime64[ns, UTC]")
    if timestamps.isna().any():
        raise DataError(f"OOF frame column 'timestamp': missing at row {_row(timestamps.index[timestamps.isna()][0])}")
    if oof["symbol"].isna().any():
        raise DataError(f"OOF frame column 'symbol': missing at row {_row(oof.index[oof['symbol'].isna()][0])}")
    if not pd.api.types.is_integer_dtype(oof["fold"]):
        raise DataError(f"OOF frame column 'fold': dtype {oof['fold'].dtype}; rule: integer fold ids")
    for column in (*model_columns, *NUMERIC_OOF_COLUMNS):
        if not pd.api.types.is_numeric_dtype(oof[column]):
            raise DataError(f"OOF frame column {column!r}: dtype {oof[column].dtype}; rule: numeric")
        infinite = np.isinf(oof[column].to_numpy(dtype=float))
        if infinite.any():
            raise DataError(
                f"OOF frame column {column!r}: infinite value at row {_row(oof.index[infinite][0])}; "
                "rule: finite or NaN"
            )
    if not np.isfinite(oof["forward_return_1"].to_numpy(dtype=float)).any():
        raise DataError("OOF frame column 'forward_return_1': no finite value; rule: at least one tradable row")
    duplicated = oof.duplicated(["timestamp", "symbol"])
    if duplicated.any():
        first = oof.index[duplicated][0]
        raise DataError(
            f"OOF frame columns 'timestamp','symbol': duplicate key ({oof.at[first, 'timestamp']}, "
            f"{oof.at[first, 'symbol']!r}) at row {_row(first)}; rule: one row per (timestamp, symbol)"
        )
    spans = oof.groupby("fold")["timestamp"].agg(["min", "max"]).sort_values("min")
    for (fold_a, span_a), (fold_b, span_b) in zip(spans.iloc[:-1].iterrows(), spans.iloc[1:].iterrows()):
        if span_a["max"] >= span_b["min"]:
            raise DataError(
                f"OOF frame column 'fold': fold {fold_a} ends at {span_a['max']} but fold {fold_b} starts at "
                f"{span_b['min']}; rule: test folds are contiguous, time-ordered and non-overlapping"
            )


def _require_columns(frame: pd.DataFrame, columns: list[str], caller: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{caller}: missing required column(s) {missing}")


def build_signals(oof: pd.DataFrame, models: dict[str, str] | None = None) -> pd.DataFrame:
    """A copy of ``oof`` with one column per entry of :data:`SIGNALS` (positive = bullish).

    ``model`` is the prediction; ``buy_and_hold`` is a constant 1; ``momentum_20`` is ``log_return_20`` (see the
    module docstring for why not its sign: every single-series rule reads only its sign anyway); ``last_return``
    is ``log_return_1``.
    """
    frame = oof.copy()
    for name, column in (models or DEFAULT_MODELS).items():
        frame[name] = frame[column].astype(float)
    frame["buy_and_hold"] = 1.0
    frame["momentum_20"] = frame["log_return_20"].astype(float)
    frame["last_return"] = frame["log_return_1"].astype(float)
    return frame


def evaluation_mode(frame: pd.DataFrame, min_cross_section: int) -> Mode:
    """``cross_sectional`` when the median number of symbols per timestamp is >= ``min_cross_section``."""
    _require_columns(frame, ["timestamp", "symbol"], "evaluation_mode")
    if frame.empty:
        raise DataError("evaluation_mode: empty frame; rule: at least one row")
    breadth = frame.groupby("timestamp")["symbol"].nunique()
    return "cross_sectional" if float(breadth.median()) >= min_cross_section else "single_series"


def infer_periods_per_year(timestamps: pd.Series) -> float:
    """Bars per year, inferred from the median spacing between distinct timestamps.

    The rule, in order:

    * Intraday (median spacing under 20 hours): bars per day times days per year. Bars per day is the median
      number of bars per UTC calendar date, so a market with a session (equities) is not counted as 24 hours.
      Days per year is 365 when weekend bars make up more than 10% of the timestamps (a 24x7 market such as
      crypto), else 260 (a 24x5 market such as FX). Hourly FX: 24 * 260 = 6240.
    * Daily (20 hours to 4 days): 252 trading days, or 365 with weekend bars as above. Business-day data: 252.
    * Coarser: 365.25 days divided by the median spacing in days (weekly ~52, monthly ~12).

    Intraday equity bars get 260 rather than ~252 sessions (holidays are not detected); pass
    ``EvaluationParams.periods_per_year`` when that 3% matters.
    """
    stamps = pd.DatetimeIndex(pd.to_datetime(pd.Series(timestamps).dropna()).unique()).sort_values()
    if len(stamps) < 2:
        raise DataError(
            f"infer_periods_per_year: {len(stamps)} distinct timestamp(s); rule: at least two to measure a spacing"
        )
    spacing = pd.Series(stamps).diff().dropna().median()
    spacing_days = spacing / pd.Timedelta(days=1)
    weekend_share = float(np.mean(stamps.dayofweek >= 5))
    has_weekends = weekend_share > 0.10
    if spacing < pd.Timedelta(hours=20):
        utc = stamps.tz_convert("UTC") if stamps.tz is not None else stamps
        bars_per_day = float(pd.Series(utc.normalize()).value_counts().median())
        return bars_per_day * (365.0 if has_weekends else 260.0)
    if spacing_days < 4.0:
        return 365.0 if has_weekends else 252.0
    return 365.25 / spacing_days


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


# -------------------------------------------------------------------------------------------- strategy


def _weights(data: pd.DataFrame, signal_col: str, mode: Mode, params: EvaluationParams,
             long_only: bool) -> np.ndarray:
    """Target weight per row (rows sorted by timestamp then symbol), set from the signal at that timestamp."""
    signal = data[signal_col].to_numpy(dtype=float)
    eligible = np.isfinite(signal)
    stamps = data["timestamp"]
    breadth = pd.Series(eligible, index=data.index).groupby(stamps).transform("sum").to_numpy(dtype=float)
    weights = np.zeros(len(data), dtype=float)
    if mode == "single_series" or long_only:
        # Long-flat: an equal slice of capital per symbol, used only where the signal is positive.
        long = eligible & (signal > 0)
        if mode == "single_series":
            with np.errstate(invalid="ignore", divide="ignore"):
                weights = np.where(long, 1.0 / breadth, 0.0)
        else:
            n_long = pd.Series(long, index=data.index).groupby(stamps).transform("sum").to_numpy(dtype=float)
            with np.errstate(invalid="ignore", divide="ignore"):
                weights = np.where(long, 1.0 / n_long, 0.0)
        return weights
    # Long-short: +0.5/k on the top k, -0.5/k on the bottom k, k = max(1, floor(q * n)). Ties are broken by
    # symbol order (rows are sorted by symbol within a timestamp), so results are deterministic.
    usable = data.loc[eligible, ["timestamp", signal_col]]
    grouped = usable.groupby("timestamp")[signal_col]
    rank = grouped.rank(method="first").to_numpy()
    n = grouped.transform("size").to_numpy(dtype=float)
    spread = (grouped.transform("max") - grouped.transform("min")).to_numpy()
    k = np.maximum(1.0, np.floor(params.long_short_quantile * n + 1e-9))
    tradable = (n >= params.min_cross_section) & (spread > 0) & (2 * k <= n)
    usable_weights = np.where(rank > n - k, 0.5 / k, np.where(rank <= k, -0.5 / k, 0.0))
    weights[eligible] = np.where(tradable, usable_weights, 0.0)
    return weights


def _strategy_returns(frame: pd.DataFrame, signal_col: str, params: EvaluationParams, mode: Mode,
                      long_only: bool) -> pd.DataFrame:
    columns = ["timestamp", "symbol", signal_col, "forward_return_1"] + (["fold"] if "fold" in frame else [])
    data = frame[columns]
    data = data[np.isfinite(data["forward_return_1"].to_numpy(dtype=float))]
    data = data.sort_values(["timestamp", "symbol"], kind="mergesort").reset_index(drop=True)
    output_columns = ["timestamp", *(["fold"] if "fold" in frame else []), "gross_return", "turnover", "cost",
                      "net_return", "gross_exposure", "net_exposure"]
    if data.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in output_columns})
    data = data.assign(weight=_weights(data, signal_col, mode, params, long_only),
                       simple_return=np.expm1(data["forward_return_1"].to_numpy(dtype=float)))
    weights = data.pivot(index="timestamp", columns="symbol", values="weight").fillna(0.0)
    simple = data.pivot(index="timestamp", columns="symbol", values="simple_return").fillna(0.0)
    previous = weights.shift(1).fillna(0.0)
    turnover = (weights - previous).abs().sum(axis=1)
    gross = (weights * simple).sum(axis=1)
    cost = params.cost_bps / 1e4 * turnover
    result = pd.DataFrame({
        "gross_return": gross,
        "turnover": turnover,
        "cost": cost,
        "net_return": gross - cost,
        "gross_exposure": weights.abs().sum(axis=1),
        "net_exposure": weights.sum(axis=1),
    })
    if "fold" in data:
        result.insert(0, "fold", data.groupby("timestamp")["fold"].first().reindex(result.index))
    return result.rename_axis("timestamp").reset_index()[output_columns]


def strategy_returns(frame: pd.DataFrame, signal_col: str, params: EvaluationParams, *,
                     long_only: bool = False) -> pd.DataFrame:
    """Per-timestamp returns of the portfolio the signal implies, net of costs.

    Cross-sectional mode (see :func:`evaluation_mode`): dollar-neutral long-short with gross exposure 1, equal
    weight within the top and bottom ``long_short_quantile`` of the signal (at least one symbol per side); flat
    at a timestamp with fewer than ``min_cross_section`` symbols or a signal with no dispersion. With
    ``long_only`` (used for ``buy_and_hold``): equal weight long every symbol whose signal is positive.
    Single-series mode: long-flat, each symbol gets ``1 / (symbols at t)`` of capital when its signal is
    positive, else nothing (one symbol: weight 1 or 0).

    Weights set at t earn ``exp(forward_return_1) - 1``; cost is ``cost_bps / 1e4 * sum |w_t - w_t-1|``.
    Returns columns ``timestamp``, ``fold`` (when the frame has one), ``gross_return``, ``turnover``, ``cost``,
    ``net_return``, ``gross_exposure``, ``net_exposure``, one row per timestamp with a next-bar return.
    """
    _require_columns(frame, ["timestamp", "symbol", signal_col, "forward_return_1"], "strategy_returns")
    if frame.empty:
        raise DataError("strategy_returns: empty frame; rule: at least one row")
    mode = evaluation_mode(frame, params.min_cross_section)
    return _strategy_returns(frame, signal_col, params, mode, long_only)


# --------------------------------------------------------------------------------------------- metrics


def _finite(values: pd.Series | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _is_flat(std: float, mean: float) -> bool:
    return not np.isfinite(std) or std <= max(_RELATIVE_DISPERSION_FLOOR * abs(mean), _ABSOLUTE_DISPERSION_FLOOR)


def _mean(values: pd.Series | np.ndarray) -> float:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def _tstat(values: pd.Series | np.ndarray) -> float:
    """mean / (std / sqrt(n)) over the finite values; NaN for n < 2 or no dispersion."""
    finite = _finite(values)
    if finite.size < 2:
        return math.nan
    mean = float(finite.mean())
    std = float(finite.std(ddof=1))
    return math.nan if _is_flat(std, mean) else mean / (std / math.sqrt(finite.size))


def _sharpe(net: np.ndarray, periods_per_year: float) -> float:
    if net.size < 2:
        return math.nan
    mean = float(net.mean())
    std = float(net.std(ddof=1))
    return math.nan if _is_flat(std, mean) else mean / std * math.sqrt(periods_per_year)


def _annual_return(net: np.ndarray, periods_per_year: float) -> float:
    """Compound annual growth rate; -1 once the equity is wiped out; NaN below two periods or on overflow."""
    if net.size < 2:
        return math.nan
    growth = np.prod(1.0 + net)
    if growth <= 0:
        return -1.0
    exponent = math.log(growth) * periods_per_year / net.size
    return math.expm1(exponent) if exponent < 700 else math.nan


def _max_drawdown(net: np.ndarray) -> float:
    """Worst fall of the equity curve from its running peak (the starting capital counts as a peak), <= 0."""
    if net.size == 0:
        return math.nan
    equity = np.concatenate([[1.0], np.cumprod(1.0 + net)])
    peak = np.maximum.accumulate(equity)
    with np.errstate(invalid="ignore", divide="ignore"):
        drawdown = np.where(peak > 0, equity / peak - 1.0, -1.0)
    return float(max(drawdown.min(), -1.0))


def _directional_accuracy(signal: pd.Series, target: pd.Series) -> float:
    """Share of rows where sign(signal) == sign(target); zero or NaN signals and NaN targets are excluded.

    A realised return of exactly zero counts as a miss for any non-zero signal.
    """
    s = signal.to_numpy(dtype=float)
    t = target.to_numpy(dtype=float)
    usable = np.isfinite(s) & np.isfinite(t) & (s != 0)
    if not usable.any():
        return math.nan
    return float(np.mean(np.sign(s[usable]) == np.sign(t[usable])))


def _strategy_metrics(returns: pd.DataFrame, periods_per_year: float) -> dict[str, float | int]:
    net = returns["net_return"].to_numpy(dtype=float)
    return {
        "annual_return": _annual_return(net, periods_per_year),
        "sharpe": _sharpe(net, periods_per_year),
        "max_drawdown": _max_drawdown(net),
        "turnover": _mean(returns["turnover"]),
        "n_periods": int(net.size),
    }


def _fold_ic_stats(ic: pd.Series, rank_ic: pd.Series, fold_of_stamp: pd.Series,
                   mode: Mode) -> dict[int, dict[str, float]]:
    """IC mean and t-stat per fold: over the fold's per-timestamp ICs (cross-sectional), or the fold's single
    time-series IC with a NaN t-stat (single series: one observation has no standard error)."""
    stats: dict[int, dict[str, float]] = {}
    if mode == "cross_sectional":
        fold_ids = fold_of_stamp.reindex(ic.index).to_numpy()
        for fold in pd.unique(fold_ids):
            in_fold = fold_ids == fold
            stats[int(fold)] = {"ic_mean": _mean(ic[in_fold]), "ic_tstat": _tstat(ic[in_fold]),
                                "rank_ic_mean": _mean(rank_ic[in_fold]), "rank_ic_tstat": _tstat(rank_ic[in_fold])}
    else:
        for fold in ic.index:
            stats[int(fold)] = {"ic_mean": float(ic[fold]), "ic_tstat": math.nan,
                                "rank_ic_mean": float(rank_ic[fold]), "rank_ic_tstat": math.nan}
    return stats


def evaluate_oof(oof: pd.DataFrame, params: EvaluationParams, models: dict[str, str] | None = None) -> Evaluation:
    """Score the model and every baseline on the OOF frame, per fold and overall.

    IC and rank IC are against ``forward_return`` (the label the model was trained on); directional accuracy
    compares sign(signal) with sign(forward_return); the strategy metrics come from :func:`strategy_returns`
    (net of cost, annualised with ``params.periods_per_year`` or :func:`infer_periods_per_year`).
    In cross-sectional mode a fold's ``ic_mean``/``ic_tstat`` are over its per-timestamp ICs, and the overall ones
    over all timestamps; in single-series mode a fold has one IC (its t-stat is NaN) and the overall mean and
    t-stat are over the per-fold ICs. ``models`` maps each model's name to its prediction column (default
    ``{"model": "prediction"}``); a name may not be a baseline's.
    """
    models = dict(models or DEFAULT_MODELS)
    clash = sorted(set(models) & set(BASELINES))
    if clash:
        raise DataError(f"evaluate_oof: model name(s) {clash} are baseline names; rename the model(s)")
    _validate_oof(oof, list(models.values()))
    frame = build_signals(oof, models)
    signals = (*models, *BASELINES)
    mode = evaluation_mode(frame, params.min_cross_section)
    periods_per_year = params.periods_per_year or infer_periods_per_year(frame["timestamp"])
    fold_of_stamp = frame.groupby("timestamp")["fold"].first()
    folds = sorted(int(f) for f in frame["fold"].unique())

    per_fold_rows: list[dict[str, Any]] = []
    overall_rows: list[dict[str, Any]] = []
    returns: dict[str, pd.DataFrame] = {}
    for signal in signals:
        ic = _ic_series(frame, signal, "forward_return", "pearson", mode, params.min_cross_section)
        rank_ic = _ic_series(frame, signal, "forward_return", "spearman", mode, params.min_cross_section)
        signal_returns = _strategy_returns(frame, signal, params, mode, long_only=signal in LONG_ONLY_SIGNALS)
        returns[signal] = signal_returns
        fold_ic = _fold_ic_stats(ic, rank_ic, fold_of_stamp, mode)
        for fold in folds:
            in_fold = frame["fold"] == fold
            fold_returns = signal_returns[signal_returns["fold"] == fold]
            ic_stats = fold_ic.get(fold, dict.fromkeys(("ic_mean", "ic_tstat", "rank_ic_mean", "rank_ic_tstat"),
                                                       math.nan))
            per_fold_rows.append({
                "fold": fold, "signal": signal, **ic_stats,
                "directional_accuracy": _directional_accuracy(frame.loc[in_fold, signal],
                                                              frame.loc[in_fold, "forward_return"]),
                **_strategy_metrics(fold_returns, periods_per_year),
            })
        overall_rows.append({
            "signal": signal,
            "ic_mean": _mean(ic), "ic_tstat": _tstat(ic),
            "rank_ic_mean": _mean(rank_ic), "rank_ic_tstat": _tstat(rank_ic),
            "directional_accuracy": _directional_accuracy(frame[signal], frame["forward_return"]),
            **_strategy_metrics(signal_returns, periods_per_year),
        })

    per_fold = pd.DataFrame(per_fold_rows, columns=["fold", "signal", *METRICS])
    overall = pd.DataFrame(overall_rows, columns=["signal", *METRICS]).set_index("signal")
    equity = pd.DataFrame({
        signal: (1.0 + returns[signal].set_index("timestamp")["net_return"]).cumprod() for signal in signals
    })
    equity.index.name = "timestamp"
    ic_by_fold = per_fold[["fold", "signal", "ic_mean", "rank_ic_mean"]].rename(
        columns={"ic_mean": "ic", "rank_ic_mean": "rank_ic"})
    return Evaluation(mode=mode, periods_per_year=float(periods_per_year), params=params, models=tuple(models),
                      per_fold=per_fold,
                      overall=overall, equity=equity, returns=returns, ic_by_fold=ic_by_fold)


# ------------------------------------------------------------------------------------------------ output


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _format(value: float, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value)}"
    return f"{value:.3f}"


def leaderboard(evaluation: Evaluation) -> str:
    """A plain-text table of the model and baselines over all OOF periods, best Sharpe first (NaN last)."""
    columns: list[tuple[str, str, str]] = [
        ("sharpe", "sharpe", "num"), ("annual_return", "ann_ret", "pct"), ("max_drawdown", "max_dd", "pct"),
        ("ic_mean", "ic", "num"), ("ic_tstat", "ic_t", "num"), ("rank_ic_mean", "rank_ic", "num"),
        ("directional_accuracy", "hit_rate", "pct"), ("turnover", "turnover", "num"), ("n_periods", "periods", "int"),
    ]
    ordered = evaluation.overall.sort_values("sharpe", ascending=False, na_position="last", kind="mergesort")
    header = ["rank", "signal", *[label for _, label, _ in columns]]
    rows = [
        [str(position), f"{signal}{' *' if signal in evaluation.models else ''}",
         *[_format(ordered.at[signal, metric], kind) for metric, _, kind in columns]]
        for position, signal in enumerate(ordered.index, start=1)
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    title = (f"OOF leaderboard ({evaluation.mode}, {evaluation.periods_per_year:g} periods/year, "
             f"cost {evaluation.params.cost_bps:g} bps; * = trained model, others are naive baselines)")
    rule = "-" * len(render(header))
    return "\n".join([title, rule, render(header), rule, *[render(r) for r in rows], rule])


def write_plots(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Write DVC-plot CSVs and PNGs into ``out_dir``; returns {file name: path}.

    ``equity.csv``: timestamp plus one equity column per signal. ``ic_by_fold.csv``: fold, signal, ic, rank_ic.
    ``equity.png``: equity curves, model vs baselines, dotted lines at fold starts. ``ic_by_fold.png``: IC and
    rank IC per fold as grouped bars. Figures are drawn on an Agg canvas created here (the Agg backend, without
    touching pyplot's global backend), so no display is needed. Each file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("equity.csv", "ic_by_fold.csv", "equity.png", "ic_by_fold.png")}

    equity = evaluation.equity.reset_index()
    equity["timestamp"] = equity["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    _atomic_write(paths["equity.csv"], lambda p: equity.to_csv(p, index=False))
    _atomic_write(paths["ic_by_fold.csv"], lambda p: evaluation.ic_by_fold.to_csv(p, index=False))

    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for signal in evaluation.signals:
        series = evaluation.equity[signal]
        axes.plot(series.index, series.to_numpy(), label=signal,
                  linewidth=2.0 if signal in evaluation.models else 1.0,
                  linestyle="-" if signal in evaluation.models else "--")
    axes.axhline(1.0, color="grey", linewidth=0.5)
    model_returns = evaluation.returns[evaluation.models[0]]
    if "fold" in model_returns and not model_returns.empty:
        for fold_start in model_returns.groupby("fold")["timestamp"].min().iloc[1:]:
            axes.axvline(fold_start, color="grey", linewidth=0.5, linestyle=":")
    axes.set_title(f"OOF equity, net of {evaluation.params.cost_bps:g} bps ({evaluation.mode})")
    axes.set_ylabel("growth of 1")
    axes.legend()
    figure.autofmt_xdate()
    _atomic_write(paths["equity.png"], lambda p: figure.savefig(p, format="png"))

    folds = sorted(evaluation.ic_by_fold["fold"].unique())
    positions = np.arange(len(folds))
    width = 0.8 / len(evaluation.signals)
    figure = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(figure)
    for panel, (column, label) in enumerate([("ic", "IC"), ("rank_ic", "rank IC")], start=1):
        axes = figure.add_subplot(2, 1, panel)
        for offset, signal in enumerate(evaluation.signals):
            values = (evaluation.ic_by_fold[evaluation.ic_by_fold["signal"] == signal]
                      .set_index("fold")[column].reindex(folds).to_numpy(dtype=float))
            axes.bar(positions + (offset - (len(evaluation.signals) - 1) / 2) * width, np.nan_to_num(values), width,
                     label=signal)
        axes.axhline(0.0, color="grey", linewidth=0.5)
        axes.set_xticks(positions, [str(f) for f in folds])
        axes.set_ylabel(label)
    axes.set_xlabel("fold")
    figure.axes[0].set_title("IC by fold (NaN shown as 0)")
    figure.axes[0].legend(fontsize="small")
    figure.tight_layout()
    _atomic_write(paths["ic_by_fold.png"], lambda p: figure.savefig(p, format="png"))
    return paths


def metrics_json_text(evaluation: Evaluation) -> str:
    """The metrics JSON as text, strict (no NaN tokens), for the evaluate stage to write."""
    return json.dumps(evaluation.to_metrics_json(), indent=2, allow_nan=False)


def evaluate_volatility(oof: pd.DataFrame, models: dict[str, str], *, baseline: str = "volatility_20") -> dict[str, Any]:
    """Score forward-volatility forecasts out of sample: rank IC, MSE and QLIKE, against the trailing volatility.

    The naive baseline forecasts the next ``horizon`` bars' volatility by the trailing 20-bar one
    (``volatility_20``, same units: the std of one-bar log returns). QLIKE (Patton 2011) is
    ``mean(s/f - log(s/f) - 1)`` on variances s = realised^2, f = forecast^2, robust to noise in the
    realised proxy; lower is better. Rows without a positive forecast and realisation are left out.
    """
    from alphaforge.models.importance import rank_ic

    realised = oof["forward_volatility"].to_numpy(dtype=float)
    columns = {**models, "trailing_volatility": baseline}
    result: dict[str, Any] = {}
    for name, column in columns.items():
        if column not in oof.columns:
            raise DataError(f"evaluate_volatility: OOF frame has no column {column!r} for {name!r}")
        forecast = oof[column].to_numpy(dtype=float)
        ok = np.isfinite(forecast) & np.isfinite(realised) & (forecast > 0) & (realised > 0)
        ratio = realised[ok] ** 2 / forecast[ok] ** 2
        result[name] = {
            "rank_ic": _json_number(rank_ic(forecast, realised, oof["timestamp"].to_numpy())),
            "mse": _json_number(np.mean((forecast[ok] - realised[ok]) ** 2)) if ok.any() else None,
            "qlike": _json_number(np.mean(ratio - np.log(ratio) - 1.0)) if ok.any() else None,
            "n": int(ok.sum()),
        }
    return {"target": "forward_volatility", "models": {k: result[k] for k in models},
            "baselines": {"trailing_volatility": result["trailing_volatility"]}}
