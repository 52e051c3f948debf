"""Agents: train PPO or SAC (Stable-Baselines3) on the training series, save and load them, act, and measure how sure a
policy is of its action.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from alphaforge.rl.env import FeatureScaler, MarketSeries, TradingEnv
from alphaforge.rl.params import EnvParams, Policy, RLParams

log = logging.getLogger("alphaforge.rl")


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
