"""Rollouts and the baseline policies (buy and hold, the stacked signal, random)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from gymnasium import spaces

from alphaforge.rl.env import TradingEnv
from alphaforge.rl.params import Policy
from alphaforge.schema import DataError


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
