"""Per-timestamp cross-sectional work: ``features.processing`` (cs_rank, cs_zscore), percentile ranks among
the symbols of a timestamp, and the (timestamps, slots) grid they run on.

Part of :mod:`alphaforge.features`; every name here is re-exported there. The fitted kind (robust_zscore)
travels with the model: :mod:`alphaforge.models.normalise`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alphaforge.features.kernels import _PANEL_CELL_BUDGET

if TYPE_CHECKING:
    from alphaforge.features.kernels import _Groups


def processed_columns(names: list[str]) -> list[str]:
    """The columns ``features.processing`` transforms: the per-symbol features (not calendar, exogenous,
    regime or already cross-sectional ``*_cs_rank`` columns, which are the same for every symbol or ranks)."""
    market_wide = {"day_of_week", "month", "hour"}
    return [n for n in names if n not in market_wide and not n.startswith(("exo_", "regime_prob_"))
            and not n.endswith("_cs_rank")]


def process_rows(block: np.ndarray, method: str) -> np.ndarray:
    """``features.processing`` of each row of ``block`` (one feature at one timestamp across its symbols; NaN
    cells are absent or unknown values), NaN filled with 0 afterwards. Shared by the batch and incremental engines."""
    missing = np.isnan(block)
    if method == "cs_rank":
        out = (_pct_rank_rows(block) - 0.5) * 3.46
    elif method == "cs_zscore":
        count = (~missing).sum(axis=1, keepdims=True).astype(np.float64)
        known = np.where(missing, 0.0, block)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = known.sum(axis=1, keepdims=True) / count
            deviations = np.where(missing, 0.0, block - mean)
            std = np.sqrt((deviations * deviations).sum(axis=1, keepdims=True) / (count - 1.0))
            out = (block - mean) / std
        out[np.broadcast_to((std == 0) | ~np.isfinite(std), out.shape)] = np.nan
    else:
        raise ValueError(f"features.processing: unknown method {method!r}; choose none, cs_rank or cs_zscore")
    out[np.isnan(out)] = 0.0
    return out


@dataclass(frozen=True)
class _TimestampGrid:
    """Rows grouped by timestamp: each row's timestamp number and its cell in a (timestamps, slots) grid."""

    uniques_ns: np.ndarray
    codes: np.ndarray
    cells: np.ndarray
    width: int

    @classmethod
    def build(cls, groups: _Groups) -> _TimestampGrid:
        """A symbol has at most one row per timestamp, so its number is a free slot; when most
        timestamps lack most symbols, slots are packed instead (rank within the timestamp)."""
        codes, uniques = pd.factorize(groups.timestamps_ns)
        n_symbols, n_rows = len(groups.starts), len(codes)
        if len(uniques) * n_symbols <= 2 * n_rows + 4096:
            slots = np.repeat(np.arange(n_symbols, dtype=np.int64), groups.lengths)
            width = n_symbols
        else:
            order = np.argsort(codes, kind="stable")
            counts = np.bincount(codes, minlength=len(uniques))
            starts = np.cumsum(counts) - counts
            slots = np.empty(n_rows, dtype=np.int64)
            slots[order] = np.arange(n_rows) - starts[codes[order]]
            width = int(counts.max())
        cells = codes.astype(np.int64) * width + slots
        return cls(uniques_ns=np.asarray(uniques), codes=codes, cells=cells, width=width)


def _cross_sectional_pct_rank(values: np.ndarray, timestamps: _TimestampGrid) -> np.ndarray:
    """pandas ``groupby(timestamp).rank(pct=True)``: average rank of ties / number of non-NaN values.

    The rows are laid out as a (timestamps, slots) grid and ranked a block of timestamps at
    a time (small blocks stay in the CPU cache); each timestamp only ever sees its own rows.
    """
    return _cross_sectional_apply(values, timestamps, _pct_rank_rows)


def _cross_sectional_apply(values: np.ndarray, timestamps: _TimestampGrid,
                           transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform`` (rows of a (timestamps, slots) grid -> same shape) applied per timestamp to a long column."""
    n_times, width, cells = len(timestamps.uniques_ns), timestamps.width, timestamps.cells
    grid = np.full(n_times * width, np.nan)
    grid[cells] = values
    grid = grid.reshape(n_times, width)
    rows_per_block = max(1, _PANEL_CELL_BUDGET // width)
    for start in range(0, n_times, rows_per_block):
        block = grid[start : start + rows_per_block]
        block[...] = transform(block)
    return grid.reshape(-1)[cells]


def _pct_rank_rows(grid: np.ndarray) -> np.ndarray:
    """Percentile rank of each value within its row (NaN stays NaN; ties get their average rank).

    Sorting plain integer keys is several times faster than ``argsort``: each value becomes
    an order-preserving integer whose low bits are replaced by its column. Rows where two
    keys collide after dropping those bits (exact ties, or values a few ulps apart that
    might come out of order) are ranked again exactly, with ``argsort``; in the other rows
    the sorted position is the rank.
    """
    n_rows, width = grid.shape
    missing = np.isnan(grid)
    count = (width - missing.sum(axis=1))[:, None]
    slot_bits = max(1, (width - 1).bit_length())
    keys = (grid + 0.0).view(np.int64)  # + 0.0 turns -0.0 into 0.0, which must tie with it
    keys ^= (keys >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF)  # IEEE bits -> monotone int64
    keys[missing] = np.iinfo(np.int64).max  # NaN last
    keys >>= slot_bits
    keys <<= slot_bits
    keys |= np.arange(width, dtype=np.int64)
    keys.sort(axis=1)
    position = np.arange(width)
    collide = (keys[:, 1:] >> slot_bits) == (keys[:, :-1] >> slot_bits)
    collide &= position[None, 1:] < count
    keys &= np.int64((1 << slot_bits) - 1)
    order = keys  # the column at each sorted position
    pct = np.empty(grid.shape)
    pct[:] = position + 1.0
    special = np.flatnonzero(collide.any(axis=1))
    if special.size:
        order[special] = np.argsort(grid[special], axis=1, kind="stable")
        run = np.take_along_axis(grid[special], order[special], axis=1)
        run_start = np.ones(run.shape, dtype=bool)
        run_start[:, 1:] = run[:, 1:] != run[:, :-1]
        run_end = np.ones(run.shape, dtype=bool)
        run_end[:, :-1] = run_start[:, 1:]
        first = np.maximum.accumulate(np.where(run_start, position, 0), axis=1)
        last = np.minimum.accumulate(np.where(run_end, position, width - 1)[:, ::-1], axis=1)[:, ::-1]
        pct[special] = (first + last) / 2.0 + 1.0  # the average rank of each run of equal values
    pct /= np.maximum(count, 1)
    pct[position[None, :] >= count] = np.nan  # the NaN values, sorted last
    ranked = np.empty(grid.size)
    ranked[order + (np.arange(n_rows, dtype=np.int64) * width)[:, None]] = pct
    return ranked.reshape(grid.shape)
