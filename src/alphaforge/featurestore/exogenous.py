"""Exogenous market-wide series as an optional feature group (``features.exogenous.enabled``, off by default).

The series ship with the ``arch`` package (nothing is downloaded): the S&P 500 (daily closes,
1999-2018), the VIX (daily, 2014-2019), WTI crude (daily, 1986-2019) and Moody's AAA/BAA corporate
yields (monthly, 1919-2018). Every bar of every symbol gets, for each chosen series, the latest
value that was *available* at the bar's timestamp (an as-of join, never ahead of the bar):

* a daily observation dated D is available at D 00:00 UTC plus ``daily_delay_hours`` (0 by default:
  the same convention as the bars, whose daily bar stamped D carries D's close; set 24 for intraday
  bars, so that D's close is used only from D + 1);
* a monthly average dated month M is available at the first instant of month M + 1.

A value older than ``max_staleness_days`` at the bar (the series ended, or has a gap) gives NaN,
not a stale number. Batch and incremental paths call the same :meth:`ExogenousTable.asof`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

_NANOS_PER_HOUR = 3_600_000_000_000
_NANOS_PER_DAY = 24 * _NANOS_PER_HOUR


def _sp500() -> tuple[pd.Series, str]:
    from arch.data import sp500

    close = sp500.load()["Adj Close"].dropna()
    return np.log(close).diff().dropna(), "daily"


def _vix() -> tuple[pd.Series, str]:
    from arch.data import vix

    return vix.load()["vix"].dropna(), "daily"


def _wti() -> tuple[pd.Series, str]:
    from arch.data import wti

    price = pd.to_numeric(wti.load()["DCOILWTICO"], errors="coerce")
    price = price[price > 0]
    return np.log(price).diff().dropna(), "daily"


def _credit_spread() -> tuple[pd.Series, str]:
    from arch.data import default

    yields = default.load()
    return (yields["BAA"] - yields["AAA"]).dropna(), "monthly"


#: name -> (description, loader giving the series and its frequency)
SERIES: dict[str, tuple[str, Callable[[], tuple[pd.Series, str]]]] = {
    "sp500_log_return": ("S&P 500 one-day log return of the adjusted close (arch.data.sp500)", _sp500),
    "vix": ("CBOE VIX level (arch.data.vix)", _vix),
    "wti_log_return": ("WTI crude one-day log return (arch.data.wti)", _wti),
    "credit_spread": ("Moody's BAA minus AAA corporate yield, monthly average, percentage points "
                      "(arch.data.default), known from the next month", _credit_spread),
}


class ExogenousParams(BaseModel):
    """Which market-wide series join every bar, and when an observation counts as known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    series: tuple[str, ...] = tuple(SERIES)
    daily_delay_hours: float = Field(0.0, ge=0.0)
    max_staleness_days: float = Field(10.0, gt=0.0, description="daily series; monthly ones get 31 more days")

    @field_validator("series")
    @classmethod
    def _known(cls, series: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in series if s not in SERIES]
        if unknown or len(set(series)) != len(series):
            raise ValueError(f"features.exogenous.series: {list(series)} must be distinct names from {list(SERIES)}")
        return series

    def feature_names(self) -> list[str]:
        return [f"exo_{name}" for name in self.series] if self.enabled else []


@dataclass(frozen=True)
class ExogenousTable:
    """Each series as (available-from timestamp in UTC ns, value), sorted by time."""

    names: list[str]
    available_ns: list[np.ndarray]
    values: list[np.ndarray]
    staleness_ns: list[int]

    def asof(self, timestamps_ns: np.ndarray) -> np.ndarray:
        """(len(timestamps), len(names)): the latest value available at each timestamp (NaN if none or too old)."""
        timestamps_ns = np.asarray(timestamps_ns, dtype=np.int64)
        out = np.full((len(timestamps_ns), len(self.names)), np.nan)
        for j, (available, values, staleness) in enumerate(
            zip(self.available_ns, self.values, self.staleness_ns, strict=True)
        ):
            if not len(available):
                continue
            position = np.searchsorted(available, timestamps_ns, side="right") - 1
            known = position >= 0
            position = np.maximum(position, 0)
            fresh = known & (timestamps_ns - available[position] <= staleness)
            out[fresh, j] = values[position[fresh]]
        return out

    def truncated(self, until_ns: int) -> ExogenousTable:
        """Only the observations available at ``until_ns`` (what a process at that time could have seen)."""
        keep = [np.searchsorted(a, until_ns, side="right") for a in self.available_ns]
        return ExogenousTable(self.names, [a[:k] for a, k in zip(self.available_ns, keep, strict=True)],
                              [v[:k] for v, k in zip(self.values, keep, strict=True)], self.staleness_ns)


@functools.lru_cache(maxsize=8)
def load_exogenous(params: ExogenousParams) -> ExogenousTable:
    """The chosen series from ``arch.data``, with their availability times (read once per process)."""
    available, values, staleness = [], [], []
    for name in params.series:
        series, frequency = SERIES[name][1]()
        index = pd.DatetimeIndex(series.index)
        index = index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index
        if frequency == "monthly":
            index = index.to_period("M").to_timestamp(how="start") + pd.offsets.MonthBegin(1)
            stale = params.max_staleness_days + 31
        else:
            index = index + pd.Timedelta(hours=params.daily_delay_hours)
            stale = params.max_staleness_days
        order = np.argsort(index.as_unit("ns").asi8, kind="stable")
        available.append(index.as_unit("ns").asi8[order])
        values.append(series.to_numpy(dtype=np.float64)[order])
        staleness.append(int(stale * _NANOS_PER_DAY))
    return ExogenousTable([f"exo_{n}" for n in params.series], available, values, staleness)
