"""The trading environment: per-symbol market series, the feature scaler fitted on the training span, and the Gymnasium
:class:`TradingEnv` (positions, costs, ruin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from alphaforge.rl.params import INITIAL_VALUE, _RUIN_FLOOR, EnvParams
from alphaforge.schema import DataError


# ----------------------------------------------------------------------------------------------- market data


@dataclass(frozen=True)
class MarketSeries:
    """One symbol's bars for the environment: features (NaN allowed), closes, optional opens and signal."""

    symbol: str
    timestamps: pd.DatetimeIndex
    close: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    open: np.ndarray | None = None
    signal: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        where = f"MarketSeries {self.symbol!r}"
        if n < 2:
            raise DataError(f"{where}: {n} bar(s); rule: at least two bars (a decision and its fill)")
        if not self.timestamps.is_monotonic_increasing or self.timestamps.has_duplicates:
            raise DataError(f"{where} column 'timestamp': not strictly increasing; rule: one row per bar, sorted")
        if self.features.shape != (n, len(self.feature_names)):
            raise DataError(f"{where}: features shape {self.features.shape}, expected {(n, len(self.feature_names))}")
        prices = [("close", self.close)] + ([("open", self.open)] if self.open is not None else [])
        for name, values in prices:
            if values.shape != (n,):
                raise DataError(f"{where} column {name!r}: shape {values.shape}, expected ({n},)")
            bad = ~(np.isfinite(values) & (values > 0))
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where} column {name!r}: value {values[first]!r} at bar {first} "
                                f"({self.timestamps[first]}); rule: finite and > 0")
        infinite = np.isinf(self.features)
        if infinite.any():
            row, col = (int(i) for i in np.argwhere(infinite)[0])
            raise DataError(f"{where} column {self.feature_names[col]!r}: infinite at bar {row} "
                            f"({self.timestamps[row]}); rule: finite or NaN")
        if self.signal is not None and self.signal.shape != (n,):
            raise DataError(f"{where}: signal shape {self.signal.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.timestamps)

    def slice(self, start: pd.Timestamp, end: pd.Timestamp) -> MarketSeries | None:
        """The bars with ``start <= timestamp <= end`` (None when fewer than two)."""
        keep = (self.timestamps >= start) & (self.timestamps <= end)
        if keep.sum() < 2:
            return None
        return MarketSeries(
            symbol=self.symbol, timestamps=self.timestamps[keep], close=self.close[keep],
            features=self.features[keep], feature_names=self.feature_names,
            open=None if self.open is None else self.open[keep],
            signal=None if self.signal is None else self.signal[keep],
        )


def market_series(
    frame: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    signal_column: str | None = None,
    use_open: bool = True,
) -> list[MarketSeries]:
    """Split a long frame (``timestamp``, ``symbol``, ``close``, optional ``open``, features) into per-symbol series.

    With ``use_open`` and an ``open`` column, fills happen at the next bar's open, else at its close. Rows
    are sorted by time within each symbol. ``signal_column`` (optional, NaN allowed) feeds
    :func:`signal_policy`.
    """
    required = ["timestamp", "symbol", "close", *feature_names, *([signal_column] if signal_column else [])]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"market_series: missing column(s) {missing}; rule: columns {required}")
    timestamps = frame["timestamp"]
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        raise DataError(f"market_series column 'timestamp': dtype {timestamps.dtype}; rule: timezone-aware datetimes")
    for column in feature_names:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise DataError(f"market_series column {column!r}: dtype {frame[column].dtype}; rule: numeric")
    with_open = use_open and "open" in frame.columns
    ordered = frame.sort_values(["symbol", "timestamp"], kind="stable")
    series = []
    for symbol, rows in ordered.groupby("symbol", sort=True):
        series.append(MarketSeries(
            symbol=str(symbol),
            timestamps=pd.DatetimeIndex(rows["timestamp"]),
            close=rows["close"].to_numpy(dtype=np.float64),
            open=rows["open"].to_numpy(dtype=np.float64) if with_open else None,
            features=rows[list(feature_names)].to_numpy(dtype=np.float64),
            feature_names=tuple(feature_names),
            signal=rows[signal_column].to_numpy(dtype=np.float64) if signal_column else None,
        ))
    return series


@dataclass(frozen=True)
class FeatureScaler:
    """Standardisation of the observed features, fitted on training series only (NaN ignored; std 0 -> 1)."""

    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, series: Sequence[MarketSeries]) -> FeatureScaler:
        """Mean and std of every feature over all bars of ``series`` (the training slice)."""
        if not series:
            raise DataError("FeatureScaler.fit: no series; rule: at least one training series")
        names = series[0].feature_names
        if any(s.feature_names != names for s in series):
            raise DataError("FeatureScaler.fit: series observe different feature columns; rule: the same features")
        stacked = np.vstack([s.features for s in series])
        finite = np.isfinite(stacked)
        counts = finite.sum(axis=0)
        filled = np.where(finite, stacked, 0.0)
        mean = filled.sum(axis=0) / np.maximum(counts, 1)
        variance = np.where(finite, (stacked - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts - 1, 1)
        std = np.sqrt(variance)
        scale = np.where((counts > 1) & (std > 0), std, 1.0)
        return cls(feature_names=names, mean=mean, scale=scale)

    def transform(self, features: np.ndarray, clip: float) -> np.ndarray:
        """Scaled features, NaN -> 0 (the training mean), clipped to +-clip."""
        scaled = (features - self.mean) / self.scale
        return np.clip(np.nan_to_num(scaled, nan=0.0, posinf=clip, neginf=-clip), -clip, clip)

    def to_json(self) -> dict[str, Any]:
        return {"feature_names": list(self.feature_names), "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> FeatureScaler:
        return cls(tuple(payload["feature_names"]), np.asarray(payload["mean"], dtype=np.float64),
                   np.asarray(payload["scale"], dtype=np.float64))


# ----------------------------------------------------------------------------------------------- environment


class TradingEnv(gym.Env):
    """Single-symbol trading with next-bar execution; see the module docstring for the exact rules.

    ``series`` are the symbols' bars (one drawn per episode unless ``reset(options={"series": i})``);
    ``scaler`` standardises the features (fitted on ``series`` when None: pass the training scaler to
    an environment over test data). ``reset(options={"start": k})`` starts at bar ``k``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, series: Sequence[MarketSeries], params: EnvParams | None = None,
                 scaler: FeatureScaler | None = None) -> None:
        super().__init__()
        if not series:
            raise DataError("TradingEnv: no series; rule: at least one symbol's bars")
        self.series = list(series)
        self.params = params or EnvParams()
        self.scaler = scaler or FeatureScaler.fit(self.series)
        names = self.scaler.feature_names
        for s in self.series:
            if s.feature_names != names:
                raise DataError(f"TradingEnv: series {s.symbol!r} has features {list(s.feature_names)}, the scaler "
                                f"{list(names)}; rule: the same feature columns in the same order")
        self._scaled = [self.scaler.transform(s.features, self.params.observation_clip) for s in self.series]
        self._volatility = [_trailing_volatility(s.close, self.params.volatility_window) for s in self.series]
        clip = self.params.observation_clip
        self.observation_space = spaces.Box(-clip, clip, shape=(len(names) + 2,), dtype=np.float32)
        low = -1.0 if self.params.allow_short else 0.0
        if self.params.action_mode == "discrete":
            self._targets = np.array([-1.0, 0.0, 1.0] if self.params.allow_short else [0.0, 1.0])
            self.action_space = spaces.Discrete(len(self._targets))
        else:
            self._targets = None
            self.action_space = spaces.Box(low, 1.0, shape=(1,), dtype=np.float32)
        self._index = 0
        self._t = 0
        self._end = 1
        self._cash = INITIAL_VALUE
        self._shares = 0.0

    # -- episode bookkeeping

    @property
    def current(self) -> MarketSeries:
        """The series of the running episode."""
        return self.series[self._index]

    def target_position(self, action: Any) -> float:
        """The target fraction of portfolio value an action asks for (continuous actions clipped to the box)."""
        if self._targets is not None:
            return float(self._targets[int(np.asarray(action).reshape(-1)[0])])
        low = float(self.action_space.low[0])
        return float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], low, 1.0))

    def action_for(self, target: float) -> Any:
        """The action that asks for ``target`` (a discrete environment needs one of its targets exactly)."""
        if self._targets is None:
            return np.array([target], dtype=np.float32)
        matches = np.flatnonzero(self._targets == target)
        if not matches.size:
            raise ValueError(f"TradingEnv.action_for: target {target!r} is not one of {self._targets.tolist()}")
        return int(matches[0])

    def _value(self, price: float) -> float:
        return self._cash + self._shares * price

    def _fill_price(self, bar: int) -> float:
        """The price a decision taken on bar ``bar`` trades at: the next bar's open, or its close without opens."""
        s = self.current
        return float(s.open[bar + 1] if s.open is not None else s.close[bar + 1])

    def _observation(self) -> np.ndarray:
        price = float(self.current.close[self._t])
        value = self._value(price)
        position = self._shares * price / value if value > 0 else 0.0
        cash = self._cash / value if value > 0 else 0.0
        clip = self.params.observation_clip
        tail = np.clip([position, cash], -clip, clip)
        return np.concatenate([self._scaled[self._index][self._t], tail]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        s = self.current
        price = float(s.close[self._t])
        value = self._value(price)
        return {"symbol": s.symbol, "bar": self._t, "timestamp": s.timestamps[self._t], "value": value,
                "position": self._shares * price / value if value > 0 else 0.0}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"series", "start"}
        if unknown:
            raise ValueError(f"TradingEnv.reset: unknown option(s) {sorted(unknown)}; known: series, start")
        if "series" in options:
            self._index = int(options["series"])
            if not 0 <= self._index < len(self.series):
                raise ValueError(f"TradingEnv.reset: series {self._index} out of range 0..{len(self.series) - 1}")
        else:
            self._index = int(self.np_random.integers(len(self.series)))
        n = len(self.current)
        length = self.params.episode_length
        if "start" in options:
            start = int(options["start"])
            if not 0 <= start < n - 1:
                raise ValueError(f"TradingEnv.reset: start {start} leaves no next bar to fill at (series of {n} bars)")
        elif length is None or length >= n - 1:
            start = 0
        else:
            start = int(self.np_random.integers(n - 1 - length + 1))
        self._t = start
        self._end = n - 1 if length is None else min(n - 1, start + length)
        self._cash, self._shares = INITIAL_VALUE, 0.0
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self._end:
            raise RuntimeError("TradingEnv.step: the episode is over; call reset()")
        s = self.current
        t = self._t
        target = self.target_position(action)
        value_before = self._value(float(s.close[t]))
        fill = self._fill_price(t)
        value_at_fill = self._value(fill)
        target_shares = target * value_at_fill / fill if value_at_fill > 0 else 0.0
        traded = target_shares - self._shares
        cost = self.params.cost_bps * 1e-4 * abs(traded) * fill
        self._cash -= traded * fill + cost
        self._shares = target_shares
        self._t = t + 1
        value_after = self._value(float(s.close[t + 1]))
        growth = value_after / value_before
        ruined = value_after <= 0
        reward = math.log(max(growth, _RUIN_FLOOR)) if self.params.reward == "log" else growth - 1.0
        sigma = self._volatility[self._index][t]
        if self.params.risk_penalty > 0 and np.isfinite(sigma):
            reward -= self.params.risk_penalty * target * target * sigma * sigma
        truncated = (self._t >= self._end) and not ruined
        info = self._info()
        info.update({"decision_timestamp": s.timestamps[t], "fill_price": fill, "target_position": target,
                     "traded_shares": traded, "cost": cost, "net_return": growth - 1.0})
        return self._observation(), float(reward), bool(ruined), bool(truncated), info


def _trailing_volatility(close: np.ndarray, window: int) -> np.ndarray:
    """Sample std of the last ``window`` one-bar log returns up to and including each bar (NaN until full)."""
    returns = pd.Series(np.log(close)).diff()
    return returns.rolling(window, min_periods=window).std(ddof=1).to_numpy()
