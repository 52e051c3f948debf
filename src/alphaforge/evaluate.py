"""Out-of-sample evaluation: every model against naive baselines, traded as it could have been traded.

Input is the out-of-fold (OOF) prediction frame the train stage writes (one row per (timestamp, symbol) in a
test fold, with the columns in :data:`OOF_COLUMNS`) and the market frame of the validated bars
(:func:`alphaforge.backtest.market_frame`): execution prices, tradability, costs and the baseline signals.
Every number comes from those rows only, so nothing the model saw in training leaks into the scores.

Two evaluation modes, picked once from the data (:func:`evaluation_mode`):

* ``cross_sectional`` when the median number of symbols per timestamp is at least ``min_cross_section``: the
  information coefficient (IC) is the correlation across symbols at each timestamp; strategies ``long_short``
  (quantile tranches held for the label horizon) and ``topk`` (long only, top-k with dropout, judged against
  the equal-weight universe).
* ``single_series`` otherwise: one time-series IC per fold; strategies ``long_flat`` (judged against buy and
  hold) and ``long_short_band``.

Signals: each model, and the baselines ``equal_weight`` (the tradeable universe, equally weighted: buy and hold),
``momentum_20``, ``momentum_12_1``, ``reversal_1``, ``reversal_5`` and ``low_volatility``, each put through the
same construction, execution, tradability and costs as the models (:mod:`alphaforge.backtest.portfolios`).

Conventions that matter when reading the numbers:

* A weight decided at bar t is traded at bar t+1's open (``execution: next_open``) or close (``next_close``)
  and earns the execution price's return to the next bar; costs (commission, half spread, impact) are charged
  on every change of weight. Positions carry across fold boundaries: the OOF history is traded as one
  continuous strategy, and a fold's metrics are that strategy's bars inside the fold.
* IC t-statistics are Newey-West (HAC) with at least ``horizon - 1`` lags: overlapping labels are dependent.
* Degenerate cases give NaN, never inf; NaN becomes ``null`` in :meth:`Evaluation.to_metrics_json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.backtest import BASELINE_SIGNALS, Panel, Simulation, build_panel, market_frame, simulate
from alphaforge.backtest.market import Execution, tradability_summary
from alphaforge.backtest.portfolios import (
    band_targets,
    equal_weight_targets,
    long_short_targets,
    topk_dropout_targets,
)
from alphaforge.io import atomic_write as _atomic_write
from alphaforge.metrics import (
    ABSOLUTE_DISPERSION_FLOOR as _ABSOLUTE_DISPERSION_FLOOR,
    RELATIVE_DISPERSION_FLOOR as _RELATIVE_DISPERSION_FLOOR,
    annual_return as _annual_return,
    directional_accuracy as _directional_accuracy,
    infer_periods_per_year,
    information_ratio as _information_ratio,
    max_drawdown as _max_drawdown,
    sharpe_ratio as _sharpe,
)
from alphaforge.schema import DataError
from alphaforge.stats import newey_west

__all__ = [
    "BASELINES",
    "BENCHMARK",
    "METRICS",
    "MODEL_SIGNAL",
    "OOF_COLUMNS",
    "SIGNAL_METRICS",
    "STRATEGY_METRICS",
    "Evaluation",
    "EvaluationParams",
    "Mode",
    "evaluate_oof",
    "evaluation_mode",
    "infer_periods_per_year",
    "information_coefficients",
    "leaderboard",
    "load_market_frame",
    "market_for",
    "market_from_labels",
    "metrics_json_text",
    "strategies_for",
    "strategy_returns",
    "write_plots",
]

Mode = Literal["cross_sectional", "single_series"]

MODEL_SIGNAL = "model"
BENCHMARK = "equal_weight"
BASELINES: tuple[str, ...] = (BENCHMARK, *BASELINE_SIGNALS)

OOF_COLUMNS: tuple[str, ...] = ("timestamp", "symbol", "fold", "prediction", "forward_return")
NUMERIC_OOF_COLUMNS: tuple[str, ...] = ("forward_return",)
DEFAULT_MODELS: dict[str, str] = {MODEL_SIGNAL: "prediction"}

SIGNAL_METRICS: tuple[str, ...] = ("ic_mean", "ic_tstat", "rank_ic_mean", "rank_ic_tstat", "directional_accuracy")
STRATEGY_METRICS: tuple[str, ...] = (
    "annual_return", "sharpe", "gross_annual_return", "gross_sharpe", "excess_annual_return", "information_ratio",
    "max_drawdown", "turnover", "commission", "spread_cost", "impact_cost", "n_periods",
)
METRICS: tuple[str, ...] = (*SIGNAL_METRICS, *STRATEGY_METRICS)
# Strategies judged by their excess over the equal-weight universe (long only); the others against cash.
BENCHMARKED: frozenset[str] = frozenset({"topk", "long_flat"})

# Below this many pooled pairs a time-series correlation is not worth reporting (two points always give +-1).
MIN_TIME_SERIES_PAIRS = 3
# A standard deviation this small relative to the values' magnitude is floating-point noise around a constant.


class EvaluationParams(BaseModel):
    """How signals become portfolios, how those are traded, and how their returns are scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    execution: Execution = Field(
        default="auto", description="next_open: trade a signal from bar t at bar t+1's open; next_close: at its "
                                    "close (one bar of delay); auto: next_open when the bars have an open column.")
    cost_bps: float = Field(default=5.0, ge=0.0, description="Commission per side, in basis points of value traded.")
    fallback_spread_bps: float = Field(
        default=10.0, ge=0.0, description="Full bid-ask spread assumed where neither bid/ask nor high/low exist.")
    spread_estimator: Literal["auto", "bid_ask", "corwin_schultz", "fixed"] = Field(
        default="auto", description="Bid-ask spread source; auto: bid/ask when present, else Corwin-Schultz from "
                                    "high/low, else fixed (fallback_spread_bps).")
    spread_window: int = Field(default=20, ge=2, description="Bars in the rolling spread estimate.")
    impact_coefficient: float = Field(
        default=0.1, ge=0.0, description="k in the square-root impact k * sigma * sqrt(traded value / ADV); 0: off.")
    min_price: float = Field(default=1.0, ge=0.0, description="A bar whose execution price is below this cannot "
                                                              "be traded (0 turns the rule off; use 0 for FX).")
    min_dollar_volume: float = Field(default=1e5, ge=0.0, description="A name whose trailing median dollar volume "
                                                                      "is below this cannot be traded.")
    liquidity_window: int = Field(default=20, ge=2, description="Bars in the trailing median dollar volume.")
    max_participation: float = Field(default=0.05, gt=0.0, le=1.0,
                                     description="A position is at most this share of trailing dollar volume.")
    capital: float = Field(default=1e7, gt=0.0, description="Book size, for the participation cap and impact.")
    long_short_quantile: float = Field(
        default=0.2, gt=0.0, le=0.5,
        description="long_short: long the top and short the bottom quantile of the signal (at least one a side).",
    )
    holding: int | None = Field(default=None, ge=1, description="long_short: bars each tranche is held; None: the "
                                                                "label horizon.")
    topk: int | None = Field(default=None, ge=1, description="topk: names held; None: long_short_quantile of the "
                                                             "median universe (at least 1).")
    n_drop: int | None = Field(default=None, ge=0, description="topk: names replaced a bar at most; None: "
                                                               "max(1, topk // 5).")
    no_trade_band: float = Field(default=0.5, ge=0.0, description="long_flat / long_short_band: the signal, in "
                                                                  "units of its expanding std, must pass +-band.")
    min_cross_section: int = Field(
        default=3, ge=2,
        description="Symbols per timestamp needed for a cross-sectional IC or long-short book; the median "
                    "count per timestamp also picks the evaluation mode.",
    )
    periods_per_year: float | None = Field(
        default=None, gt=0.0, description="Bars per year for annualising; None infers it from the timestamps.",
    )
    ic_decay_bars: int = Field(default=20, ge=1, description="Tear sheet: IC against returns 1..this many bars ahead.")


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate_oof`.

    ``signals``: one row per signal (index ``signal``) with :data:`SIGNAL_METRICS`. ``overall``: one row per
    (signal, strategy) with :data:`STRATEGY_METRICS` over every OOF bar. ``per_fold``: tidy rows (fold, signal,
    strategy) with :data:`METRICS`. ``returns[(signal, strategy)]``: per-bar gross, costs and net returns.
    ``attribution[(signal, strategy)]``: where the P&L came from (least liquid quintile, bars that did not
    trade, the top symbols). ``ic[signal]``: the per-timestamp rank IC (cross-sectional) or the per-timestamp
    mean product of standardised signal and label (single series), whose mean a HAC test is run on.
    """

    mode: Mode
    periods_per_year: float
    params: EvaluationParams
    models: tuple[str, ...]
    strategies: tuple[str, ...]
    horizon: int
    signals: pd.DataFrame
    overall: pd.DataFrame
    per_fold: pd.DataFrame
    returns: dict[tuple[str, str], pd.DataFrame]
    attribution: dict[tuple[str, str], dict[str, Any]]
    ic: dict[str, pd.Series]
    ic_by_fold: pd.DataFrame
    tradability: dict[str, Any]
    execution: str
    frame: pd.DataFrame = field(repr=False)
    market: pd.DataFrame = field(repr=False)

    @property
    def primary_strategy(self) -> str:
        return self.strategies[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Models first, then the baselines."""
        return (*self.models, *BASELINES)

    def equity(self, strategy: str) -> pd.DataFrame:
        """Growth of one unit under each signal's net returns for ``strategy`` (index timestamp)."""
        equity = pd.DataFrame({name: (1.0 + self.returns[(name, strategy)].set_index("timestamp")["net_return"])
                               .cumprod() for name in self.names})
        equity.index.name = "timestamp"
        return equity

    def row(self, signal: str, strategy: str | None = None) -> dict[str, float | int | None]:
        """Signal metrics plus one strategy's (default: the primary) metrics, JSON-ready."""
        strategy = strategy or self.primary_strategy
        values = {m: _json_number(self.signals.at[signal, m]) for m in SIGNAL_METRICS}
        values.update({m: _json_number(self.overall.at[(signal, strategy), m]) for m in STRATEGY_METRICS})
        return values

    def to_metrics_json(self) -> dict[str, Any]:
        """A JSON-able dict for ``dvc metrics show``: per signal, the primary strategy's metrics flat (as before)
        and every strategy under ``strategies``; NaN becomes None."""
        def block(signal: str) -> dict[str, Any]:
            out: dict[str, Any] = self.row(signal)
            out["strategies"] = {s: {m: _json_number(self.overall.at[(signal, s), m]) for m in STRATEGY_METRICS}
                                 | {"attribution": self.attribution[(signal, s)]} for s in self.strategies}
            return out

        return {
            "models": {name: block(name) for name in self.models},
            "baselines": {name: block(name) for name in BASELINES},
            "mode": self.mode,
            "strategies": list(self.strategies),
            "primary_strategy": self.primary_strategy,
            "benchmark": BENCHMARK,
            "execution": self.execution,
            "horizon": self.horizon,
            "tradability": self.tradability,
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


def evaluation_mode(frame: pd.DataFrame, min_cross_section: int) -> Mode:
    """``cross_sectional`` when the median number of symbols per timestamp is >= ``min_cross_section``."""
    _require_columns(frame, ["timestamp", "symbol"], "evaluation_mode")
    if frame.empty:
        raise DataError("evaluation_mode: empty frame; rule: at least one row")
    breadth = frame.groupby("timestamp")["symbol"].nunique()
    return "cross_sectional" if float(breadth.median()) >= min_cross_section else "single_series"


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


# -------------------------------------------------------------------------------------------- strategies


def strategies_for(mode: Mode) -> tuple[str, ...]:
    """The strategies a mode supports, the primary (the one promotion judges by default) first."""
    return ("long_short", "topk") if mode == "cross_sectional" else ("long_flat", "long_short_band")


def market_for(bars: pd.DataFrame, params: EvaluationParams) -> pd.DataFrame:
    """:func:`alphaforge.backtest.market_frame` of ``bars`` with the execution, cost and tradability settings."""
    return market_frame(
        bars, execution=params.execution, cost_bps=params.cost_bps, fallback_spread_bps=params.fallback_spread_bps,
        spread_estimator=params.spread_estimator,
        spread_window=params.spread_window, liquidity_window=params.liquidity_window, min_price=params.min_price,
        min_dollar_volume=params.min_dollar_volume, impact_coefficient=params.impact_coefficient,
        capital=params.capital,
    )


def load_market_frame(bars: pd.DataFrame, params: EvaluationParams) -> pd.DataFrame:
    """:func:`market_for` of validated bars, per series: each segment of a symbol split by a suspension (the
    ``segment`` column validate writes) is its own series, so no return or position crosses the suspension;
    the real symbol is put back."""
    from alphaforge.validate import as_series

    series = as_series(bars)
    market = market_for(series.drop(columns="segment", errors="ignore"), params)
    if "segment" in bars.columns and len(series) == len(bars):
        original = bars[["timestamp"]].assign(series=series["symbol"].to_numpy(), symbol=bars["symbol"].to_numpy())
        names = dict(zip(original["series"], original["symbol"], strict=False))
        attrs = dict(market.attrs)
        market = market.assign(symbol=market["symbol"].map(names))
        market.attrs = attrs
    return market


def market_from_labels(dataset: pd.DataFrame, params: EvaluationParams) -> pd.DataFrame:
    """A market frame from a features dataset alone, for the tune objective: the execution return is the label
    ``forward_return_1`` (already at the execution price), every bar is tradable and costs are the commission
    plus half of ``fallback_spread_bps``. The evaluate stage and the gate use :func:`market_for` on real bars."""
    _require_columns(dataset, ["timestamp", "symbol", "forward_return_1"], "market_from_labels")
    market = dataset[["timestamp", "symbol"]].copy()
    market["exec_return"] = np.expm1(dataset["forward_return_1"].to_numpy(dtype=float))
    market["tradable"] = True
    market["stale"] = False
    market["dollar_volume"] = np.nan
    market["cost_rate"] = params.cost_bps / 1e4 + 0.5 * params.fallback_spread_bps / 1e4
    market["impact_scale"] = 0.0
    for name in BASELINE_SIGNALS:
        market[name] = np.nan
    market.attrs["execution"] = "labels"
    return market


def _panel(frame: pd.DataFrame, market: pd.DataFrame, params: EvaluationParams) -> Panel:
    missing = [c for c in ("exec_return", "tradable", "cost_rate", *BASELINE_SIGNALS) if c not in market.columns]
    if missing:
        raise DataError(f"evaluate: the market frame lacks {missing}; rule: build it with market_for(bars, params)")
    return build_panel(frame[["timestamp", "symbol", "fold"]], market, cost_bps=params.cost_bps,
                       max_participation=params.max_participation, capital=params.capital)


def _topk(panel: Panel, params: EvaluationParams) -> tuple[int, int]:
    breadth = float(np.median(panel.present.sum(axis=1))) if len(panel.timestamps) else 1.0
    topk = params.topk or max(1, int(round(params.long_short_quantile * breadth)))
    n_drop = params.n_drop if params.n_drop is not None else max(1, topk // 5)
    return topk, n_drop


def _targets(panel: Panel, name: str, signal: np.ndarray, strategy: str, params: EvaluationParams,
             holding: int) -> np.ndarray:
    if strategy == "long_short":
        return long_short_targets(panel, signal, quantile=params.long_short_quantile,
                                  min_cross_section=params.min_cross_section, holding=holding)
    if strategy == "topk":
        if name == BENCHMARK:
            return equal_weight_targets(panel)
        topk, n_drop = _topk(panel, params)
        return topk_dropout_targets(panel, signal, topk=topk, n_drop=n_drop)
    if strategy in ("long_flat", "long_short_band"):
        return band_targets(panel, signal, band=params.no_trade_band, long_only=strategy == "long_flat")
    raise DataError(f"evaluate: unknown strategy {strategy!r}; rule: one of long_short, topk, long_flat, "
                    "long_short_band")


def _signal_matrix(panel: Panel, frame: pd.DataFrame, name: str) -> np.ndarray:
    """The (T, N) signal of a model or baseline column of ``frame``; the benchmark is a constant (hold all)."""
    if name == BENCHMARK:
        return np.where(panel.present, 1.0, np.nan)
    return panel.matrix(frame, name)


def _attribution(panel: Panel, simulation: Simulation) -> dict[str, Any]:
    """Where the gross P&L came from: the least liquid fifth of names, bars that did not trade, the top names."""
    pnl = simulation.pnl
    total = float(pnl.sum())
    by_symbol = pd.Series(pnl.sum(axis=0), index=panel.symbols)
    positive = by_symbol[by_symbol > 0].sort_values(ascending=False)
    n_top = max(3, int(math.ceil(0.05 * len(panel.symbols))))
    known_liquidity = np.isfinite(panel.liquidity_rank)
    out: dict[str, Any] = {
        "gross_pnl": total,
        "illiquid_share": None, "stale_share": None, "top_symbols_share": None, "top_symbols": [],
        "n_top_symbols": n_top, "n_symbols": int(len(panel.symbols)),
    }
    if total > 0:
        if known_liquidity.any():
            out["illiquid_share"] = float(pnl[known_liquidity & (panel.liquidity_rank <= 0.2)].sum() / total)
        out["stale_share"] = float(pnl[panel.stale].sum() / total)
    if len(panel.symbols) >= 10 and positive.sum() > 0:
        out["top_symbols_share"] = float(positive.iloc[:n_top].sum() / positive.sum())
        out["top_symbols"] = [str(s) for s in positive.index[:n_top]]
    return out


def _strategy_metrics(returns: pd.DataFrame, excess: np.ndarray | None, periods_per_year: float
                      ) -> dict[str, float | int]:
    net = returns["net_return"].to_numpy(dtype=float)
    gross = returns["gross_return"].to_numpy(dtype=float)
    excess = net if excess is None else excess
    return {
        "annual_return": _annual_return(net, periods_per_year),
        "sharpe": _sharpe(net, periods_per_year),
        "gross_annual_return": _annual_return(gross, periods_per_year),
        "gross_sharpe": _sharpe(gross, periods_per_year),
        "excess_annual_return": float(np.mean(excess) * periods_per_year) if excess.size else math.nan,
        "information_ratio": _information_ratio(excess, periods_per_year),
        "max_drawdown": _max_drawdown(net),
        "turnover": _mean(returns["turnover"]),
        "commission": float(returns["commission"].mean() * periods_per_year) if len(returns) else math.nan,
        "spread_cost": float(returns["spread_cost"].mean() * periods_per_year) if len(returns) else math.nan,
        "impact_cost": float(returns["impact_cost"].mean() * periods_per_year) if len(returns) else math.nan,
        "n_periods": int(net.size),
    }


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


def evaluate_oof(oof: pd.DataFrame, params: EvaluationParams, models: dict[str, str] | None = None, *,
                 market: pd.DataFrame, horizon: int = 1) -> Evaluation:
    """Score every model and baseline on the OOF frame, traded through ``market``, per fold and overall.

    ``market`` is :func:`market_for` of the validated bars (it must cover the OOF rows); ``horizon`` is the
    label horizon (the tranche holding period unless ``params.holding`` says otherwise, and the least HAC lag
    of the IC tests). ``models`` maps each model's name to its signal column (default ``{"model":
    "prediction"}``); a name may not be a baseline's.
    """
    models = dict(models or DEFAULT_MODELS)
    clash = sorted(set(models) & set(BASELINES))
    if clash:
        raise DataError(f"evaluate_oof: model name(s) {clash} are baseline names; rename the model(s)")
    _validate_oof(oof, list(models.values()))
    frame = oof.sort_values(["timestamp", "symbol"], kind="mergesort").reset_index(drop=True)
    for name, column in models.items():
        frame[name] = frame[column].astype(float)
    baseline_values = frame[["timestamp", "symbol"]].merge(
        market[["timestamp", "symbol", *BASELINE_SIGNALS]], on=["timestamp", "symbol"], how="left")
    for name in BASELINE_SIGNALS:
        frame[name] = baseline_values[name].to_numpy(dtype=float)
    frame[BENCHMARK] = 1.0
    mode = evaluation_mode(frame, params.min_cross_section)
    periods_per_year = params.periods_per_year or infer_periods_per_year(frame["timestamp"])
    strategies = strategies_for(mode)
    holding = params.holding or horizon
    panel = _panel(frame, market, params)
    folds = sorted(int(f) for f in frame["fold"].unique())
    fold_of_stamp = frame.groupby("timestamp")["fold"].first()

    names = (*models, *BASELINES)
    signal_rows, overall_rows, per_fold_rows = [], [], []
    returns: dict[tuple[str, str], pd.DataFrame] = {}
    attribution: dict[tuple[str, str], dict[str, Any]] = {}
    ic_tested: dict[str, pd.Series] = {}
    fold_ic: dict[str, dict[int, dict[str, float]]] = {}
    for name in names:
        stats, ic, rank_ic, tested = _signal_stats(frame, name, mode, params, horizon)
        signal_rows.append({"signal": name, **stats})
        ic_tested[name] = tested
        fold_ic[name] = _fold_ic_stats(ic, rank_ic, fold_of_stamp, mode, horizon)
        matrix = _signal_matrix(panel, frame, name)
        for strategy in strategies:
            simulation = simulate(panel, _targets(panel, name, matrix, strategy, params, holding))
            returns[(name, strategy)] = simulation.returns
            attribution[(name, strategy)] = _attribution(panel, simulation)
    for name in names:
        for strategy in strategies:
            frame_returns = returns[(name, strategy)]
            benchmark = returns[(BENCHMARK, strategy)]["net_return"].to_numpy() if strategy in BENCHMARKED else None
            excess = None if benchmark is None else frame_returns["net_return"].to_numpy() - benchmark
            overall_rows.append({"signal": name, "strategy": strategy,
                                 **_strategy_metrics(frame_returns, excess, periods_per_year)})
            for fold in folds:
                in_fold = (frame_returns["fold"] == fold).to_numpy()
                signal_fold = fold_ic[name].get(fold, dict.fromkeys(("ic_mean", "ic_tstat", "rank_ic_mean",
                                                                    "rank_ic_tstat"), math.nan))
                rows = frame["fold"] == fold
                per_fold_rows.append({
                    "fold": fold, "signal": name, "strategy": strategy, **signal_fold,
                    "directional_accuracy": _directional_accuracy(frame.loc[rows, name],
                                                                  frame.loc[rows, "forward_return"]),
                    **_strategy_metrics(frame_returns[in_fold], None if excess is None else excess[in_fold],
                                        periods_per_year),
                })
    signals = pd.DataFrame(signal_rows, columns=["signal", *SIGNAL_METRICS]).set_index("signal")
    overall = pd.DataFrame(overall_rows, columns=["signal", "strategy", *STRATEGY_METRICS]).set_index(
        ["signal", "strategy"])
    per_fold = pd.DataFrame(per_fold_rows, columns=["fold", "signal", "strategy", *METRICS])
    primary = per_fold[per_fold["strategy"] == strategies[0]]
    ic_by_fold = primary[["fold", "signal", "ic_mean", "rank_ic_mean"]].rename(
        columns={"ic_mean": "ic", "rank_ic_mean": "rank_ic"}).reset_index(drop=True)
    return Evaluation(mode=mode, periods_per_year=float(periods_per_year), params=params, models=tuple(models),
                      strategies=strategies, horizon=int(horizon), signals=signals, overall=overall,
                      per_fold=per_fold, returns=returns, attribution=attribution, ic=ic_tested,
                      ic_by_fold=ic_by_fold, tradability=_tradability(market, frame),
                      execution=str(market.attrs.get("execution", params.execution)), frame=frame, market=market)


def _tradability(market: pd.DataFrame, frame: pd.DataFrame) -> dict[str, Any]:
    """The tradability summary over the out-of-sample rows."""
    rows = market.merge(frame[["timestamp", "symbol"]], on=["timestamp", "symbol"])
    rows.attrs = dict(market.attrs)
    return tradability_summary(rows)


def strategy_returns(frame: pd.DataFrame, signal_col: str, params: EvaluationParams, market: pd.DataFrame, *,
                     horizon: int = 1, strategy: str | None = None) -> pd.DataFrame:
    """Per-bar returns (gross, costs, net, turnover) of one signal through one strategy (default: the mode's
    primary), with the same execution, tradability and costs as :func:`evaluate_oof`.

    ``frame`` needs ``timestamp``, ``symbol`` and ``signal_col`` (``fold`` optional).
    """
    _require_columns(frame, ["timestamp", "symbol", signal_col], "strategy_returns")
    if frame.empty:
        raise DataError("strategy_returns: empty frame; rule: at least one row")
    data = frame.sort_values(["timestamp", "symbol"], kind="mergesort").reset_index(drop=True)
    if "fold" not in data.columns:
        data = data.assign(fold=0)
    mode = evaluation_mode(data, params.min_cross_section)
    strategy = strategy or strategies_for(mode)[0]
    panel = _panel(data, market, params)
    matrix = panel.matrix(data, signal_col)
    return simulate(panel, _targets(panel, signal_col, matrix, strategy, params, params.holding or horizon)).returns


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


# ------------------------------------------------------------------------------------------------ output


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _format(value: Any, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value)}"
    return f"{value:.3f}"


LEADERBOARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sharpe", "sharpe", "num"), ("annual_return", "net_ret", "pct"), ("gross_annual_return", "gross_ret", "pct"),
    ("information_ratio", "IR", "num"), ("max_drawdown", "max_dd", "pct"), ("turnover", "turnover", "num"),
    ("commission", "comm", "pct"), ("spread_cost", "spread", "pct"), ("impact_cost", "impact", "pct"),
    ("ic_mean", "ic", "num"), ("ic_tstat", "ic_t", "num"), ("rank_ic_mean", "rank_ic", "num"),
    ("rank_ic_tstat", "rank_ic_t", "num"), ("dsr", "dsr", "num"), ("pbo", "pbo", "num"),
)


def _render(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    rule = "-" * len(render(header))
    return [rule, render(header), rule, *[render(r) for r in rows], rule]


def leaderboard(evaluation: Evaluation, overfitting: dict[str, dict[str, Any]] | None = None) -> str:
    """Plain-text tables, one per strategy: every model and baseline, best net Sharpe first (NaN last).

    Returns and costs are annualised; IR is against the equal-weight universe for ``topk``/``long_flat`` and
    against cash otherwise; IC t-stats are Newey-West. ``overfitting`` adds each model's deflated Sharpe and PBO.
    """
    overfitting = overfitting or {}
    blocks = [f"Out-of-sample leaderboard ({evaluation.mode}; {evaluation.execution} execution; "
              f"{evaluation.periods_per_year:g} periods/year; commission {evaluation.params.cost_bps:g} bps/side "
              f"+ half spread + impact; * = trained model)"]
    tradability = evaluation.tradability
    blocks.append(f"tradable symbol-bars {100 * (tradability.get('tradable_share') or 0):.1f}%; spread from "
                  f"{tradability.get('spread_source')} (median half spread "
                  f"{tradability.get('median_half_spread_bps') or 0:.1f} bps)"
                  + (f"; not applied: {', '.join(tradability['rules_not_applied'])}"
                     if tradability.get("rules_not_applied") else ""))
    for strategy in evaluation.strategies:
        table = evaluation.overall.xs(strategy, level="strategy").join(evaluation.signals)
        table["dsr"] = [((overfitting.get(n) or {}).get("dsr") or {}).get("dsr") for n in table.index]
        table["pbo"] = [((overfitting.get(n) or {}).get("pbo") or {}).get("pbo") for n in table.index]
        table = table.astype({"dsr": float, "pbo": float})
        ordered = table.sort_values("sharpe", ascending=False, na_position="last", kind="mergesort")
        header = ["rank", "signal", *[label for _, label, _ in LEADERBOARD_COLUMNS]]
        rows = [[str(position), f"{name}{' *' if name in evaluation.models else ''}",
                 *[_format(ordered.at[name, metric], kind) for metric, _, kind in LEADERBOARD_COLUMNS]]
                for position, name in enumerate(ordered.index, start=1)]
        against = "equal-weight universe" if strategy in BENCHMARKED else "cash"
        blocks += ["", f"strategy {strategy} (IR against the {against})", *_render(header, rows)]
    return "\n".join(blocks)


def write_plots(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Write DVC-plot CSVs and PNGs into ``out_dir``; returns {file name: path}.

    ``equity.csv``: timestamp plus one net-equity column per signal (primary strategy). ``ic_by_fold.csv``:
    fold, signal, ic, rank_ic. ``equity.png``: net equity per strategy, models vs baselines, dotted lines at fold
    starts. ``ic_by_fold.png``: IC and rank IC per fold. Drawn on an Agg canvas (no display, pyplot untouched);
    each file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("equity.csv", "ic_by_fold.csv", "equity.png", "ic_by_fold.png")}

    equity = evaluation.equity(evaluation.primary_strategy).reset_index()
    equity["timestamp"] = pd.to_datetime(equity["timestamp"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    _atomic_write(paths["equity.csv"], lambda p: equity.to_csv(p, index=False))
    _atomic_write(paths["ic_by_fold.csv"], lambda p: evaluation.ic_by_fold.to_csv(p, index=False))

    figure = Figure(figsize=(10, 4.5 * len(evaluation.strategies)), dpi=100)
    FigureCanvasAgg(figure)
    for panel, strategy in enumerate(evaluation.strategies, start=1):
        axes = figure.add_subplot(len(evaluation.strategies), 1, panel)
        curves = evaluation.equity(strategy)
        for name in evaluation.names:
            axes.plot(curves.index, curves[name].to_numpy(), label=name,
                      linewidth=2.0 if name in evaluation.models else 1.0,
                      linestyle="-" if name in evaluation.models else "--")
        axes.axhline(1.0, color="grey", linewidth=0.5)
        fold_starts = evaluation.returns[(evaluation.models[0], strategy)].groupby("fold")["timestamp"].min()
        for fold_start in fold_starts.iloc[1:]:
            axes.axvline(fold_start, color="grey", linewidth=0.5, linestyle=":")
        axes.set_title(f"{strategy}: out-of-sample equity, net of costs ({evaluation.execution} execution)")
        axes.set_ylabel("growth of 1")
        axes.legend(fontsize="small", ncol=2)
    figure.autofmt_xdate()
    figure.tight_layout()
    _atomic_write(paths["equity.png"], lambda p: figure.savefig(p, format="png"))

    folds = sorted(evaluation.ic_by_fold["fold"].unique())
    positions = np.arange(len(folds))
    width = 0.8 / len(evaluation.names)
    figure = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(figure)
    for panel, (column, label) in enumerate([("ic", "IC"), ("rank_ic", "rank IC")], start=1):
        axes = figure.add_subplot(2, 1, panel)
        for offset, name in enumerate(evaluation.names):
            values = (evaluation.ic_by_fold[evaluation.ic_by_fold["signal"] == name]
                      .set_index("fold")[column].reindex(folds).to_numpy(dtype=float))
            axes.bar(positions + (offset - (len(evaluation.names) - 1) / 2) * width, np.nan_to_num(values), width,
                     label=name)
        axes.axhline(0.0, color="grey", linewidth=0.5)
        axes.set_xticks(positions, [str(f) for f in folds])
        axes.set_ylabel(label)
    axes.set_xlabel("fold")
    figure.axes[0].set_title("IC by fold (NaN shown as 0)")
    figure.axes[0].legend(fontsize="small", ncol=2)
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
