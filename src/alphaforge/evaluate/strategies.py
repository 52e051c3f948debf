"""Strategies: the market a signal trades through, the portfolio targets of each strategy, the simulated per-bar
returns, where the P&L came from, and the strategy's figures (via :mod:`alphaforge.metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.backtest import BASELINE_SIGNALS, Panel, Simulation, build_panel, market_frame, simulate
from alphaforge.backtest.market import tradability_summary
from alphaforge.backtest.portfolios import band_targets, equal_weight_targets, long_short_targets, topk_dropout_targets
from alphaforge.evaluate.ic import _mean
from alphaforge.evaluate.inputs import _require_columns, evaluation_mode
from alphaforge.evaluate.params import BENCHMARK, EvaluationParams, Mode
from alphaforge.metrics import annual_return as _annual_return
from alphaforge.metrics import information_ratio as _information_ratio
from alphaforge.metrics import max_drawdown as _max_drawdown
from alphaforge.metrics import sharpe_ratio as _sharpe
from alphaforge.schema import DataError


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
