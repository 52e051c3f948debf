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

import importlib
from typing import TYPE_CHECKING, Any

from alphaforge.rl.params import EDGE_SIGNIFICANCE, INITIAL_VALUE, EnvParams, Policy, RLParams

if TYPE_CHECKING:
    from alphaforge.rl.agents import TrainedAgent, action_confidence, agent_policy, load_agent, train_agent
    from alphaforge.rl.env import FeatureScaler, MarketSeries, TradingEnv, market_series
    from alphaforge.rl.evaluation import AgentEvaluation, evaluate_agent, performance
    from alphaforge.rl.policies import buy_and_hold_policy, random_policy, rollout, signal_policy
    from alphaforge.rl.stage import rl_leaderboard, run_rl_stage

# The settings above load without Gymnasium or Stable-Baselines3 (the params loader imports RLParams from
# here); everything else is imported from its module on first use.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("TrainedAgent", "action_confidence", "agent_policy", "load_agent", "train_agent"), "agents"),
    **dict.fromkeys(("FeatureScaler", "MarketSeries", "TradingEnv", "market_series"), "env"),
    **dict.fromkeys(("AgentEvaluation", "evaluate_agent", "performance"), "evaluation"),
    **dict.fromkeys(("buy_and_hold_policy", "random_policy", "rollout", "signal_policy"), "policies"),
    **dict.fromkeys(("rl_leaderboard", "run_rl_stage"), "stage"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'alphaforge.rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alphaforge.rl.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
