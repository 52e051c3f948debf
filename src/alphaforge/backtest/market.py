"""What could have been traded, at what price and cost: one row per (timestamp, symbol) of the validated bars.

A signal computed from bar t is known only after bar t closes, so it is traded at a later price
(``execution``): ``next_open`` enters at bar t+1's open, ``next_close`` at bar t+1's close (one bar of delay).
Either way the position decided at t earns ``exec_return = P[t+2] / P[t+1] - 1`` where P is the execution
price, and the label the models learn (:func:`alphaforge.features.compute_labels`) is built on the same prices,
so what a model is trained to predict is what the strategy can earn (Qlib's Alpha158 label,
``Ref($close,-2)/Ref($close,-1)-1``, skips a bar for the same reason).

Tradability at the execution bar t+1: the bar traded (volume > 0 where volume exists; without volume, a flat
bar at the previous close counts as not traded), its execution price is at least ``min_price``, and the
trailing median dollar volume known at t is at least ``min_dollar_volume``. A rule whose column the source
lacks (close-only data has no volume) is not applied, and :func:`tradability_summary` says so.

Costs per unit of traded weight: the commission ``cost_bps`` per side plus half the bid-ask spread, taken
from ``bid``/``ask`` when present, else estimated per symbol from daily highs and lows with Corwin and Schultz
(2012), else ``fallback_spread_bps`` (``spread_estimator`` picks one explicitly); plus, with ``impact_coefficient`` > 0, a square-root market impact
``k * sigma * sqrt(traded value / ADV)`` per unit traded (Almgren et al. 2005). Every estimate uses bars up to t.

Naive baseline signals are computed here too, from closes up to t, so every baseline is traded exactly like a
model: ``momentum_20`` (20-bar return), ``momentum_12_1`` (return from 252 to 21 bars ago), ``reversal_1`` and
``reversal_5`` (minus the last 1- and 5-bar return) and ``low_volatility`` (minus the 20-bar volatility).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from alphaforge.schema import DataError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BASELINE_SIGNALS",
    "Execution",
    "ResolvedExecution",
    "execution_prices",
    "market_frame",
    "resolve_execution",
    "tradability_summary",
]

Execution = Literal["auto", "next_open", "next_close"]
SpreadEstimator = Literal["auto", "bid_ask", "corwin_schultz", "fixed"]
ResolvedExecution = Literal["next_open", "next_close"]
BASELINE_SIGNALS: tuple[str, ...] = ("momentum_20", "momentum_12_1", "reversal_1", "reversal_5", "low_volatility")
_CS_DENOMINATOR = 3.0 - 2.0 * math.sqrt(2.0)


def resolve_execution(columns: Sequence[str], execution: str) -> ResolvedExecution:
    """``auto`` is ``next_open`` when the bars have an ``open`` column, else ``next_close``."""
    if execution == "auto":
        return "next_open" if "open" in columns else "next_close"
    if execution == "next_open" and "open" not in columns:
        raise DataError("evaluate.execution: next_open needs an 'open' column and the bars have "
                        f"{sorted(columns)}; rule: use next_close (or auto) for close-only data")
    if execution not in ("next_open", "next_close"):
        raise DataError(f"evaluate.execution: {execution!r}; rule: auto | next_open | next_close")
    return execution  # type: ignore[return-value]


def execution_prices(bars: pd.DataFrame, execution: ResolvedExecution) -> np.ndarray:
    """The price a trade at each bar gets: its open (next_open) or its close (next_close)."""
    return bars["open" if execution == "next_open" else "close"].to_numpy(dtype=float)


def _sorted_bars(bars: pd.DataFrame, caller: str) -> tuple[pd.DataFrame, np.ndarray]:
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"{caller}: bars lack column(s) {missing}; rule: the canonical schema (timestamp, symbol, close)")
    ordered = bars.sort_values(["symbol", "timestamp"], kind="mergesort").reset_index(drop=True)
    codes = pd.factorize(ordered["symbol"])[0]
    return ordered, codes


def _shift(values: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """``values[i + k]`` within the same symbol (rows sorted by symbol then time), NaN past its end or start."""
    out = np.full(values.shape, np.nan)
    if k > 0:
        same = codes[k:] == codes[:-k]
        out[:-k] = np.where(same, values[k:], np.nan)
    elif k < 0:
        k = -k
        same = codes[:-k] == codes[k:]
        out[k:] = np.where(same, values[:-k], np.nan)
    else:
        out[:] = values
    return out


def _rolling(values: np.ndarray, codes: np.ndarray, window: int, how: str, min_periods: int) -> np.ndarray:
    series = pd.Series(values)
    grouped = series.groupby(codes, sort=False).rolling(window, min_periods=min_periods)
    result = getattr(grouped, how)()
    return result.reset_index(level=0, drop=True).sort_index().to_numpy(dtype=float)


def _corwin_schultz(high: np.ndarray, low: np.ndarray, close: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The raw Corwin-Schultz (2012) two-bar spread estimates from the highs and lows of bars t-1 and t.

    Negative estimates are kept: the caller averages over a window, then floors at zero (the paper's less biased
    variant; flooring each two-day estimate first biases the average up, most for liquid names).
    With their overnight adjustment: when bar t opens above (below) bar t-1's close without trading back to it,
    bar t's high and low are shifted down (up) by the gap, so a move between sessions is not read as spread.
    """
    prev_high, prev_low, prev_close = _shift(high, codes, -1), _shift(low, codes, -1), _shift(close, codes, -1)
    gap_up = np.where(low > prev_close, low - prev_close, 0.0)
    gap_down = np.where(high < prev_close, prev_close - high, 0.0)
    high = high - gap_up + gap_down
    low = low - gap_up + gap_down
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = np.log(high / low) ** 2 + np.log(prev_high / prev_low) ** 2
        gamma = np.log(np.maximum(high, prev_high) / np.minimum(low, prev_low)) ** 2
        alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / _CS_DENOMINATOR - np.sqrt(gamma / _CS_DENOMINATOR)
        spread = 2.0 * (np.exp(alpha) - 1.0) / (1.0 + np.exp(alpha))
    return np.where(np.isfinite(spread), spread, np.nan)


def market_frame(
    bars: pd.DataFrame,
    *,
    execution: str = "auto",
    cost_bps: float = 5.0,
    fallback_spread_bps: float = 10.0,
    spread_estimator: str = "auto",
    spread_window: int = 20,
    liquidity_window: int = 20,
    min_price: float = 0.0,
    min_dollar_volume: float = 0.0,
    impact_coefficient: float = 0.0,
    capital: float = 1e7,
) -> pd.DataFrame:
    """Per (timestamp, symbol): what a position decided at that bar earns, whether it could be traded, its costs.

    Columns: ``exec_price`` (P[t+1]), ``exec_return`` (P[t+2]/P[t+1] - 1), ``tradable`` (bool, at t+1),
    ``traded_next`` and ``stale`` (the entry bar t+1 / the exit bar t+2 did not trade), ``dollar_volume``
    (trailing median, known at t; NaN without volume), ``half_spread`` and ``spread_source``, ``cost_rate``
    (commission + half spread, per unit of weight traded), ``impact_scale`` (impact cost per unit traded is
    ``impact_scale * sqrt(|trade|)``), ``volatility``, the :data:`BASELINE_SIGNALS`, and ``execution``
    (the resolved convention, in ``frame.attrs`` too). Sorted by timestamp, then symbol.
    """
    resolved = resolve_execution(list(bars.columns), execution)
    ordered, codes = _sorted_bars(bars, "market_frame")
    close = ordered["close"].to_numpy(dtype=float)
    price = execution_prices(ordered, resolved)
    next_price, after_price = _shift(price, codes, 1), _shift(price, codes, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        exec_return = after_price / next_price - 1.0
        log_close = np.log(close)
    exec_return[~np.isfinite(exec_return)] = np.nan

    has_volume = "volume" in ordered.columns and ordered["volume"].notna().any()
    if has_volume:
        volume = ordered["volume"].to_numpy(dtype=float)
        traded = ~(volume <= 0)  # NaN volume: unknown, counted as traded
        dollar_volume = _rolling(close * np.where(np.isfinite(volume), volume, np.nan), codes, liquidity_window,
                                 "median", 1)
    else:
        volume = None
        if {"open", "high", "low"} <= set(ordered.columns):
            flat = (ordered["high"].to_numpy(dtype=float) == ordered["low"].to_numpy(dtype=float))
            unchanged = close == _shift(close, codes, -1)
            traded = ~(flat & unchanged)
        else:
            traded = np.ones(len(ordered), dtype=bool)
        dollar_volume = np.full(len(ordered), np.nan)
    traded_next = _shift(traded.astype(float), codes, 1) == 1.0
    stale = _shift(traded.astype(float), codes, 2) == 0.0

    tradable = traded_next & np.isfinite(next_price)
    if min_price > 0:
        tradable &= next_price >= min_price
    if has_volume and min_dollar_volume > 0:
        tradable &= ~(dollar_volume < min_dollar_volume)  # NaN (no volume reported at all yet) is not refused

    has_quotes = {"bid", "ask"} <= set(ordered.columns) and bool(ordered[["bid", "ask"]].notna().any().all())
    has_range = {"high", "low"} <= set(ordered.columns)
    if spread_estimator == "auto":
        spread_estimator = "bid_ask" if has_quotes else "corwin_schultz" if has_range else "fixed"
    if (spread_estimator == "bid_ask" and not has_quotes) or (spread_estimator == "corwin_schultz" and not has_range):
        needs = "bid and ask" if spread_estimator == "bid_ask" else "high and low"
        raise DataError(f"evaluate.spread_estimator: {spread_estimator} needs {needs} columns and the bars have "
                        f"{sorted(ordered.columns)}; rule: use auto or fixed (fallback_spread_bps)")
    if spread_estimator == "bid_ask":
        with np.errstate(invalid="ignore", divide="ignore"):
            quoted = (ordered["ask"].to_numpy(dtype=float) - ordered["bid"].to_numpy(dtype=float)) / (
                0.5 * (ordered["ask"].to_numpy(dtype=float) + ordered["bid"].to_numpy(dtype=float)))
        spread = _rolling(np.where(quoted >= 0, quoted, np.nan), codes, spread_window, "median", 1)
        source = "bid_ask"
    elif spread_estimator == "corwin_schultz":
        spread = _rolling(_corwin_schultz(ordered["high"].to_numpy(dtype=float), ordered["low"].to_numpy(dtype=float),
                                          close, codes), codes, spread_window, "mean", 2)
        spread = np.maximum(spread, 0.0)
        source = "corwin_schultz"
    else:
        spread = np.full(len(ordered), np.nan)
        source = "fixed"
    spread = np.where(np.isfinite(spread), spread, fallback_spread_bps / 1e4)
    half_spread = 0.5 * spread

    log_return_1 = log_close - _shift(log_close, codes, -1)
    volatility = _rolling(log_return_1, codes, liquidity_window, "std", max(2, liquidity_window // 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        impact_scale = impact_coefficient * volatility * np.sqrt(capital / dollar_volume)
    impact_scale = np.where(np.isfinite(impact_scale), impact_scale, 0.0)

    frame = pd.DataFrame({
        "timestamp": ordered["timestamp"].to_numpy(),
        "symbol": ordered["symbol"].to_numpy(),
        "exec_price": next_price,
        "exec_return": exec_return,
        "tradable": tradable,
        "traded_next": traded_next,
        "stale": stale,
        "dollar_volume": dollar_volume,
        "half_spread": half_spread,
        "cost_rate": cost_bps / 1e4 + half_spread,
        "impact_scale": impact_scale,
        "volatility": volatility,
        "momentum_20": log_close - _shift(log_close, codes, -20),
        "momentum_12_1": _shift(log_close, codes, -21) - _shift(log_close, codes, -252),
        "reversal_1": -log_return_1,
        "reversal_5": -(log_close - _shift(log_close, codes, -5)),
        "low_volatility": -volatility,
    })
    frame["timestamp"] = ordered["timestamp"].array
    frame = frame.sort_values(["timestamp", "symbol"], kind="mergesort").reset_index(drop=True)
    frame.attrs.update({"execution": resolved, "spread_source": source, "has_volume": bool(has_volume),
                        "min_price": min_price, "min_dollar_volume": min_dollar_volume})
    frame["spread_source"] = source
    return frame


def tradability_summary(market: pd.DataFrame) -> dict[str, object]:
    """How many symbol-bars each tradability rule refused, and which rules could not be applied."""
    n = len(market)
    has_volume = bool(market.attrs.get("has_volume", market["dollar_volume"].notna().any()))
    refused_volume = int((~market["traded_next"] & market["exec_price"].notna()).sum())
    min_price = float(market.attrs.get("min_price", 0.0))
    min_dollar_volume = float(market.attrs.get("min_dollar_volume", 0.0))
    return {
        "execution": market.attrs.get("execution"),
        "spread_source": market.attrs.get("spread_source"),
        "symbol_bars": n,
        "tradable_share": float(market["tradable"].mean()) if n else None,
        "refused_no_trade": refused_volume,
        "refused_min_price": int((market["exec_price"] < min_price).sum()) if min_price > 0 else 0,
        "refused_min_dollar_volume": int((market["dollar_volume"] < min_dollar_volume).sum())
        if has_volume and min_dollar_volume > 0 else 0,
        "rules_not_applied": [] if has_volume else ["volume > 0 (no volume column)",
                                                    "min_dollar_volume (no volume column)",
                                                    "max_participation (no volume column)"],
        "median_half_spread_bps": float(np.nanmedian(market["half_spread"]) * 1e4) if n else None,
    }
