"""The RL stage's settings (:class:`EnvParams`, :class:`RLParams`), the policy type and shared constants."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("alphaforge.rl")


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


#: The constructor arguments of Stable-Baselines3 2.x's PPO and SAC that ``rl.algo_kwargs`` may set (checked at
#: load without importing torch; the policy, the environment and the seed are the stage's).
ALGO_KWARGS: dict[str, frozenset[str]] = {
    "ppo": frozenset({"learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                      "clip_range_vf", "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm", "use_sde",
                      "sde_sample_freq", "target_kl", "stats_window_size", "policy_kwargs", "verbose", "device"}),
    "sac": frozenset({"learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
                      "gradient_steps", "optimize_memory_usage", "n_steps", "ent_coef", "target_update_interval",
                      "target_entropy", "use_sde", "sde_sample_freq", "use_sde_at_warmup", "stats_window_size",
                      "policy_kwargs", "verbose", "device"}),
}


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
        for algo, kwargs in self.algo_kwargs.items():
            stray = sorted(set(kwargs) - ALGO_KWARGS[algo])
            if stray:
                raise ValueError(f"rl.algo_kwargs.{algo}: unknown argument(s) {stray}; {algo.upper()} takes "
                                 f"{sorted(ALGO_KWARGS[algo])}")
        return self
