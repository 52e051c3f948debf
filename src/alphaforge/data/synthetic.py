"""A synthetic market with a planted, known predictive component and regime switches.

Used by the tests (a model must find the planted signal, and must not find it when
labels are shuffled) and by the scale benchmarks (1M+ rows in a second or two).

The model of the market, per symbol ``i`` and bar ``t`` (log prices):

* the log close ``c`` has an exponential moving average ``m`` with span ``signal_span``;
* the next one-bar log return is ``r[t+1] = -kappa * (c[t] - m[t]) / d + sigma[regime] * eps``,
  where ``d`` is the stationary std of ``c - m`` under pure noise. ``kappa`` is
  ``signal_strength * sigma_calm``, so the planted component is a mean reversion
  towards the moving average that any feature like ``ema_ratio_{span}`` can see;
* ``regime`` is one market-wide two-state Markov chain (calm / turbulent): the
  turbulent state has ``turbulent_vol_multiple`` times the volatility and a
  negative drift, switching with probability ``regime_switch_prob`` per bar.

Open, high, low and volume are generated consistently (low <= open, close <= high).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class SyntheticParams(BaseModel):
    """Shape and strength of the synthetic market."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_symbols: int = Field(50, ge=1)
    n_bars: int = Field(1500, ge=30)
    freq: str = "B"
    start: str = "2010-01-04"
    seed: int = 7
    signal_strength: float = Field(0.15, ge=0.0)
    signal_span: int = Field(10, ge=2)
    calm_vol: float = Field(0.01, gt=0.0)
    turbulent_vol_multiple: float = Field(2.5, ge=1.0)
    turbulent_drift: float = -0.001
    regime_switch_prob: float = Field(0.01, ge=0.0, le=1.0)


def make_synthetic(params: SyntheticParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bars in the canonical schema, and the planted truth per bar.

    The truth frame (same rows) has ``expected_return_1`` (the planted expected next
    one-bar log return, known at bar t) and ``regime`` (0 calm, 1 turbulent).
    """
    rng = np.random.default_rng(params.seed)
    n, t_len = params.n_symbols, params.n_bars
    alpha = 2.0 / (params.signal_span + 1.0)
    # std of (c - ema(c)) for a random walk with unit steps: sqrt((1 - alpha) / (alpha * (2 - alpha)))
    deviation_scale = params.calm_vol * np.sqrt((1.0 - alpha) / (alpha * (2.0 - alpha)))
    kappa = params.signal_strength * params.calm_vol

    regimes = np.empty(t_len, dtype=np.int8)
    regimes[0] = 0
    switches = rng.random(t_len) < params.regime_switch_prob
    for t in range(1, t_len):
        regimes[t] = regimes[t - 1] ^ int(switches[t])

    log_close = np.empty((t_len, n))
    expected = np.empty((t_len, n))
    log_close[0] = np.log(rng.uniform(20.0, 200.0, size=n))
    ema = log_close[0].copy()
    vol_by_regime = np.array([params.calm_vol, params.calm_vol * params.turbulent_vol_multiple])
    drift_by_regime = np.array([0.0002, params.turbulent_drift])
    shocks = rng.standard_normal((t_len, n))
    for t in range(t_len):
        expected[t] = -kappa * (log_close[t] - ema) / deviation_scale
        if t + 1 < t_len:
            nxt = regimes[t + 1]
            step = expected[t] + drift_by_regime[nxt] + vol_by_regime[nxt] * shocks[t + 1]
            log_close[t + 1] = log_close[t] + step
            ema = alpha * log_close[t + 1] + (1.0 - alpha) * ema

    vol = vol_by_regime[regimes][:, None]
    close = np.exp(log_close)
    prev_close = np.vstack([close[:1], close[:-1]])
    open_ = prev_close * np.exp(0.2 * vol * rng.standard_normal((t_len, n)))
    # wicks small enough that the high-low spread estimate (Corwin-Schultz) reads a few bps, as on liquid stocks
    upper = np.maximum(open_, close) * np.exp(np.abs(0.25 * vol * rng.standard_normal((t_len, n))))
    lower = np.minimum(open_, close) * np.exp(-np.abs(0.25 * vol * rng.standard_normal((t_len, n))))
    volume = np.round(rng.lognormal(mean=12.0, sigma=0.4, size=(t_len, n)) * (vol / params.calm_vol))

    timestamps = pd.date_range(params.start, periods=t_len, freq=params.freq, tz="UTC")
    symbols = np.array([f"SYN{i:04d}" for i in range(n)])
    bars = pd.DataFrame(
        {
            "timestamp": timestamps[np.tile(np.arange(t_len), n)],
            "symbol": np.repeat(symbols, t_len),
            "open": open_.T.ravel(),
            "high": upper.T.ravel(),
            "low": lower.T.ravel(),
            "close": close.T.ravel(),
            "volume": volume.T.ravel(),
        }
    )
    truth = pd.DataFrame(
        {
            "timestamp": bars["timestamp"],
            "symbol": bars["symbol"],
            "expected_return_1": expected.T.ravel(),
            "regime": np.tile(regimes, n),
        }
    )
    return bars, truth
