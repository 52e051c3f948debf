"""The evaluation's names and settings (:class:`EvaluationParams`) and its result (:class:`Evaluation`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.backtest import BASELINE_SIGNALS
from alphaforge.backtest.market import Execution


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


# ------------------------------------------------------------------------------------------------ JSON numbers


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None
