"""Seeded synthetic markets with a known truth, for the promotion gate's tests.

Each builds canonical OHLCV bars and a signal column known at the close of bar t:

* :func:`tradeable_market`: the signal predicts the return from bar t+1's open to bar t+2's open, the return a
  strategy can earn after seeing bar t (planted edge, persistent, so a 5-bar label is right for it).
* :func:`bounce_market`: no edge at all; closing prices are jittered around the true price (a bid-ask bounce)
  and a fifth of the names are illiquid, with zero-volume flat bars. The same bar's return reversal looks like
  a strong signal against close-to-close returns, and earns nothing once traded at the next bar.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaforge.evaluate import EvaluationParams, evaluate_oof, market_for
from alphaforge.features import compute_labels


def _long(timestamps: pd.DatetimeIndex, symbols: list[str], **wide: np.ndarray) -> pd.DataFrame:
    n_bars, n_symbols = next(iter(wide.values())).shape
    frame = pd.DataFrame({"timestamp": np.tile(timestamps, n_symbols), "symbol": np.repeat(symbols, n_bars)})
    frame["timestamp"] = pd.DatetimeIndex(frame["timestamp"]).tz_convert("UTC") if frame["timestamp"].dt.tz \
        else pd.DatetimeIndex(frame["timestamp"]).tz_localize("UTC")
    for name, values in wide.items():
        frame[name] = values.T.ravel()
    return frame


def tradeable_market(*, n_symbols: int = 40, n_bars: int = 1300, seed: int = 0, strength: float = 0.0015,
                     persistence: float = 0.8, volatility: float = 0.01) -> pd.DataFrame:
    """Bars plus ``signal`` (known at t's close) with log(open[t+2] / open[t+1]) = strength * signal[t] + noise."""
    rng = np.random.default_rng(seed)
    signal = np.zeros((n_bars, n_symbols))
    signal[0] = rng.standard_normal(n_symbols)
    for t in range(1, n_bars):
        signal[t] = persistence * signal[t - 1] + np.sqrt(1 - persistence**2) * rng.standard_normal(n_symbols)
    log_open = np.zeros((n_bars, n_symbols))
    log_open[0] = np.log(rng.uniform(20, 200, n_symbols))
    log_open[1] = log_open[0] + volatility * rng.standard_normal(n_symbols)
    for t in range(2, n_bars):
        log_open[t] = log_open[t - 1] + strength * signal[t - 2] + volatility * rng.standard_normal(n_symbols)
    open_ = np.exp(log_open)
    close = open_ * np.exp(0.3 * volatility * rng.standard_normal((n_bars, n_symbols)))
    high = np.maximum(open_, close) * np.exp(np.abs(0.3 * volatility * rng.standard_normal((n_bars, n_symbols))))
    low = np.minimum(open_, close) * np.exp(-np.abs(0.3 * volatility * rng.standard_normal((n_bars, n_symbols))))
    volume = rng.lognormal(12.0, 0.3, (n_bars, n_symbols))
    stamps = pd.date_range("2015-01-01", periods=n_bars, freq="B", tz="UTC")
    return _long(stamps, [f"T{i:03d}" for i in range(n_symbols)], open=open_, high=high, low=low, close=close,
                 volume=volume, signal=signal)


def bounce_market(*, n_symbols: int = 40, n_bars: int = 1300, seed: int = 1, bounce: float = 0.02,
                  illiquid_share: float = 0.2, zero_volume_share: float = 0.5) -> pd.DataFrame:
    """A random walk with no edge, closes bouncing around it, illiquid names with zero-volume flat bars.

    ``signal`` is the same bar's return reversal, -log(close[t] / close[t-1]).
    """
    rng = np.random.default_rng(seed)
    log_true = np.log(rng.uniform(5, 50, n_symbols)) + np.cumsum(0.01 * rng.standard_normal((n_bars, n_symbols)),
                                                                 axis=0)
    close = np.exp(log_true + bounce * rng.standard_normal((n_bars, n_symbols)))
    open_ = np.exp(log_true + 0.002 * rng.standard_normal((n_bars, n_symbols)))
    volume = rng.lognormal(13.0, 0.3, (n_bars, n_symbols))
    n_illiquid = int(round(illiquid_share * n_symbols))
    volume[:, :n_illiquid] = rng.lognormal(6.0, 0.5, (n_bars, n_illiquid))  # a few hundred dollars a day
    idle = rng.random((n_bars, n_illiquid)) < zero_volume_share
    idle[0] = False
    for t in range(1, n_bars):  # a bar that did not trade repeats the last close: open = high = low = close
        close[t, :n_illiquid] = np.where(idle[t], close[t - 1, :n_illiquid], close[t, :n_illiquid])
        open_[t, :n_illiquid] = np.where(idle[t], close[t - 1, :n_illiquid], open_[t, :n_illiquid])
    volume[:, :n_illiquid] = np.where(idle, 0.0, volume[:, :n_illiquid])
    high = np.maximum(open_, close) * np.exp(np.abs(0.003 * rng.standard_normal((n_bars, n_symbols))))
    low = np.minimum(open_, close) * np.exp(-np.abs(0.003 * rng.standard_normal((n_bars, n_symbols))))
    high[:, :n_illiquid] = np.where(idle, close[:, :n_illiquid], high[:, :n_illiquid])
    low[:, :n_illiquid] = np.where(idle, close[:, :n_illiquid], low[:, :n_illiquid])
    signal = np.vstack([np.full((1, n_symbols), np.nan), -np.diff(np.log(close), axis=0)])
    stamps = pd.date_range("2015-01-01", periods=n_bars, freq="B", tz="UTC")
    return _long(stamps, [f"B{i:03d}" for i in range(n_symbols)], open=open_, high=high, low=low, close=close,
                 volume=volume, signal=signal)


def oof_frame(bars: pd.DataFrame, signals: dict[str, np.ndarray | pd.Series], *, horizon: int, n_folds: int = 5,
              oos_start: int = 300, execution: str = "auto") -> pd.DataFrame:
    """The OOF shape the train stage writes: the last bars after ``oos_start`` split into ``n_folds`` folds."""
    labels = compute_labels(bars.drop(columns=["signal"], errors="ignore"), horizon, execution)
    frame = bars[["timestamp", "symbol"]].copy()
    frame["forward_return"] = labels["forward_return"].to_numpy()
    for name, values in signals.items():
        frame[name] = np.asarray(values, dtype=float)
    stamps = np.sort(frame["timestamp"].unique())[oos_start:]
    frame = frame[frame["timestamp"].isin(stamps)].dropna(subset=["forward_return"]).reset_index(drop=True)
    rank = frame["timestamp"].rank(method="dense").astype(int) - 1
    frame["fold"] = np.minimum(rank * n_folds // (rank.max() + 1), n_folds - 1).astype(int)
    return frame


def evaluate_market(bars: pd.DataFrame, signals: dict[str, np.ndarray | pd.Series], *, horizon: int = 5,
                    params: EvaluationParams | None = None):
    """evaluate_oof of ``signals`` on ``bars`` traded through the bars' own market frame."""
    params = params or EvaluationParams()
    oof = oof_frame(bars, signals, horizon=horizon, execution=params.execution)
    market = market_for(bars.drop(columns=["signal"], errors="ignore"), params)
    return evaluate_oof(oof, params, models={name: name for name in signals}, market=market, horizon=horizon), oof
