"""validate.as_series: a symbol split into ten or more series keeps its series in (symbol, time) order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaforge.features import FeatureParams, compute_features
from alphaforge.validate import as_series


def test_eleven_segments_stay_in_order_for_the_features() -> None:
    timestamps = pd.date_range("2020-01-01", periods=110, freq="D", tz="UTC")
    bars = pd.DataFrame({
        "timestamp": np.tile(timestamps, 2),
        "symbol": ["A"] * 110 + ["B"] * 110,
        "close": np.linspace(10.0, 20.0, 220),
        "segment": np.concatenate([np.repeat(np.arange(11), 10), np.zeros(110, dtype=int)]),
    })
    series = as_series(bars)
    assert series["symbol"].iloc[[0, 10, 90, 100]].tolist() == ["A", "A\x1f01", "A\x1f09", "A\x1f10"]
    assert series["symbol"].is_monotonic_increasing  # (symbol, time) order survives as text
    features = compute_features(series.drop(columns="segment"), FeatureParams(calendar=False, regimes=False))
    # each series restarts its indicators: the first bar of segment 10 has no one-bar return
    assert np.isnan(features["log_return_1"].iloc[100]) and np.isfinite(features["log_return_1"].iloc[101])
