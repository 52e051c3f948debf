"""Performance figures of a return series, computed one way for the whole package.

Tune's objective, the evaluation leaderboard, the overfitting statistics, the RL stage, drift monitoring and
A/B reports all call these functions, so the same returns get the same Sharpe ratio everywhere.

Conventions (one set, used by every caller):

* Inputs are per-period simple returns; non-finite values (NaN, +-inf) are dropped before computing.
* Sample standard deviation (``ddof=1``).
* **Flat returns.** A series is *flat* when its standard deviation is not finite or is at most
  ``max(1e-12 * |mean|, 1e-15)`` (:func:`is_flat`): float noise around a constant, not dispersion. The Sharpe
  ratio, information ratio and t-statistic of a flat series, or of fewer than two finite returns, are **NaN**
  (never 0 and never +-inf): "undefined", which JSON writers turn into ``null``.
* Annualisation multiplies a per-period ratio by ``sqrt(periods_per_year)`` (:func:`annualise_ratio`);
  ``periods_per_year=1`` gives the per-period figure. :func:`infer_periods_per_year` derives it from timestamps.
* Max drawdown counts the starting capital as a peak and is in ``[-1, 0]``.
* Directional accuracy (hit rate) ignores rows whose signal is zero or NaN or whose target is NaN; a realised
  return of exactly zero is a miss for any non-zero signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from alphaforge.schema import DataError

__all__ = [
    "ABSOLUTE_DISPERSION_FLOOR",
    "RELATIVE_DISPERSION_FLOOR",
    "annual_return",
    "annualise_ratio",
    "directional_accuracy",
    "finite_values",
    "infer_periods_per_year",
    "information_ratio",
    "is_flat",
    "max_drawdown",
    "mean_tstat",
    "sharpe_ratio",
]

RELATIVE_DISPERSION_FLOOR = 1e-12
ABSOLUTE_DISPERSION_FLOOR = 1e-15

ArrayLike = pd.Series | np.ndarray | Sequence[float]


def finite_values(values: ArrayLike) -> np.ndarray:
    """The finite entries of ``values`` as a float array (NaN and +-inf dropped)."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def is_flat(std: float, mean: float) -> bool:
    """True when ``std`` is not finite or is float noise around ``mean``: ``std <= max(1e-12 |mean|, 1e-15)``."""
    floor = max(RELATIVE_DISPERSION_FLOOR * abs(mean), ABSOLUTE_DISPERSION_FLOOR)
    return not math.isfinite(std) or std <= floor


def annualise_ratio(per_period: float, periods_per_year: float) -> float:
    """A per-period ratio (Sharpe, information ratio) on a yearly scale: times ``sqrt(periods_per_year)``."""
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"annualise_ratio: periods_per_year={periods_per_year!r}; rule: finite and > 0")
    return per_period * math.sqrt(periods_per_year)


def sharpe_ratio(returns: ArrayLike, periods_per_year: float = 1.0) -> float:
    """Mean over sample standard deviation of the finite returns, times ``sqrt(periods_per_year)``.

    NaN below two finite returns or when the returns are flat (see the module docstring).
    """
    finite = finite_values(returns)
    if finite.size < 2:
        return math.nan
    mean = float(finite.mean())
    std = float(finite.std(ddof=1))
    if is_flat(std, mean):
        return math.nan
    return annualise_ratio(mean / std, periods_per_year)


def information_ratio(active_returns: ArrayLike, periods_per_year: float = 1.0) -> float:
    """The Sharpe ratio of active returns (strategy minus benchmark, per period); NaN when flat."""
    return sharpe_ratio(active_returns, periods_per_year)


def mean_tstat(values: ArrayLike) -> float:
    """``mean / (std / sqrt(n))`` of the finite values (periods independent); NaN for n < 2 or flat values."""
    finite = finite_values(values)
    if finite.size < 2:
        return math.nan
    mean = float(finite.mean())
    std = float(finite.std(ddof=1))
    return math.nan if is_flat(std, mean) else mean / (std / math.sqrt(finite.size))


def annual_return(returns: ArrayLike, periods_per_year: float) -> float:
    """Compound annual growth rate of the finite returns.

    -1 once the equity is wiped out (compounded growth <= 0); NaN below two periods or when the annualised
    growth overflows a float.
    """
    finite = finite_values(returns)
    if finite.size < 2:
        return math.nan
    growth = float(np.prod(1.0 + finite))
    if growth <= 0:
        return -1.0
    exponent = math.log(growth) * periods_per_year / finite.size
    return math.expm1(exponent) if exponent < 700 else math.nan


def max_drawdown(returns: ArrayLike) -> float:
    """Worst fall of the compounded equity curve from its running peak (the starting capital counts as a peak).

    In ``[-1, 0]``; NaN for an empty series.
    """
    finite = finite_values(returns)
    if finite.size == 0:
        return math.nan
    equity = np.concatenate([[1.0], np.cumprod(1.0 + finite)])
    peak = np.maximum.accumulate(equity)
    with np.errstate(invalid="ignore", divide="ignore"):
        drawdown = np.where(peak > 0, equity / peak - 1.0, -1.0)
    return float(max(drawdown.min(), -1.0))


def directional_accuracy(signal: ArrayLike, target: ArrayLike) -> float:
    """Share of rows where ``sign(signal) == sign(target)``; NaN when no row is usable.

    Rows with a zero or NaN signal or a NaN target are left out; a target of exactly zero is a miss.
    """
    s = np.asarray(signal, dtype=float).ravel()
    t = np.asarray(target, dtype=float).ravel()
    if s.shape != t.shape:
        raise ValueError(f"directional_accuracy: signal has {s.size} rows, target {t.size}; rule: the same length")
    usable = np.isfinite(s) & np.isfinite(t) & (s != 0)
    if not usable.any():
        return math.nan
    return float(np.mean(np.sign(s[usable]) == np.sign(t[usable])))


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
