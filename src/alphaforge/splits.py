"""Walk-forward splits over time with purge and embargo.

Splits are made over the sorted unique timestamps of a panel, so every symbol's row
at a timestamp falls on the same side. Training always precedes testing.

* ``purge``: a label at bar t looks ``horizon`` bars ahead, so the last ``horizon``
  training timestamps before a test window would see prices inside it; they are
  dropped. Size it as the label horizon.
* ``embargo``: a further gap of bars after the purge, for serial correlation that
  outlives the label (Lopez de Prado, AFML ch. 7). In a walk-forward the test
  window is always after the training window, so the embargo sits between them.

Test windows tile the last ``n_splits * test_size`` timestamps without overlap. In
``expanding`` mode training starts at the first timestamp; in ``sliding`` mode it
keeps the last ``train_size`` timestamps before the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class WalkForwardParams(BaseModel):
    """Shape of the walk-forward: folds, window sizes in bars, and the gap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_splits: int = Field(5, ge=1)
    mode: Literal["expanding", "sliding"] = "expanding"
    test_size: int | None = Field(None, ge=1, description="bars per test window; None: split the tail evenly")
    train_size: int | None = Field(None, ge=1, description="bars per training window in sliding mode")
    min_train_size: int = Field(252, ge=1)
    embargo: int = Field(5, ge=0)


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: row positions and the time range of each side."""

    number: int
    train_rows: np.ndarray
    test_rows: np.ndarray
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


class WalkForward:
    """Walk-forward splitter; ``purge`` is the label horizon in bars."""

    def __init__(self, params: WalkForwardParams, purge: int) -> None:
        self.params = params
        self.purge = purge

    @property
    def gap(self) -> int:
        """Timestamps left out between the end of training and the start of testing."""
        return self.purge + self.params.embargo

    def time_windows(self, n_times: int) -> list[tuple[slice, slice]]:
        """(train, test) slices over ``n_times`` sorted unique timestamps."""
        p = self.params
        test_size = p.test_size
        if test_size is None:
            test_size = (n_times - p.min_train_size - self.gap) // p.n_splits
        first_test = n_times - p.n_splits * test_size
        if test_size < 1 or first_test - self.gap < p.min_train_size:
            raise ValueError(
                f"walk-forward needs at least min_train_size={p.min_train_size} + gap={self.gap} + "
                f"n_splits={p.n_splits} x test bars, but the data has {n_times} timestamps; "
                "use more data, fewer splits or a smaller train.walk_forward.min_train_size"
            )
        windows = []
        for k in range(p.n_splits):
            test_start = first_test + k * test_size
            train_end = test_start - self.gap  # exclusive
            train_start = 0
            if p.mode == "sliding":
                size = p.train_size or p.min_train_size
                train_start = max(0, train_end - size)
            windows.append((slice(train_start, train_end), slice(test_start, test_start + test_size)))
        return windows

    def split(self, timestamps: pd.Series) -> list[Fold]:
        """Folds over a panel's rows, given each row's timestamp (any row order)."""
        stamps = pd.DatetimeIndex(timestamps)
        unique = stamps.unique().sort_values()
        codes = unique.get_indexer(stamps)
        folds = []
        for number, (train, test) in enumerate(self.time_windows(len(unique))):
            train_rows = np.flatnonzero((codes >= train.start) & (codes < train.stop))
            test_rows = np.flatnonzero((codes >= test.start) & (codes < test.stop))
            folds.append(
                Fold(
                    number=number,
                    train_rows=train_rows,
                    test_rows=test_rows,
                    train_start=unique[train.start],
                    train_end=unique[train.stop - 1],
                    test_start=unique[test.start],
                    test_end=unique[test.stop - 1],
                )
            )
        return folds


def first_training_end(walk_forward: WalkForwardParams, purge: int, timestamps: pd.Series) -> pd.Timestamp:
    """End of the first walk-forward training window: the regime and risk models are fitted on data up to it."""
    return WalkForward(walk_forward, purge=purge).split(timestamps)[0].train_end
