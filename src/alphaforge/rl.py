"""Reinforcement learning: a Gymnasium trading environment over the feature pipeline, and SB3 agents on it.

**The environment** (:class:`TradingEnv`) trades one symbol per episode (a training environment holds
several symbols' series and draws one per episode). Each step is one bar:

* *Observation at bar t*: the features of bar t (scaled by a :class:`FeatureScaler` fitted on the
  training slice only; NaN becomes 0, the training mean; values clipped to
  ``+-EnvParams.observation_clip``) followed by ``[position, cash_fraction]``: the signed fraction of
  portfolio value held in the asset and in cash, marked at bar t's close (they sum to 1).
* *Action*: a target position as a fraction of portfolio value: a ``Box`` in [-1, 1] (long, flat, short,
  any size), [0, 1] without shorting, or with ``action_mode="discrete"`` ``Discrete(3)`` =
  {0: short -1, 1: flat 0, 2: long +1} (``Discrete(2)`` = {flat, long} without shorting).
* *Execution, with no look-ahead*: the action chosen on bar t's observation is filled at bar t+1's
  **open** (bar t+1's **close** when the data has no opens), never at bar t's close, the price the agent
  has just seen (the flaw reported in FinRL's environment, AI4Finance-Foundation/FinRL#938). Between
  bar t's close and the fill the old position is still held (it earns the overnight gap).
* *Accounting* (exact, in units of an initial portfolio value of 1): at the fill price ``p`` the
  portfolio is worth ``V = cash + shares * p``; the target is ``shares' = target * V / p``; the trade
  costs ``cost_bps / 1e4 * |shares' - shares| * p`` (one-way, per unit of traded notional), paid from
  cash. The position then earns from the fill price to bar t+1's close.
* *Reward* for step t: ``log(V[t+1] / V[t])`` (or the simple return with ``reward="simple"``), where
  ``V`` is the portfolio marked at each bar's close: net of costs, and entirely in the future of the
  decision. With ``risk_penalty = lambda > 0`` the reward is reduced by ``lambda * target^2 * sigma_t^2``,
  a mean-variance penalty with ``sigma_t`` the trailing std of one-bar log returns over
  ``volatility_window`` bars known at bar t (no penalty while that window is not yet full).
* *Episodes* walk forward in time from a start bar to the series' last bar, or for ``episode_length``
  steps (random symbol and start in training, drawn from the environment's seeded generator). The end
  of data is a *truncation* (the market goes on); a portfolio worth nothing *terminates* the episode.

**Agents** (:func:`train_agent`, :func:`evaluate_agent`): stable-baselines3 PPO or SAC with a small MLP,
seeded, CPU only. Every evaluated action comes with a **confidence** in [0, 1] from the entropy of the
policy's action distribution (:func:`action_confidence`): ``1 - (H - H_floor) / log(K)`` clipped to
[0, 1], the differential entropy ``H`` of the action distribution (PPO's Gaussian, before SB3 clips its
samples to the range; SAC's tanh-squashed Gaussian) placed between that of a distribution one ``K``-th of
the action range wide (confidence 1) and the uniform distribution over the whole range (confidence 0); a
discrete policy's categorical uses
``1 - H / log(K)`` with K its number of actions. Lower entropy, more confident; the scale is comparable
across observations, bars and algorithms. SB3's PPO learns one standard deviation for all states, so its
confidence tracks how settled the policy is rather than varying bar by bar; SAC's (and PPO's with
``algo_kwargs: {ppo: {use_sde: true}}``) depends on the observation.

**The stage** (:func:`run_rl_stage`) trains agents on walk-forward training slices and evaluates them on
the matching test slices in the same environment as three baselines: ``buy_and_hold`` (always fully
long), ``signal`` (the sign of a supervised signal, e.g. the stacked ensemble's out-of-fold prediction
centred on 0; flat where it is missing; long-flat without shorting) and ``random`` (uniform
random actions). All policies are traded with the same fills, costs and reward, so the comparison is like
for like. By default only the **last** fold is trained (``folds="last"``): one fit per algorithm keeps the
optional stage to minutes on a laptop; ``folds="all"`` trains a fresh agent per fold.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from alphaforge.metrics import (
    annual_return,
    finite_values,
    infer_periods_per_year,
    max_drawdown,
    mean_tstat,
    sharpe_ratio,
)
from alphaforge.schema import DataError

log = logging.getLogger(__name__)

__all__ = [
    "AgentEvaluation",
    "EnvParams",
    "FeatureScaler",
    "MarketSeries",
    "Policy",
    "RLParams",
    "TradingEnv",
    "TrainedAgent",
    "action_confidence",
    "agent_policy",
    "buy_and_hold_policy",
    "evaluate_agent",
    "load_agent",
    "market_series",
    "performance",
    "random_policy",
    "rl_leaderboard",
    "rollout",
    "run_rl_stage",
    "signal_policy",
    "train_agent",
]

INITIAL_VALUE: float = 1.0
# A step that wipes the portfolio out gets the log reward of losing all but this fraction (finite, very negative).
_RUIN_FLOOR: float = 1e-12
EDGE_SIGNIFICANCE: float = 0.05

Policy = Callable[[np.ndarray, dict[str, Any]], Any]
"""A policy maps (observation at bar t, info of bar t) to an action; info has ``bar``, ``timestamp``, ``symbol``."""


# ----------------------------------------------------------------------------------------------- parameters


class EnvParams(BaseModel):
    """Trading rules of :class:`TradingEnv`: costs, reward, action space, episodes and observation scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_bps: float = Field(5.0, ge=0.0, description="one-way cost per unit of traded notional, in basis points")
    risk_penalty: float = Field(0.0, ge=0.0, description="lambda of the mean-variance penalty lambda*target^2*sigma^2")
    reward: Literal["log", "simple"] = "log"
    action_mode: Literal["continuous", "discrete"] = "continuous"
    allow_short: bool = True
    episode_length: int | None = Field(
        252, ge=1, description="steps per training episode from a random start; None: whole series from bar 0")
    observation_clip: float = Field(10.0, gt=0.0)
    volatility_window: int = Field(20, ge=2, description="bars of the trailing volatility in the risk penalty")


class RLParams(BaseModel):
    """The optional ``rl`` stage: which agents, how long they train, and the environment they trade in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algos: tuple[Literal["ppo", "sac"], ...] = Field(("ppo", "sac"), min_length=1)
    total_timesteps: int = Field(20_000, ge=1, description="environment steps of training per agent and fold")
    env: EnvParams = EnvParams()
    folds: Literal["last", "all"] = "last"
    features: tuple[str, ...] | None = Field(None, description="feature columns observed; None: all of them")
    symbols: tuple[str, ...] | None = Field(None, description="symbols traded; None: every symbol")
    signal_column: str = Field(
        "signal_ensemble", description="column of the signal frame traded by the 'signal' baseline (its sign)")
    net_arch: tuple[int, ...] = Field((64, 64), min_length=1)
    learning_rate: float = Field(3e-4, gt=0.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    seed: int = 0
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads while training and evaluating")
    confidence_bins: int = Field(
        21, ge=2, description="K: a policy whose actions spread over 1/K of the action range or less has confidence 1")
    random_seeds: int = Field(5, ge=1, description="seeds of the random-policy baseline (its metrics are averaged)")
    algo_kwargs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="extra constructor arguments per algorithm, e.g. {ppo: {n_steps: 512}}")

    @model_validator(mode="after")
    def _check(self) -> RLParams:
        if self.env.action_mode == "discrete" and "sac" in self.algos:
            raise ValueError("rl.algos: SAC needs a continuous action space; drop 'sac' or set rl.env.action_mode "
                             "to 'continuous'")
        unknown = [name for name in self.algo_kwargs if name not in ("ppo", "sac")]
        if unknown:
            raise ValueError(f"rl.algo_kwargs: unknown algorithm(s) {unknown}; choose from ['ppo', 'sac']")
        return self


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


# ----------------------------------------------------------------------------------------------- policies and rollouts


def rollout(policy: Policy, env: TradingEnv, *, options: dict[str, Any] | None = None,
            seed: int | None = None) -> pd.DataFrame:
    """Run one episode of ``policy``; one row per step (the decision bar), in time order.

    Columns: ``symbol``, ``timestamp`` (the decision bar t), ``fill_timestamp`` (bar t+1), ``action`` (as
    given), ``target_position``, ``position`` (held at bar t+1's close), ``fill_price``, ``cost``,
    ``net_return`` (simple return of the portfolio over the step, net of costs), ``reward``, ``value``.
    """
    observation, info = env.reset(seed=seed, options=options)
    rows = []
    done = False
    while not done:
        action = policy(observation, info)
        decision = info
        observation, reward, terminated, truncated, info = env.step(action)
        rows.append({
            "symbol": info["symbol"], "timestamp": decision["timestamp"], "fill_timestamp": info["timestamp"],
            "action": float(np.asarray(action, dtype=np.float64).reshape(-1)[0]),
            "target_position": info["target_position"], "position": info["position"],
            "fill_price": info["fill_price"], "cost": info["cost"], "net_return": info["net_return"],
            "reward": reward, "value": info["value"],
        })
        done = terminated or truncated
    return pd.DataFrame(rows)


def buy_and_hold_policy(env: TradingEnv) -> Policy:
    """Always fully long."""
    long_action = env.action_for(1.0)
    return lambda observation, info: long_action


def signal_policy(env: TradingEnv) -> Policy:
    """Trade the sign of the running series' ``signal`` at the decision bar (flat where NaN or 0).

    Long/short with shorting allowed, long/flat otherwise; discrete environments get the matching action.
    """
    def act(observation: np.ndarray, info: dict[str, Any]) -> Any:
        signal = env.current.signal
        if signal is None:
            raise DataError(f"signal_policy: series {env.current.symbol!r} carries no signal column")
        value = signal[info["bar"]]
        target = 0.0 if not np.isfinite(value) else float(np.sign(value))
        if not env.params.allow_short:
            target = max(target, 0.0)
        return env.action_for(target)
    return act


def random_policy(env: TradingEnv, seed: int) -> Policy:
    """Uniform random actions from the action space, seeded."""
    space = type(env.action_space)(**_space_kwargs(env.action_space), seed=seed)
    return lambda observation, info: space.sample()


def _space_kwargs(space: spaces.Space[Any]) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"n": int(space.n)}
    return {"low": space.low, "high": space.high, "shape": space.shape, "dtype": space.dtype}


# ----------------------------------------------------------------------------------------------- metrics


def performance(net_returns: np.ndarray, periods_per_year: float) -> dict[str, float | int | bool | None]:
    """Performance of per-period net simple returns, with a test of an edge.

    ``edge_tstat`` / ``edge_pvalue``: one-sided t-test of mean net return > 0 (periods treated as
    independent); ``claims_edge`` is ``edge_pvalue < 0.05``. NaN becomes None.
    """
    net = finite_values(net_returns)
    n = int(net.size)
    growth = np.cumprod(1.0 + net) if n else np.array([])
    total = float(np.log(growth[-1])) if n and growth[-1] > 0 else (-math.inf if n else math.nan)
    mean = float(net.mean()) if n else math.nan
    sharpe = sharpe_ratio(net, periods_per_year)
    tstat = mean_tstat(net)
    pvalue = float(stats.t.sf(tstat, df=n - 1)) if math.isfinite(tstat) else math.nan
    drawdown = max_drawdown(net)
    annual = annual_return(net, periods_per_year)

    def clean(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    return {"total_log_return": clean(total), "annual_return": clean(annual), "sharpe": clean(sharpe),
            "max_drawdown": clean(drawdown), "mean_return": clean(mean),
            "edge_tstat": clean(tstat), "edge_pvalue": clean(pvalue),
            "claims_edge": bool(np.isfinite(pvalue) and pvalue < EDGE_SIGNIFICANCE), "n_periods": n}


def _portfolio_returns(steps: pd.DataFrame) -> pd.Series:
    """Equal-weight combination of the symbols' step returns per decision timestamp."""
    return steps.groupby("timestamp", sort=True)["net_return"].mean()


def _policy_metrics(steps: pd.DataFrame, periods_per_year: float) -> dict[str, Any]:
    metrics = performance(_portfolio_returns(steps).to_numpy(), periods_per_year)
    metrics["turnover"] = float(steps.groupby("symbol")["target_position"].apply(
        lambda p: np.abs(np.diff(np.concatenate([[0.0], p.to_numpy()]))).mean()).mean())
    metrics["mean_position"] = float(steps["target_position"].mean())
    return metrics


# ----------------------------------------------------------------------------------------------- agents


@dataclass
class TrainedAgent:
    """A trained SB3 model with what it needs to act: the algorithm, the training scaler and the env rules."""

    algo: Literal["ppo", "sac"]
    model: Any
    scaler: FeatureScaler
    env_params: EnvParams
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """``model.zip`` (SB3's format) and ``agent.json`` (algorithm, scaler, env rules) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "model.zip")
        payload = {"algo": self.algo, "scaler": self.scaler.to_json(), "env": self.env_params.model_dump(),
                   "info": self.info}
        (folder / "agent.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return folder


def load_agent(folder: str | Path) -> TrainedAgent:
    """An agent saved by :meth:`TrainedAgent.save` (SB3 zips hold pickles: load only folders you trust)."""
    folder = Path(folder)
    payload = json.loads((folder / "agent.json").read_text())
    model_class = _algorithm(payload["algo"])
    model = model_class.load(folder / "model.zip", device="cpu")
    return TrainedAgent(payload["algo"], model, FeatureScaler.from_json(payload["scaler"]),
                        EnvParams.model_validate(payload["env"]), payload.get("info", {}))


def _algorithm(algo: str) -> Any:
    from stable_baselines3 import PPO, SAC

    classes = {"ppo": PPO, "sac": SAC}
    if algo not in classes:
        raise ValueError(f"unknown RL algorithm {algo!r}; choose from {sorted(classes)}")
    return classes[algo]


def _default_kwargs(algo: str, params: RLParams) -> dict[str, Any]:
    """Small, CPU-friendly defaults, scaled to short runs; ``params.algo_kwargs`` overrides them."""
    steps = params.total_timesteps
    if algo == "ppo":
        n_steps = int(min(1024, max(64, steps // 4)))
        return {"n_steps": n_steps, "batch_size": int(min(64, n_steps)), "n_epochs": 10, "ent_coef": 0.0}
    return {"learning_starts": int(min(1000, steps // 10)), "buffer_size": int(min(100_000, max(steps, 1000))),
            "batch_size": 128, "train_freq": 1, "gradient_steps": 1}


def train_agent(algo: Literal["ppo", "sac"], train_series: Sequence[MarketSeries], params: RLParams,
                *, scaler: FeatureScaler | None = None) -> TrainedAgent:
    """Train PPO or SAC on episodes drawn from ``train_series`` (the training slice), seeded, on the CPU.

    The feature scaler is fitted on ``train_series`` unless given. Sets ``torch.set_num_threads`` to
    ``params.torch_threads`` (process-wide: torch has no per-call setting).
    """
    import torch

    torch.set_num_threads(params.torch_threads)
    model_class = _algorithm(algo)
    if algo == "sac" and params.env.action_mode == "discrete":
        raise ValueError("train_agent: SAC needs a continuous action space (rl.env.action_mode: continuous)")
    scaler = scaler or FeatureScaler.fit(train_series)
    env = TradingEnv(train_series, params.env, scaler)
    env.reset(seed=params.seed)
    env.action_space.seed(params.seed)
    overrides = dict(params.algo_kwargs.get(algo, {}))
    policy_kwargs: dict[str, Any] = {"net_arch": list(params.net_arch)}
    if algo == "ppo" and params.env.action_mode == "continuous":
        # SB3's default std of 1 puts most Gaussian samples at the clipped ends of [-1, 1] (bang-bang
        # positions); starting at exp(-1) = 0.37 explores fractional positions. Overridable.
        policy_kwargs["log_std_init"] = -1.0
    policy_kwargs.update(overrides.pop("policy_kwargs", {}))
    kwargs = {**_default_kwargs(algo, params), **overrides}
    model = model_class(
        "MlpPolicy", env, learning_rate=params.learning_rate, gamma=params.gamma, seed=params.seed, device="cpu",
        policy_kwargs=policy_kwargs, verbose=0, **kwargs,
    )
    model.learn(total_timesteps=params.total_timesteps)
    log.info("rl: trained %s for %d steps on %d series", algo, params.total_timesteps, len(train_series))
    return TrainedAgent(algo, model, scaler, params.env, {"total_timesteps": params.total_timesteps,
                                                          "train_symbols": [s.symbol for s in train_series],
                                                          "policy_kwargs": policy_kwargs, **kwargs})


def agent_policy(agent: TrainedAgent) -> Policy:
    """The agent's deterministic action (the mean, or the most likely discrete action)."""
    def act(observation: np.ndarray, info: dict[str, Any]) -> Any:
        action, _ = agent.model.predict(observation, deterministic=True)
        return action
    return act


def action_confidence(model: Any, observations: np.ndarray, action_space: spaces.Space[Any],
                      bins: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Per observation: (confidence in [0, 1], entropy in nats) of the policy's action distribution.

    ``confidence = 1 - clip((H - H_floor) / log(K), 0, 1)``, the entropy ``H`` normalised between a
    distribution as narrow as one of ``K = bins`` equal slices of the action range (``H_floor =
    log(W / K)``, confidence 1) and the uniform distribution over the whole range of width ``W``
    (``H = log W``, confidence 0). ``H`` is the differential entropy of PPO's Gaussian (SB3's
    ``get_distribution(obs).entropy()``) or of SAC's tanh-squashed Gaussian (``H(u) + E[log |da/du|]``,
    by 32-point Gauss-Hermite quadrature; SB3 has no closed form for it). A discrete policy uses the
    Shannon entropy of its categorical with ``K`` = the number of actions and ``H_floor = 0``.
    """
    import torch
    from stable_baselines3 import SAC

    observations = np.asarray(observations, dtype=np.float32)
    if observations.ndim == 1:
        observations = observations[None, :]
    with torch.no_grad():
        obs_tensor, _ = model.policy.obs_to_tensor(observations)
        if isinstance(action_space, spaces.Discrete):
            entropy = model.policy.get_distribution(obs_tensor).entropy().cpu().numpy().astype(np.float64)
            k = int(action_space.n)
            return np.clip(1.0 - entropy / math.log(k), 0.0, 1.0), entropy
        if action_space.shape != (1,):
            raise ValueError(f"action_confidence: one-dimensional actions only, got shape {action_space.shape}")
        width = float(action_space.high[0] - action_space.low[0])
        if isinstance(model, SAC):
            mean, log_std, _ = model.actor.get_action_dist_params(obs_tensor)
            mu = mean.cpu().numpy().astype(np.float64).reshape(-1)
            log_sigma = log_std.cpu().numpy().astype(np.float64).reshape(-1)
            entropy = _squashed_gaussian_entropy(mu, log_sigma, half_width=width / 2.0)
        else:
            entropy = model.policy.get_distribution(obs_tensor).entropy().cpu().numpy().astype(np.float64)
    floor = math.log(width / bins)
    confidence = 1.0 - np.clip((entropy - floor) / math.log(bins), 0.0, 1.0)
    return confidence, entropy


def _squashed_gaussian_entropy(mu: np.ndarray, log_sigma: np.ndarray, half_width: float) -> np.ndarray:
    """Differential entropy of ``a = half_width * tanh(u) + c`` with ``u ~ N(mu, sigma^2)``.

    ``H(a) = H(u) + E[log(half_width * (1 - tanh(u)^2))]``; ``log(1 - tanh(u)^2) = 2 (log 2 - |u| -
    log1p(exp(-2|u|)))`` (stable for large |u|); the expectation by Gauss-Hermite quadrature.
    """
    nodes, weights = np.polynomial.hermite.hermgauss(32)
    sigma = np.exp(log_sigma)
    u = mu[:, None] + math.sqrt(2.0) * sigma[:, None] * nodes[None, :]
    magnitude = np.abs(u)
    log_derivative = 2.0 * (math.log(2.0) - magnitude - np.log1p(np.exp(-2.0 * magnitude)))
    expected = (log_derivative * weights[None, :]).sum(axis=1) / math.sqrt(math.pi)
    gaussian = 0.5 * math.log(2.0 * math.pi * math.e) + log_sigma
    return gaussian + math.log(half_width) + expected


@dataclass(frozen=True)
class AgentEvaluation:
    """Out-of-sample results of one policy: ``metrics`` (see :func:`performance`) and the per-bar ``steps``."""

    metrics: dict[str, Any]
    steps: pd.DataFrame


def evaluate_agent(agent: TrainedAgent, test_series: Sequence[MarketSeries], *, confidence_bins: int = 21,
                   periods_per_year: float | None = None) -> AgentEvaluation:
    """Trade ``agent`` deterministically through each test series from its first bar; metrics and per-bar actions.

    The environment uses the agent's training scaler and rules. Every step row carries the action's
    ``confidence`` and ``entropy`` (:func:`action_confidence`). ``periods_per_year`` is inferred from the
    timestamps when None.
    """
    env = TradingEnv(test_series, agent.env_params.model_copy(update={"episode_length": None}), agent.scaler)
    frames = []
    for index in range(len(test_series)):
        observations: list[np.ndarray] = []
        act = agent_policy(agent)

        def recording(observation: np.ndarray, info: dict[str, Any], act: Policy = act,
                      seen: list[np.ndarray] = observations) -> Any:
            seen.append(observation)
            return act(observation, info)

        steps = rollout(recording, env, options={"series": index, "start": 0})
        confidence, entropy = action_confidence(agent.model, np.vstack(observations), env.action_space,
                                                bins=confidence_bins)
        frames.append(steps.assign(confidence=confidence, entropy=entropy))
    steps = pd.concat(frames, ignore_index=True)
    ppy = periods_per_year or _periods_per_year(steps)
    return AgentEvaluation(_policy_metrics(steps, ppy), steps)


def _periods_per_year(steps: pd.DataFrame) -> float:
    return infer_periods_per_year(steps["timestamp"])


def _baseline_steps(name: str, test_series: Sequence[MarketSeries], env_params: EnvParams,
                    scaler: FeatureScaler, seed: int = 0) -> pd.DataFrame:
    env = TradingEnv(test_series, env_params.model_copy(update={"episode_length": None}), scaler)
    frames = []
    for index in range(len(test_series)):
        if name == "buy_and_hold":
            policy = buy_and_hold_policy(env)
        elif name == "signal":
            policy = signal_policy(env)
        elif name == "random":
            policy = random_policy(env, seed + index)
        else:
            raise ValueError(f"unknown baseline {name!r}")
        frames.append(rollout(policy, env, options={"series": index, "start": 0}))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------- the stage


def run_rl_stage(
    dataset: pd.DataFrame,
    bars: pd.DataFrame,
    splitter: Any,
    params: RLParams,
    *,
    signal: pd.DataFrame | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    reports_dir: str | Path = "reports/rl",
    models_dir: str | Path = "models/rl",
) -> dict[str, Any]:
    """Train the agents on walk-forward training slices, evaluate them and the baselines on the test slices.

    ``dataset``: the features stage's output (``timestamp``, ``symbol``, features, labels); ``bars``: the
    validated bars (their ``open``/``close`` set the fills); ``splitter``: the pipeline's
    :class:`alphaforge.splits.WalkForward`; ``signal``: a frame with ``timestamp``, ``symbol`` and
    ``params.signal_column``, a signal centred on 0 (e.g. ``signal_ensemble`` of the evaluate stage's
    ``candidate_frame``: the stacked ensemble's prediction, minus 0.5 for classifiers), or None to skip the
    ``signal`` baseline. Writes ``metrics.json`` and ``actions.parquet`` (per-bar actions with confidence) under
    ``reports_dir`` and each agent under ``models_dir/<algo>/fold_<k>/``. With ``experiment``, logs
    parameters, metrics and those files to a new MLflow run (nested under ``parent_run_id`` when given)
    through :mod:`alphaforge.tracking`. Returns the metrics.
    """
    import torch

    from alphaforge.features import feature_columns
    from alphaforge.io import write_json_atomic, write_parquet_atomic, write_text_atomic

    reports_dir, models_dir = Path(reports_dir), Path(models_dir)
    names = list(params.features) if params.features is not None else feature_columns(dataset)
    missing = [c for c in names if c not in dataset.columns]
    if missing:
        raise DataError(f"run_rl_stage: dataset lacks feature column(s) {missing} named in rl.features")
    price_columns = [c for c in ("open", "close") if c in bars.columns]
    if "close" not in price_columns:
        raise DataError("run_rl_stage: bars have no 'close' column; rule: canonical bars with closes")
    frame = dataset[["timestamp", "symbol", *names]].merge(
        bars[["timestamp", "symbol", *price_columns]], on=["timestamp", "symbol"], how="inner", validate="1:1")
    signal_column = None
    if signal is not None:
        if params.signal_column not in signal.columns:
            raise DataError(f"run_rl_stage: the signal frame has no column {params.signal_column!r} "
                            f"(rl.signal_column); columns: {list(signal.columns)}")
        frame = frame.merge(signal[["timestamp", "symbol", params.signal_column]].drop_duplicates(
            ["timestamp", "symbol"]), on=["timestamp", "symbol"], how="left")
        signal_column = params.signal_column
    if params.symbols is not None:
        absent = sorted(set(params.symbols) - set(frame["symbol"]))
        if absent:
            raise DataError(f"run_rl_stage: rl.symbols {absent} are not in the dataset")
        frame = frame[frame["symbol"].isin(params.symbols)]
    frame = frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    all_series = market_series(frame, names, signal_column=signal_column)
    folds = splitter.split(frame["timestamp"])
    chosen = folds[-1:] if params.folds == "last" else folds
    previous_threads = torch.get_num_threads()
    results: dict[str, list[pd.DataFrame]] = {}
    fold_metrics: list[dict[str, Any]] = []
    try:
        for fold in chosen:
            train = [s for s in (x.slice(fold.train_start, fold.train_end) for x in all_series) if s is not None]
            test = [s for s in (x.slice(fold.test_start, fold.test_end) for x in all_series) if s is not None]
            if not train or not test:
                raise DataError(f"run_rl_stage: fold {fold.number} has no symbol with two bars on both sides")
            scaler = FeatureScaler.fit(train)
            entry: dict[str, Any] = {"fold": fold.number, "train_start": str(fold.train_start),
                                     "train_end": str(fold.train_end), "test_start": str(fold.test_start),
                                     "test_end": str(fold.test_end)}
            for algo in params.algos:
                agent = train_agent(algo, train, params, scaler=scaler)
                agent.info.update({"fold": fold.number, "train_end": str(fold.train_end)})
                agent.save(models_dir / algo / f"fold_{fold.number}")
                evaluation = evaluate_agent(agent, test, confidence_bins=params.confidence_bins)
                results.setdefault(algo, []).append(evaluation.steps.assign(policy=algo, fold=fold.number))
                entry[algo] = evaluation.metrics
            baselines = ["buy_and_hold", *(["signal"] if signal_column else [])]
            for name in baselines:
                steps = _baseline_steps(name, test, params.env, scaler)
                results.setdefault(name, []).append(steps.assign(policy=name, fold=fold.number))
            for k in range(params.random_seeds):
                steps = _baseline_steps("random", test, params.env, scaler, seed=params.seed + 1000 * k)
                results.setdefault(f"random_{k}", []).append(steps.assign(policy="random", fold=fold.number))
            fold_metrics.append(entry)
    finally:
        torch.set_num_threads(previous_threads)
    combined = {name: pd.concat(frames, ignore_index=True) for name, frames in results.items()}
    ppy = _periods_per_year(next(iter(combined.values())))
    policies = {name: _policy_metrics(steps, ppy) for name, steps in combined.items() if not name.startswith("random")}
    random_runs = [_policy_metrics(steps, ppy) for name, steps in combined.items() if name.startswith("random")]
    policies["random"] = _mean_metrics(random_runs)
    for algo in params.algos:
        steps = combined[algo]
        policies[algo]["mean_confidence"] = float(steps["confidence"].mean())
    metrics = {
        "agents": {algo: policies[algo] for algo in params.algos},
        "baselines": {name: policies[name] for name in ("buy_and_hold", "signal", "random") if name in policies},
        "folds": fold_metrics,
        "fold_policy": params.folds,
        "periods_per_year": ppy,
        "execution": "next bar open" if "open" in price_columns else "next bar close",
        "cost_bps": params.env.cost_bps,
        "signal_column": signal_column,
        "n_symbols": len(all_series),
    }
    actions = pd.concat([combined[algo] for algo in params.algos], ignore_index=True)
    write_parquet_atomic(actions, reports_dir / "actions.parquet")
    write_json_atomic(metrics, reports_dir / "metrics.json")
    write_text_atomic(rl_leaderboard(metrics) + "\n", reports_dir / "leaderboard.txt")
    if experiment:
        _log_to_mlflow(experiment, parent_run_id, params, metrics, reports_dir, models_dir)
    log.info("rl: out-of-sample results\n%s", rl_leaderboard(metrics))
    return metrics


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of the numeric metrics of several runs (the random baseline's seeds)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]
        if key == "claims_edge":
            out[key] = float(np.mean([bool(r[key]) for r in runs]))
        elif values:
            out[key] = float(np.mean(values))
        else:
            out[key] = None
    out["n_seeds"] = len(runs)
    return out


def rl_leaderboard(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the agents and baselines (for the rl stage and the evaluate stage's report)."""
    lines = [f"RL agents vs baselines, out of sample ({metrics['execution']} fills, {metrics['cost_bps']} bps)",
             f"{'policy':16s} {'sharpe':>8s} {'ann_ret':>8s} {'max_dd':>8s} {'turnover':>9s} {'edge_p':>8s}"]

    def fmt(value: Any, width: int, spec: str) -> str:
        return f"{value:{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}s}"

    for group in ("agents", "baselines"):
        for name, row in metrics[group].items():
            lines.append(f"{name:16s} {fmt(row['sharpe'], 8, '.3f')} {fmt(row['annual_return'], 8, '.3f')} "
                         f"{fmt(row['max_drawdown'], 8, '.3f')} {fmt(row['turnover'], 9, '.4f')} "
                         f"{fmt(row['edge_pvalue'], 8, '.3f')}")
    return "\n".join(lines)


def _log_to_mlflow(experiment: str, parent_run_id: str | None, params: RLParams, metrics: dict[str, Any],
                   reports_dir: Path, models_dir: Path) -> None:
    from alphaforge import tracking

    tags = {"stage": "rl", "algos": ",".join(params.algos)}
    if parent_run_id:
        tags[tracking.PARENT_RUN_TAG] = parent_run_id
    with tracking.start_run(experiment, run_name="rl " + "+".join(params.algos), tags=tags) as run:
        run.log_params(params.model_dump(mode="json"))
        run.log_metrics({"oos": {**metrics["agents"], **metrics["baselines"]}})
        run.log_artifact(reports_dir, artifact_path="rl")
        run.log_artifact(models_dir, artifact_path="models/rl")
