"""Alpha158's window primitives, in two engines (see :mod:`alphaforge.features.alpha158`, which holds the formulas).

:class:`_Panel` sums windows ending at every bar of (rows, bars) panels, O(1) per bar and window (the batch
library); :class:`_Latest` sums each symbol's last :data:`HISTORY` bars only (the incremental engine). Both expose
the same methods (``valid``, ``current``, ``earlier``, ``prepare``, ``sums``, extremes, quantiles, ranks), so the
formulas are written once over either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter1d, minimum_filter1d

WINDOWS: tuple[int, ...] = (5, 10, 20, 30, 60)
#: Bars of a symbol's history the incremental engine keeps: the longest window of one-bar changes.
HISTORY: int = max(WINDOWS) + 1
#: Bars per block of the batch engine's cumulative sums (see :class:`_Panel`).
BLOCK: int = 64


@functools.lru_cache(maxsize=64)
def _window_weights(windows: tuple[int, ...], *, indexed: bool) -> np.ndarray:
    """(windows, HISTORY) weights of the bars back: 1 (or, ``indexed``, d - 1 - k) inside each window, else 0."""
    back = np.arange(HISTORY, dtype=np.float64)[None, :]
    lengths = np.asarray(windows, dtype=np.float64)[:, None]
    inside = back < lengths
    return np.where(inside, (lengths - 1.0 - back) if indexed else 1.0, 0.0)


@dataclass(frozen=True)
class _Series:
    """A series laid out for window sums: ``values`` relative to ``shift`` (NaN -> 0), ``missing`` where NaN."""

    values: np.ndarray
    shift: np.ndarray
    missing: np.ndarray


class _Panel:
    """Windows ending at every bar of (rows, bars) panels, in O(1) per bar and window.

    Sums come from cumulative sums over overlapping blocks: block ``k`` covers its own :data:`BLOCK` bars
    plus the :data:`HISTORY` bars before them, so every window ending in the block lies inside it and no
    cumulative sum runs over more than ``BLOCK + HISTORY`` values (no drift with the series' length). Values
    are summed relative to the block's first own bar (its anchor), so second moments of prices far from 0 do
    not cancel catastrophically. Extremes use running max/min filters on (rank, position) keys, quantiles
    sort each window, ranks count.
    """

    def __init__(self, close: np.ndarray) -> None:
        self.rows, self.n_bars = close.shape
        self.n_blocks = max(1, -(-self.n_bars // BLOCK))
        self.position = np.arange(self.n_bars)[None, :]
        # ext position of each block's own bars, for the index sums
        self._own = np.arange(HISTORY, HISTORY + BLOCK, dtype=np.float64)

    def _extend(self, x: np.ndarray) -> np.ndarray:
        """(rows, blocks, HISTORY + BLOCK) overlapping blocks of ``x`` (NaN before the first bar)."""
        padded = np.full((self.rows, HISTORY + self.n_blocks * BLOCK), np.nan)
        padded[:, HISTORY:HISTORY + self.n_bars] = x
        return sliding_window_view(padded, HISTORY + BLOCK, axis=1)[:, ::BLOCK]

    def _out(self, blocks: np.ndarray) -> np.ndarray:
        return blocks.reshape(self.rows, self.n_blocks * BLOCK)[:, : self.n_bars]

    def valid(self, span: int) -> np.ndarray:
        return self.position >= span - 1

    def current(self, x: np.ndarray) -> np.ndarray:
        return x

    def earlier(self, x: np.ndarray, bars: int) -> np.ndarray:
        out = np.full_like(x, np.nan)
        if bars < self.n_bars:
            out[:, bars:] = x[:, : self.n_bars - bars]
        return out

    def prepare(self, x: np.ndarray, *, shifted: bool) -> _Series:
        ext = self._extend(x)
        if shifted:  # the block's first known own bar (a series of changes is NaN on a symbol's first bar)
            own = ext[:, :, HISTORY:]
            first = np.argmax(~np.isnan(own), axis=-1)[:, :, None]
            shift = np.nan_to_num(np.take_along_axis(own, first, axis=-1)[:, :, 0])
        else:
            shift = np.zeros((self.rows, self.n_blocks))
        values = ext - shift[:, :, None]
        missing = np.isnan(values)
        values[missing] = 0.0
        return _Series(values, self._out(np.repeat(shift[:, :, None], BLOCK, axis=2)), missing)

    def sums(self, values: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        cumulative = np.zeros(values.shape[:-1] + (values.shape[-1] + 1,))
        np.cumsum(values, axis=-1, out=cumulative[..., 1:])
        end = cumulative[..., HISTORY + 1:]
        return {d: self._out(end - cumulative[..., HISTORY + 1 - d: HISTORY + 1 - d + BLOCK]) for d in windows}

    def index_sums(self, values: np.ndarray, windows: tuple[int, ...], plain: dict[int, np.ndarray]
                   ) -> dict[int, np.ndarray]:
        """Per window, the sum of (bars since the window's oldest bar) x value."""
        weighted = self.sums(values * np.arange(HISTORY + BLOCK, dtype=np.float64), windows)
        out = {}
        for d in windows:
            start = np.tile(self._own - (d - 1), self.n_blocks)[: self.n_bars]
            out[d] = weighted[d] - start * plain[d]
        return out

    def flat(self, x: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        changes = np.zeros(x.shape, dtype=np.int32)
        changes[:, 1:] = x[:, 1:] != x[:, :-1]
        counts = np.cumsum(changes, axis=1, dtype=np.int32)
        out = {}
        for d in windows:
            same = np.zeros(x.shape, dtype=bool)
            if d == 1:
                same[:] = True
            elif d <= self.n_bars:
                same[:, d - 1:] = counts[:, d - 1:] == counts[:, : self.n_bars - d + 1]
            out[d] = same
        return out

    def extremes(self, x: np.ndarray, windows: tuple[int, ...], *, highest: bool
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per window, the max (or min) and the position of its first occurrence counted from the oldest bar."""
        order = np.argsort(x, axis=1, kind="stable")
        ordered = np.take_along_axis(x, order, axis=1)
        dense = np.zeros(x.shape, dtype=np.int64)
        dense[:, 1:] = np.cumsum(ordered[:, 1:] != ordered[:, :-1], axis=1)
        ranks = np.empty_like(dense)
        np.put_along_axis(ranks, order, dense, axis=1)
        bits = max(1, self.n_bars.bit_length())
        mask = (1 << bits) - 1
        out = {}
        for d in windows:
            if highest:  # larger value first, then the earlier bar
                keys = (ranks << bits) | (mask - self.position)
                best = maximum_filter1d(keys, d, axis=1, origin=(d - 1) // 2, mode="nearest")
                where = mask - (best & mask)
            else:
                keys = (ranks << bits) | self.position
                best = minimum_filter1d(keys, d, axis=1, origin=(d - 1) // 2, mode="nearest")
                where = best & mask
            value = np.take_along_axis(x, np.minimum(where, self.n_bars - 1), axis=1)
            out[d] = (value, (where - (self.position - (d - 1))).astype(np.float64))
        return out

    def sorted_windows(self, x: np.ndarray, d: int) -> np.ndarray:
        """(rows, bars, d) each bar's last ``d`` values sorted (garbage where the window is not full)."""
        out = np.full((self.rows, self.n_bars, d), np.nan)
        if d <= self.n_bars:
            out[:, d - 1:] = sliding_window_view(x, d, axis=1)
            out.sort(axis=-1)
        return out

    def rank_counts(self, x: np.ndarray, windows: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for d in windows:
            less = np.zeros(x.shape, dtype=np.int64)
            equal = np.zeros(x.shape, dtype=np.int64)
            if d <= self.n_bars:
                window, now = sliding_window_view(x, d, axis=1), x[:, d - 1:, None]
                less[:, d - 1:] = (window < now).sum(axis=-1)
                equal[:, d - 1:] = (window == now).sum(axis=-1)
            out[d] = (less, equal)
        return out


class _Latest:
    """Windows ending at the last bar of (rows, :data:`HISTORY`) ring buffers (the incremental engine).

    Every window is a prefix of the history read backwards (row ``k`` of a (bars back, symbols) array is ``k``
    bars back), so one cumulative sum (or running max) down it gives every window length at once, each step
    one vector operation across the symbols; values are taken relative to the current bar, the closest level.
    """

    def __init__(self, close: np.ndarray) -> None:
        self.rows = close.shape[0]
        self._backwards: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        gaps = np.isnan(self.backwards(close))
        self._known = np.where(gaps.any(axis=0), gaps.argmax(axis=0), HISTORY)  # bars before the first gap

    def backwards(self, x: np.ndarray) -> np.ndarray:
        """(bars back, rows) copy of ``x`` (cached per array: the formulas read the close many times). The cache
        keeps ``x`` itself, so a temporary cannot die and hand its id to another array."""
        cached = self._backwards.get(id(x))
        if cached is None or cached[0] is not x:
            cached = (x, np.ascontiguousarray(x.T[::-1]))
            self._backwards[id(x)] = cached
        return cached[1]

    def valid(self, span: int) -> np.ndarray:
        return self._known >= span

    def current(self, x: np.ndarray) -> np.ndarray:
        return x[:, -1]

    def earlier(self, x: np.ndarray, bars: int) -> np.ndarray:
        return x[:, -1 - bars]

    def prepare(self, x: np.ndarray, *, shifted: bool) -> _Series:
        backwards = self.backwards(x)
        shift = np.nan_to_num(backwards[0]) if shifted else np.zeros(self.rows)
        values = backwards - shift
        missing = np.isnan(values)
        values[missing] = 0.0
        return _Series(values, shift, missing)

    @staticmethod
    def _apply(weights: np.ndarray, values: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        longest = max(windows)
        totals = weights[:, :longest] @ values[:longest].astype(np.float64, copy=False)
        return {d: totals[i] for i, d in enumerate(windows)}

    def sums(self, values: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        """Per window, the sum of its values: one small matrix product for every window length."""
        return self._apply(_window_weights(windows, indexed=False), values, windows)

    def index_sums(self, values: np.ndarray, windows: tuple[int, ...], plain: dict[int, np.ndarray]
                   ) -> dict[int, np.ndarray]:
        """Per window, sum of (bars since its oldest bar) x value: bar k back sits at d - 1 - k."""
        return self._apply(_window_weights(windows, indexed=True), values, windows)

    def flat(self, x: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        backwards = self.backwards(x)
        differ = self.sums(backwards[: max(windows)] != backwards[0], windows)
        return {d: differ[d] == 0 for d in windows}

    def extremes(self, x: np.ndarray, windows: tuple[int, ...], *, highest: bool
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        backwards = self.backwards(x)
        reduce = np.max if highest else np.min
        out = {}
        extreme, covered = None, 0
        for d in windows:  # the extreme of a longer window: the shorter one's and that of the bars it adds
            more = reduce(backwards[covered:d], axis=0)
            extreme = more if extreme is None else (np.maximum if highest else np.minimum)(extreme, more)
            covered = d
            # the furthest-back bar holding it = its first occurrence counted from the window's oldest bar
            furthest = (d - 1) - np.argmax(backwards[d - 1::-1] == extreme, axis=0)
            out[d] = (extreme, ((d - 1) - furthest).astype(np.float64))
        return out

    def sorted_windows(self, x: np.ndarray, d: int) -> np.ndarray:
        return np.sort(x[:, -d:], axis=1)

    def rank_counts(self, x: np.ndarray, windows: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if not windows:
            return {}
        backwards = self.backwards(x)[: max(windows)]
        now = backwards[0]
        less, equal = self.sums(backwards < now, windows), self.sums(backwards == now, windows)
        return {d: (less[d], equal[d]) for d in windows}
