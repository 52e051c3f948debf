"""A small served market for the streaming monitor's tests: bars in ``alphaforge stream``'s bar log, served
predictions in the service's request log, written bar by bar as the live loop would.

Six symbols of daily bars with opens (``next_open`` execution). The feature ``good`` is the row's realised
one-bar execution return ``log(open[t+2] / open[t+1])`` plus a little noise, ``bad`` its negative; the served
prediction follows ``good`` until ``degrade_from`` (a bar number), then ``bad`` (the planted degradation).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from alphaforge.featurestore.stream import Bar, BarLog
from alphaforge.monitor import RequestLog

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
FEATURES = ["good", "bad"]


class ServedMarket:
    """Writes bar ``t`` (and the champion's predictions for it) with :meth:`write`, in bar order."""

    def __init__(self, folder: Path, *, n_bars: int, degrade_from: int | None = None, seed: int = 0,
                 start: str = "2026-01-05") -> None:
        rng = np.random.default_rng(seed)
        self.stamps = pd.date_range(start, periods=n_bars + 2, freq="D", tz="UTC")
        returns = rng.normal(0.0, 0.01, (n_bars + 2, len(SYMBOLS)))
        self.opens = 100.0 * np.exp(np.cumsum(returns, axis=0))
        self.closes = self.opens * np.exp(rng.normal(0.0, 0.002, self.opens.shape))
        self.noise = rng.normal(0.0, 0.002, (n_bars + 2, len(SYMBOLS), 3))
        self.degrade_from = degrade_from
        self.bar_log = BarLog(folder / "bars.sqlite")
        self.request_log = RequestLog(folder / "requests")
        self.log_dir = folder / "requests"
        self.bar_log_path = folder / "bars.sqlite"
        self.written = 0

    def realised(self, t: int) -> np.ndarray:
        """The one-bar execution return of bar t's predictions (all symbols); NaN past the data."""
        if t + 2 >= len(self.opens):
            return np.full(len(SYMBOLS), np.nan)
        return np.log(self.opens[t + 2] / self.opens[t + 1])

    def features(self, t: int) -> np.ndarray:
        signal = np.nan_to_num(self.realised(t))
        return np.column_stack([signal + self.noise[t, :, 0], -signal + self.noise[t, :, 1]])

    def write(self, t: int) -> None:
        """Bar t into the bar log, then the champion's predictions for bar t into the request log."""
        stamp_ns = int(self.stamps[t].value)
        self.bar_log.append(stamp_ns, [Bar(0, stamp_ns, s, {"open": float(self.opens[t, i]),
                                                            "close": float(self.closes[t, i])})
                                       for i, s in enumerate(SYMBOLS)], None)
        features = self.features(t)
        degraded = self.degrade_from is not None and t >= self.degrade_from
        prediction = features[:, 1 if degraded else 0] + self.noise[t, :, 2]
        self.request_log.append_block(
            request_id=f"r{t}", received_at=datetime.now(UTC), model_name="m", model_version="1",
            variant="champion", symbols=SYMBOLS, timestamps_us=np.full(len(SYMBOLS), stamp_ns // 1000),
            feature_names=FEATURES, features=features, predictions=prediction, latency_ms=0.5)
        self.written = t + 1

    def close(self) -> None:
        self.bar_log.close()
        self.request_log.close()


def family_predictions(x: np.ndarray) -> np.ndarray:
    """The two families: ``good`` predicts its feature, ``bad`` its own."""
    return x[:, [0, 1]]
