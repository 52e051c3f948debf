"""The one interface every model family implements.

A forecaster is a scikit-learn-style estimator over a *panel*: ``fit`` and ``predict``
take a frame sorted by (symbol, timestamp) holding the key columns ``timestamp`` and
``symbol`` plus the feature columns. Tabular families use the feature columns of each
row; sequence families look back ``lookback`` bars of the same symbol, so they are
given the history before the rows they predict through ``context`` (rows the caller
marks as not to be fitted or predicted, but available as the past).

``__init__`` only stores parameters; ``fit`` returns ``self``; learned attributes end
in ``_``. Every family saves to and loads from a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

Task = Literal["regression", "classification"]
KEY_COLUMNS = ("timestamp", "symbol")


@runtime_checkable
class Forecaster(Protocol):
    """What the train and tune stages rely on."""

    family: ClassVar[str]
    task: Task
    feature_names_: list[str]

    def fit(self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None) -> Forecaster:
        """Learn from the rows of ``frame`` where ``fit_mask`` is true (all rows when None).

        ``target`` is aligned with ``frame``; for classification it holds 0/1. Rows outside the
        mask are history a sequence model may look back into; tabular models ignore them.
        """

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        """One value per masked row (all rows when None): the forecast, or P(up) for classification."""

    def save(self, path: Path) -> None:
        """Write everything needed to predict into the folder ``path``."""

    @classmethod
    def load(cls, path: Path) -> Forecaster:
        """The forecaster saved in ``path``; predictions equal the saved one's."""


def row_mask(mask: np.ndarray | pd.Series | None, n_rows: int, name: str) -> np.ndarray:
    """``mask`` as a boolean array with one entry per row (all true when None); anything else raises."""
    if mask is None:
        return np.ones(n_rows, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {array.dtype}")
    if array.shape != (n_rows,):
        raise ValueError(f"{name} must have one entry per frame row: shape {array.shape} vs {n_rows} rows")
    return array
