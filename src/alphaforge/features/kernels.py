"""Input checks, the symbols x bars panel layout and the rolling-window primitives of the basic feature set.

Part of :mod:`alphaforge.features` (whose docstring explains the layout and the precision of the rolling sums);
every name here is re-exported there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from alphaforge.schema import DataError

# Panel cells (symbols x bars) computed at once; bounds memory, not results.
_PANEL_CELL_BUDGET: int = 1 << 17
# Rolling sums restart every _MIN_BLOCK bars (or the largest window, if longer).
_MIN_BLOCK: int = 128
_NANOS_PER_DAY: int = 86_400_000_000_000


# --------------------------------------------------------------------------------------------
# Input checks and the symbols x bars layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Groups:
    """Where each symbol's contiguous run of rows starts, and how long it is."""

    starts: np.ndarray
    lengths: np.ndarray
    timestamps_ns: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.lengths.sum())


def _timestamps_ns(bars: pd.DataFrame, caller: str) -> np.ndarray:
    column = bars["timestamp"]
    if not pd.api.types.is_datetime64_any_dtype(column.dtype):
        raise DataError(f"{caller}: column 'timestamp' must be datetime64 (UTC), got dtype {column.dtype}")
    index = pd.DatetimeIndex(column)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        row = int(np.flatnonzero(index.isna())[0])
        raise DataError(f"{caller}: column 'timestamp', row {row}: missing timestamp")
    return index.as_unit("ns").asi8


def _check_bars(bars: pd.DataFrame, caller: str, *, close_only: bool = False) -> _Groups:
    """Verify the schema promises the features rely on; raise :class:`DataError` naming row and rule."""
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"{caller}: the bars lack required column(s) {missing}")
    if len(bars) == 0:
        raise DataError(f"{caller}: the bars have no rows")
    timestamps = _timestamps_ns(bars, caller)
    symbol = bars["symbol"]
    # extension dtypes (string, categorical) may hold pd.NA, which does not compare; None does
    symbol_values = symbol.to_numpy() if symbol.dtype == object else symbol.to_numpy(dtype=object, na_value=None)
    same_symbol = np.asarray(symbol_values[1:] == symbol_values[:-1], dtype=bool)
    starts = np.concatenate(([0], np.flatnonzero(~same_symbol) + 1)).astype(np.int64)
    run_names = symbol_values[starts]
    missing_name = np.flatnonzero(pd.isna(run_names))
    if missing_name.size:
        raise DataError(f"{caller}: column 'symbol', row {int(starts[missing_name[0]])}: missing symbol")
    # Sorted by symbol <=> the names of the runs of equal symbols strictly increase (a symbol
    # that comes back later, or out of order, breaks that).
    try:
        out_of_order = np.flatnonzero(~np.asarray(run_names[1:] > run_names[:-1], dtype=bool))
    except TypeError as err:
        raise DataError(f"{caller}: column 'symbol' mixes types that cannot be ordered: {err}") from err
    order_hint = "sort with bars.sort_values(['symbol', 'timestamp'], kind='stable')"
    if out_of_order.size:
        row = int(starts[out_of_order[0] + 1])
        raise DataError(
            f"{caller}: rule sorted_by_symbol_then_time: row {row} (symbol {symbol_values[row]!r}) comes after "
            f"symbol {symbol_values[row - 1]!r}; {order_hint}"
        )
    not_forward = np.flatnonzero(same_symbol & (timestamps[1:] <= timestamps[:-1]))
    if not_forward.size:
        row = int(not_forward[0]) + 1
        rule = "duplicate timestamp" if timestamps[row] == timestamps[row - 1] else "time goes backwards"
        raise DataError(
            f"{caller}: rule sorted_by_symbol_then_time: row {row} (symbol {symbol_values[row]!r}, timestamp "
            f"{pd.Timestamp(timestamps[row], tz='UTC')}) is not after row {row - 1} ({rule}); {order_hint}"
        )
    _check_numeric(bars, "close", caller, positive=True, allow_nan=False)
    for column in () if close_only else ("high", "low"):
        if column in bars.columns:
            _check_numeric(bars, column, caller, positive=True, allow_nan=False)
    if "volume" in bars.columns and not close_only:
        _check_numeric(bars, "volume", caller, positive=False, allow_nan=False)
    for column in () if close_only else ("bid", "ask", "bid_size", "ask_size"):
        if column in bars.columns:
            _check_numeric(bars, column, caller, positive=False, allow_nan=True)
    lengths = np.diff(np.concatenate((starts, [len(bars)])))
    return _Groups(starts=starts, lengths=lengths, timestamps_ns=timestamps)


def _check_numeric(bars: pd.DataFrame, column: str, caller: str, *, positive: bool, allow_nan: bool) -> None:
    try:
        values = bars[column].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise DataError(f"{caller}: column {column!r} is not numeric (dtype {bars[column].dtype}): {err}") from err
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if positive:
        bad |= values <= 0
    elif not allow_nan:
        bad |= values < 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if positive:
            rule = "must be finite and > 0"
        else:
            rule = "must not be infinite" if allow_nan else "must be finite and >= 0"
        raise DataError(f"{caller}: column {column!r}, row {row}: value {values[row]!r} {rule}")


@dataclass(frozen=True)
class _Chunk:
    """A run of consecutive symbols laid out as a (symbols, bars) panel.

    The panel is NaN past each symbol's last bar, and its width is padded to a whole
    number of ``block`` bars (see :class:`_Rolling`).
    """

    row_lo: int
    row_hi: int
    lengths: np.ndarray
    width: int

    @property
    def longest(self) -> int:
        return int(self.lengths.max())

    @property
    def rectangular(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())

    def panel(self, values: np.ndarray) -> np.ndarray:
        """The chunk's rows of a long column as a panel."""
        part = values[self.row_lo : self.row_hi]
        out = np.empty((len(self.lengths), self.width))
        if self.rectangular:
            out[:, : self.longest] = part.reshape(len(self.lengths), self.longest)
            out[:, self.longest :] = np.nan
        else:
            out.fill(np.nan)
            out[self._inside()] = part
        return out

    def write(self, destination: np.ndarray, panel: np.ndarray) -> None:
        """Copy a panel back into the chunk's rows of a long column (``destination`` is the whole column)."""
        rows = destination[self.row_lo : self.row_hi]
        if self.rectangular:
            rows.reshape(len(self.lengths), self.longest)[...] = panel[:, : self.longest]
        else:
            rows[...] = panel[self._inside()]

    def _inside(self) -> np.ndarray:
        return np.arange(self.width)[None, :] < self.lengths[:, None]


def _chunks(groups: _Groups, block: int, budget: int = _PANEL_CELL_BUDGET) -> Iterator[_Chunk]:
    """Consecutive symbols, grouped so that each panel stays within the cell budget.

    The loop only partitions the symbols (cheap integer bookkeeping); all arithmetic
    happens on whole panels. Small panels also stay in the CPU cache.
    """
    padded = (-(-groups.lengths // block) * block).tolist()
    first = 0
    widest = 0
    for index, width in enumerate(padded):
        widest_with = max(widest, width)
        if index > first and widest_with * (index - first + 1) > budget:
            yield _make_chunk(groups, first, index, widest)
            first, widest_with = index, width
        widest = widest_with
    yield _make_chunk(groups, first, len(padded), widest)


def _make_chunk(groups: _Groups, first: int, stop: int, width: int) -> _Chunk:
    row_lo = int(groups.starts[first])
    lengths = groups.lengths[first:stop]
    return _Chunk(row_lo=row_lo, row_hi=row_lo + int(lengths.sum()), lengths=lengths, width=width)


def _block_size(*windows: int) -> int:
    """Bars per block of :class:`_Rolling`: at least every window, so a window spans at most two blocks."""
    return max(_MIN_BLOCK, *windows)


# --------------------------------------------------------------------------------------------
# Panel primitives (time runs along axis 1; each row is one symbol)
# --------------------------------------------------------------------------------------------


def _lag(x: np.ndarray, lag: int) -> np.ndarray:
    """``x`` shifted ``lag`` bars later within each row (NaN where there is no earlier bar)."""
    out = np.empty_like(x)
    out[:, :lag] = np.nan
    if lag < x.shape[1]:
        out[:, lag:] = x[:, : x.shape[1] - lag]
    return out


def _lead(x: np.ndarray, lead: int) -> np.ndarray:
    """``x`` shifted ``lead`` bars earlier within each row (NaN where there is no later bar)."""
    out = np.empty_like(x)
    out[:, max(x.shape[1] - lead, 0) :] = np.nan
    if lead < x.shape[1]:
        out[:, : x.shape[1] - lead] = x[:, lead:]
    return out


def _mask_before(x: np.ndarray, first_valid: int) -> np.ndarray:
    """Set the first ``first_valid`` bars of every row to NaN (window not yet full), in place."""
    x[:, : max(first_valid, 0)] = np.nan
    return x


class _Rolling:
    """Precise O(n) rolling sums of one panel series, for any window up to the block size.

    The time axis is cut into blocks of ``block`` bars (the panel width is a multiple of
    it). Within a block the values are taken relative to the block's first value (its
    anchor) and summed cumulatively, restarting at each block: no sum runs over more than
    one block (no rounding drift with the series' length), and the values summed are
    deviations from a nearby level, so ``sum(d**2) - sum(d)**2 / w`` does not cancel
    catastrophically when the level is far from 0 (prices). A window that straddles two
    blocks adds the tail of the previous block, re-expressed around the current anchor
    (exact algebra). Every row only ever uses its own past, bar by bar.
    The first ``first_valid`` bars of ``x`` may be NaN (e.g. returns); windows that reach
    them are NaN. ``anchored=False`` sums the values themselves (for non-negative series
    such as volume, where an all-zero window must sum to exactly 0).
    """

    def __init__(
        self, x: np.ndarray, block: int, *, first_valid: int = 0, second_moment: bool = False, anchored: bool = True
    ) -> None:
        self.n_symbols, self.width = x.shape
        if self.width % block:
            raise ValueError(f"_Rolling: panel width {self.width} is not a multiple of the block {block}")
        self.block = block
        self.first_valid = first_valid
        self._source = x
        if 0 < first_valid < self.width:
            x = x.copy()
            x[:, :first_valid] = x[:, first_valid : first_valid + 1]
        blocks = x.reshape(self.n_symbols, self.width // block, block)
        self.anchor = blocks[:, :, :1].copy() if anchored else np.zeros((self.n_symbols, self.width // block, 1))
        deviations = blocks - self.anchor
        self.sum1 = np.cumsum(deviations, axis=2)
        self.sum2: np.ndarray | None = None
        if second_moment:
            np.square(deviations, out=deviations)
            self.sum2 = np.cumsum(deviations, axis=2)
        self._change_counts: np.ndarray | None = None

    def _window_sums(self, window: int, cumulative: np.ndarray, *, squares: bool) -> np.ndarray:
        """Sum over the last ``window`` bars of the block-relative values (``squares``: of their squares)."""
        if window > self.block:
            raise ValueError(f"_Rolling: window {window} is longer than the block {self.block}")
        block = self.block
        out = np.empty_like(cumulative)
        np.subtract(cumulative[:, :, window:], cumulative[:, :, :-window], out=out[:, :, window:])
        out[:, :, window - 1] = cumulative[:, :, window - 1]
        if window > 1:
            straddle = window - 1  # bars 0..window-2 of a block reach back into the previous block
            tail = cumulative[:, :-1, block - 1 : block] - cumulative[:, :-1, block - window : block - 1]
            shift = self.anchor[:, :-1] - self.anchor[:, 1:]  # previous anchor minus current anchor
            count = np.arange(straddle, 0, -1, dtype=np.float64)  # bars taken from the previous block
            if squares:
                tail_sum = self.sum1[:, :-1, block - 1 : block] - self.sum1[:, :-1, block - window : block - 1]
                tail += 2.0 * shift * tail_sum + count * np.square(shift)
            else:
                tail += count * shift
            np.add(cumulative[:, 1:, :straddle], tail, out=out[:, 1:, :straddle])
            out[:, 0, :straddle] = np.nan
        return out

    def _as_panel(self, values: np.ndarray, window: int) -> np.ndarray:
        return _mask_before(values.reshape(self.n_symbols, self.width), self.first_valid + window - 1)

    def mean(self, window: int) -> np.ndarray:
        """Rolling mean over ``window`` bars (NaN until the window is full)."""
        sums = self._window_sums(window, self.sum1, squares=False)
        sums /= window
        sums += self.anchor
        return self._as_panel(sums, window)

    def std(self, window: int, ddof: int) -> np.ndarray:
        """Rolling standard deviation (``ddof`` 0 or 1), exactly 0 on a window of equal values."""
        if self.sum2 is None:
            raise RuntimeError("_Rolling.std needs second_moment=True")
        if window - ddof <= 0:
            return np.full((self.n_symbols, self.width), np.nan)
        squared_sum = np.square(self._window_sums(window, self.sum1, squares=False))
        squared_sum /= window
        variance = self._window_sums(window, self.sum2, squares=True)
        variance -= squared_sum
        np.maximum(variance, 0.0, out=variance)
        variance /= window - ddof
        std = self._as_panel(np.sqrt(variance, out=variance), window)
        std[self.is_constant(window)] = 0.0
        return std

    def is_constant(self, window: int) -> np.ndarray:
        """Whether the last ``window`` values are all equal (exact comparison, not a tolerance)."""
        if self._change_counts is None:
            changes = np.zeros(self._source.shape, dtype=bool)
            np.not_equal(self._source[:, 1:], self._source[:, :-1], out=changes[:, 1:])
            self._change_counts = np.cumsum(changes, axis=1, dtype=np.int32)
        counts = self._change_counts
        pairs = window - 1  # a window of `window` bars holds window-1 consecutive pairs
        constant = np.zeros(counts.shape, dtype=bool)
        if pairs == 0:
            constant[:] = True
        elif pairs < counts.shape[1]:
            np.equal(counts[:, pairs:], counts[:, :-pairs], out=constant[:, pairs:])
        constant[:, : self.first_valid + window - 1] = False
        return constant


def _short_mean(x: np.ndarray, window: int, block: int, *, first_valid: int = 0) -> np.ndarray:
    """Rolling mean; a plain sum of lagged copies for short windows (cheaper than cumulative sums)."""
    if window > 8:
        return _Rolling(x, block, first_valid=first_valid).mean(window)
    total = x.copy()
    for lag in range(1, window):
        total += _lag(x, lag)
    total /= window
    return _mask_before(total, first_valid + window - 1)


def _exponential_average(first: np.ndarray, rest: np.ndarray, alpha: float) -> np.ndarray:
    """``y[0] = first``, ``y[i] = (1 - alpha) * y[i-1] + alpha * rest[i-1]`` along each row (an IIR filter)."""
    out = np.empty((first.shape[0], rest.shape[1] + 1))
    out[:, 0] = first
    if rest.shape[1]:
        zi = ((1.0 - alpha) * first)[:, None]
        out[:, 1:], _ = lfilter([alpha], [1.0, alpha - 1.0], rest, axis=1, zi=zi)
    return out


def _ema(x: np.ndarray, span: int, start: int = 0) -> np.ndarray:
    """pandas ``ewm(span=span, adjust=False, min_periods=span)`` of a row series whose values begin at ``start``."""
    out = np.full_like(x, np.nan)
    if start < x.shape[1]:
        out[:, start:] = _exponential_average(x[:, start], x[:, start + 1 :], 2.0 / (span + 1.0))
    return _mask_before(out, start + span - 1)


def _wilder(x: np.ndarray, window: int) -> np.ndarray:
    """Wilder's smoothing of a series that starts at bar 1: mean of bars 1..n at bar n, then alpha = 1/n."""
    out = np.full_like(x, np.nan)
    if window < x.shape[1]:
        seed = x[:, 1 : window + 1].mean(axis=1)
        out[:, window:] = _exponential_average(seed, x[:, window + 1 :], 1.0 / window)
    return out


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray, where_zero: float) -> np.ndarray:
    """numerator / denominator, with ``where_zero`` where the denominator is 0 (never inf from a 0/0 or x/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(numerator, denominator)
    out[denominator == 0] = where_zero
    return out


def _with_keys(bars: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the bars' timestamp and symbol columns in front (same dtypes as in ``bars``)."""
    symbol = bars["symbol"]
    frame.insert(0, "symbol", symbol.to_numpy() if symbol.dtype == object else symbol.array)
    frame.insert(0, "timestamp", bars["timestamp"].array)
    return frame
