"""The market's own calendar: each bar's gap from the symbol's previous bar, suspensions and closures split a symbol
into segments, and the series key.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaforge.validate.params import ValidationParams


def calendar_gaps(bars: pd.DataFrame, params: ValidationParams) -> pd.DataFrame:
    """Each bar's gap from the symbol's previous bar, measured on the market's own calendar.

    The calendar is the panel's sessions: the sorted timestamps at which any symbol has a bar. So a day on
    which the whole panel is closed (a holiday, a weekend, a night between intraday sessions) is not in it
    and is no gap; a 24/7 market simply has every hour in it. A symbol's step is the number of sessions it
    advances between two of its bars; divided by the symbol's usual step (the median: 1 for a symbol that
    trades every session, 5 for weekly bars in a daily panel) it is counted in the symbol's own bars, and
    ``gap_bars = step / usual - 1`` is how many of its own bars it missed (0 for a regular bar).

    ``crosses_closure`` is True when the panel had no bar at all for longer than ``max_closure`` between
    the two bars (a market shut for months, or a one-symbol file with a hole: nothing else trades then).

    Rows keep their order (per-symbol rules follow the input row order); a row with a missing key, and each
    symbol's first row, have NaN ``gap_bars`` and False ``crosses_closure``.
    """
    valid = bars["timestamp"].notna() & bars["symbol"].notna()
    stamps = bars["timestamp"][valid]
    sessions = np.unique(stamps.to_numpy(dtype="datetime64[ns]")) if valid.any() else np.array([], "datetime64[ns]")
    position = pd.Series(np.nan, index=bars.index)
    position[valid] = np.searchsorted(sessions, stamps.to_numpy(dtype="datetime64[ns]"))
    session_gap = np.diff(sessions).astype("timedelta64[ns]").astype(np.int64) / 86_400e9 if len(sessions) else []
    closures = np.concatenate(([0], np.cumsum(np.asarray(session_gap) > params.max_closure_days)))
    symbols = bars["symbol"].where(valid)
    previous = position.groupby(symbols, sort=False).shift()
    step = position - previous
    usual = step.where(step > 0).groupby(symbols, sort=False).transform("median").fillna(1.0).clip(lower=1.0)
    gap_bars = step / usual - 1.0
    crossed = pd.Series(False, index=bars.index)
    both = previous.notna() & position.notna() & (step > 0)
    if both.any():
        now, before = position[both].astype(np.int64).to_numpy(), previous[both].astype(np.int64).to_numpy()
        crossed[both] = closures[now] > closures[before]
    return pd.DataFrame({"gap_bars": gap_bars.where(valid), "crosses_closure": crossed}, index=bars.index)


def assign_segments(bars: pd.DataFrame, params: ValidationParams) -> pd.Series:
    """Per row, the 0-based number of the symbol's uninterrupted series it belongs to.

    A new segment starts after a suspension (more than ``max_gap_bars`` of the symbol's own bars missed on
    the panel's calendar) or a market closure longer than ``max_closure``: features restart there, labels
    and positions are never carried across. ``bars`` must have passed validation (keys present, sorted).
    """
    gaps = calendar_gaps(bars, params)
    breaks = (gaps["gap_bars"] > params.max_gap_bars) | gaps["crosses_closure"]
    return breaks.astype(np.int64).groupby(bars["symbol"], sort=False).cumsum().rename("segment")


SERIES_SEPARATOR = "\x1f"  # sorts before every printable character, so "MSFT", "MSFT\x1f1" keep the symbol order


def as_series(bars: pd.DataFrame) -> pd.DataFrame:
    """``bars`` with each later segment of a split symbol as its own series: ``symbol`` becomes ``MSFT\x1f1``
    (``MSFT\x1f01`` .. ``MSFT\x1f12`` when some symbol has ten segments or more).

    Per-symbol computations (indicators, labels, returns) run on this view so that nothing reaches across a
    suspension; put the real ``symbol`` back afterwards. Bars without a ``segment`` column come back as they are.
    """
    if "segment" not in bars.columns or not (bars["segment"] > 0).any():
        return bars
    later = bars["segment"] > 0
    # zero-padded to one width, so that a symbol's series keep their order as text ("X\x1f09" < "X\x1f10")
    number = bars["segment"].astype(str).str.zfill(len(str(int(bars["segment"].max()))))
    symbol = bars["symbol"].astype(object).where(~later, bars["symbol"].astype(str) + SERIES_SEPARATOR + number)
    return bars.assign(symbol=symbol)
