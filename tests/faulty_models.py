"""A model that raises on some inputs, for the per-request fallback test: it wraps a fitted scikit-learn regressor
and raises when a row's first feature is above ``fails_above`` (importable by the service process through
PYTHONPATH, so the pickled member loads there)."""

from __future__ import annotations

from typing import Any

import numpy as np


class FaultyRegressor:
    """``regressor.predict`` for ordinary rows; ``ValueError`` for a row whose first feature > ``fails_above``."""

    def __init__(self, regressor: Any, fails_above: float) -> None:
        self.regressor = regressor
        self.fails_above = fails_above

    def predict(self, x: np.ndarray) -> np.ndarray:
        if (np.asarray(x)[:, 0] > self.fails_above).any():
            raise ValueError(f"a first feature above {self.fails_above} breaks this model")
        return self.regressor.predict(x)
