"""How a policy did: performance of net returns (via :mod:`alphaforge.metrics`) with a t-test of an edge, and an agent's
evaluation beside the baselines on the test series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from alphaforge.metrics import (
    annual_return,
    finite_values,
    infer_periods_per_year,
    max_drawdown,
    mean_tstat,
    sharpe_ratio,
)
from alphaforge.rl.agents import TrainedAgent, action_confidence, agent_policy
from alphaforge.rl.env import FeatureScaler, MarketSeries, TradingEnv
from alphaforge.rl.params import EDGE_SIGNIFICANCE, EnvParams, Policy
from alphaforge.rl.policies import buy_and_hold_policy, random_policy, rollout, signal_policy


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
