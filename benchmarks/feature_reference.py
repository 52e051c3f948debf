"""A plain, per-symbol pandas reference for :mod:`alphaforge.features`.

Written the obvious way (``groupby(...).rolling``, ``groupby(...).ewm``, ``diff``,
``shift``) so that it is easy to read and check by eye. It is the one reference the
tests compare the vectorised library against (to ~1e-9) and the one the benchmark
times the library against. It is deliberately not clever; speed is the library's job.

It follows the library's documented definitions, including the 0/0 conventions
(RSI 50 with no movement, stochastic 0.5 when high == low, Bollinger position 0 on a
flat window, volume ratio and log dollar volume NaN when mean volume is 0, order
imbalance 0 when both sizes are 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaforge.features import FeatureParams


def _per_symbol(values: pd.Series, symbols: pd.Series) -> pd.core.groupby.SeriesGroupBy:
    return values.groupby(symbols, sort=False)


def _rolling(values: pd.Series, symbols: pd.Series, window: int) -> pd.core.window.RollingGroupby:
    return _per_symbol(values, symbols).rolling(window, min_periods=window)


def _flat(result: pd.Series) -> pd.Series:
    """A groupby-rolling/ewm result (indexed by symbol, row) back on the original row index."""
    return result.reset_index(level=0, drop=True).sort_index()


def _wilder(values: pd.Series, symbols: pd.Series, positions: pd.Series, window: int) -> pd.Series:
    """Wilder smoothing of a series that is NaN at each symbol's first bar.

    The first value (at bar ``window``) is the simple mean of bars 1..window, then
    ``avg = avg_prev + (x - avg_prev) / window``, written as pandas' ewm(alpha=1/window).
    """
    seed = _flat(_rolling(values, symbols, window).mean())
    seeded = values.where(positions > window, seed.where(positions == window))
    return _flat(_per_symbol(seeded, symbols).ewm(alpha=1.0 / window, adjust=False).mean())


def _two_pass_std(values: pd.Series, window: int, ddof: int) -> pd.Series:
    """Rolling std of one symbol, window by window with NumPy's two-pass ``std``; 0 on a flat window.

    Used for the std of prices: pandas' online rolling variance drifts by ~1e-9 relative
    over thousands of bars of prices in the hundreds, too coarse to check the library to 1e-9.
    """
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        windows = np.lib.stride_tricks.sliding_window_view(values.to_numpy(dtype=np.float64), window)
        flat = windows.max(axis=1) == windows.min(axis=1)
        out[window - 1 :] = np.where(flat, 0.0, windows.std(axis=1, ddof=ddof))
    return pd.Series(out, index=values.index)


def reference_features(bars: pd.DataFrame, params: FeatureParams) -> pd.DataFrame:
    """The features of ``bars`` (canonical long schema, sorted by symbol then time), computed per symbol in pandas."""
    symbols = bars["symbol"]
    close = bars["close"].astype("float64")
    positions = _per_symbol(close, symbols).cumcount()
    out: dict[str, pd.Series] = {}

    log_close = np.log(close)
    for horizon in params.return_horizons:
        out[f"log_return_{horizon}"] = _per_symbol(log_close, symbols).diff(horizon)
    one_bar = _per_symbol(log_close, symbols).diff(1)

    for window in params.ma_windows:
        sma = _flat(_rolling(close, symbols, window).mean())
        out[f"sma_ratio_{window}"] = close / sma - 1.0
    for window in params.ma_windows:
        ema = _flat(_per_symbol(close, symbols).ewm(span=window, adjust=False, min_periods=window).mean())
        out[f"ema_ratio_{window}"] = close / ema - 1.0

    change = _per_symbol(close, symbols).diff(1)
    gain = _wilder(change.clip(lower=0.0), symbols, positions, params.rsi_window)
    loss = _wilder((-change).clip(lower=0.0), symbols, positions, params.rsi_window)
    rsi = 100.0 - 100.0 / (1.0 + gain / loss)
    rsi = rsi.mask((gain == 0.0) & (loss == 0.0), 50.0)
    out["rsi"] = rsi

    ema_fast = _flat(
        _per_symbol(close, symbols).ewm(span=params.macd_fast, adjust=False, min_periods=params.macd_fast).mean()
    )
    ema_slow = _flat(
        _per_symbol(close, symbols).ewm(span=params.macd_slow, adjust=False, min_periods=params.macd_slow).mean()
    )
    macd_line = ema_fast - ema_slow
    signal = _flat(
        _per_symbol(macd_line, symbols)
        .ewm(span=params.macd_signal, adjust=False, min_periods=params.macd_signal)
        .mean()
    )
    out["macd"] = macd_line / close
    out["macd_signal"] = signal / close
    out["macd_hist"] = (macd_line - signal) / close

    window = params.bollinger_window
    middle = _flat(_rolling(close, symbols, window).mean())
    spread = _per_symbol(close, symbols).transform(lambda s: _two_pass_std(s, window, ddof=0))
    bollinger = (close - middle) / (params.bollinger_k * spread)
    out["bollinger_position"] = bollinger.mask(spread == 0.0, 0.0)

    for window in params.volatility_windows:
        out[f"volatility_{window}"] = _flat(_rolling(one_bar, symbols, window).std(ddof=1))

    if {"high", "low"} <= set(bars.columns):
        high = bars["high"].astype("float64")
        low = bars["low"].astype("float64")
        previous_close = _per_symbol(close, symbols).shift(1)
        true_range = pd.concat(
            [high - low, (high - previous_close).abs(), (low - previous_close).abs()], axis=1
        ).max(axis=1, skipna=False)
        atr = _wilder(true_range, symbols, positions, params.atr_window)
        out["atr_ratio"] = atr / close

        window = params.stochastic_window
        highest = _flat(_rolling(high, symbols, window).max())
        lowest = _flat(_rolling(low, symbols, window).min())
        stochastic_k = ((close - lowest) / (highest - lowest)).mask(highest == lowest, 0.5)
        out["stochastic_k"] = stochastic_k
        out["stochastic_d"] = _flat(_rolling(stochastic_k, symbols, params.stochastic_smooth).mean())

    if "volume" in bars.columns:
        volume = bars["volume"].astype("float64")
        mean_volume = _flat(_rolling(volume, symbols, params.volume_window).mean())
        out["volume_ratio"] = (volume / mean_volume).mask(mean_volume == 0.0)
        dollar = _flat(_rolling(close * volume, symbols, params.volume_window).mean())
        out["log_dollar_volume"] = np.log(dollar.mask(dollar == 0.0))

    if {"bid", "ask"} <= set(bars.columns):
        mid = (bars["ask"] + bars["bid"]) / 2.0
        out["spread"] = ((bars["ask"] - bars["bid"]) / mid).mask(mid == 0.0)
    if {"bid_size", "ask_size"} <= set(bars.columns):
        depth = bars["bid_size"] + bars["ask_size"]
        out["order_imbalance"] = ((bars["bid_size"] - bars["ask_size"]) / depth).mask(depth == 0.0, 0.0)

    if params.calendar:
        timestamps = bars["timestamp"]
        out["day_of_week"] = timestamps.dt.dayofweek
        out["month"] = timestamps.dt.month
        gaps = _per_symbol(timestamps, symbols).diff().dropna()
        gaps = gaps[gaps > pd.Timedelta(0)]
        if len(gaps) and (gaps < pd.Timedelta(days=1)).mean() > 0.5:
            out["hour"] = timestamps.dt.hour

    if symbols.nunique() > 1:
        for name in params.cross_sectional_ranks:
            if name in out:
                out[f"{name}_cs_rank"] = out[name].groupby(bars["timestamp"]).rank(pct=True)

    frame = pd.DataFrame({"timestamp": bars["timestamp"], "symbol": symbols})
    for name, values in out.items():
        frame[name] = values.astype("float64")
    return frame
