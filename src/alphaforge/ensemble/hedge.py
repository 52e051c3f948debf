"""Online weights: the Hedge (multiplicative weights) ensemble, its bounded loss, persistence and a replay over an OOF
frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import (
    STATE_FORMAT_VERSION,
    HedgeParams,
    _base_matrix,
    _require_columns,
    _utc,
    prediction_column,
)
from alphaforge.ensemble.combiners import _complete_rows
from alphaforge.io import write_json_atomic
from alphaforge.schema import DataError


# ------------------------------------------------------------------------------------------------ Hedge


def bounded_loss(
    prediction: np.ndarray, realised: np.ndarray, *, loss: Literal["sign", "squared"], scale: float, centre: float,
) -> np.ndarray:
    """Per-row loss in [0, 1]: ``sign``: (1 - sign(p - c) * sign(y - c)) / 2; ``squared``: min(((p - y) / scale)^2, 1).

    ``centre`` is 0 for returns and 0.5 for probabilities of an up move (realised 0/1).
    """
    if loss == "sign":
        return (1.0 - np.sign(prediction - centre) * np.sign(realised - centre)) / 2.0
    return np.minimum(((prediction - realised) / scale) ** 2, 1.0)


class HedgeEnsemble:
    """Exponential weights over the families, for serving (Freund & Schapire 1997, "Hedge").

    ``w_i`` is proportional to ``exp(-eta * L_i)``, ``L_i`` the family's cumulative loss. Each
    :meth:`update` takes the families' predictions for one timestamp and the realised outcomes,
    scores every family with a bounded loss in [0, 1] (the mean over the rows where every family
    and the outcome are known, so no family is rewarded for abstaining), and adds to ``L_i``.
    The ensemble's loss at that step is the mixture's expected loss ``sum_i w_i l_i`` under the
    weights in force before the update; :meth:`regret` is the ensemble's cumulative loss minus
    the best single family's. With a fixed ``eta`` the regret is at most ``ln N / eta + eta T / 8``;
    with ``learning_rate=None`` the anytime rate ``eta_t = sqrt(8 ln N / t)`` gives at most
    ``sqrt(2 T ln N) + sqrt(ln N / 8)`` (Cesa-Bianchi & Lugosi 2006, thm 2.2-2.3): sublinear in T.

    Labels arrive ``horizon`` bars after the prediction, so serving calls :meth:`update` for the
    timestamp whose outcome just became known; ``timestamp`` must increase from call to call,
    which also stops a restarted server from applying the same outcome twice. :meth:`save` and
    :meth:`load` persist the whole state as JSON (atomically), and a loaded ensemble continues
    exactly as the saved one would have.
    """

    def __init__(
        self,
        families: Sequence[str],
        *,
        learning_rate: float | None = None,
        loss: Literal["sign", "squared"] = "sign",
        loss_scale: float = 0.02,
        centre: float = 0.0,
    ) -> None:
        if len(families) < 1 or len(set(families)) != len(families):
            raise ValueError(f"HedgeEnsemble: families must be distinct and at least one, got {list(families)}")
        if learning_rate is not None and learning_rate <= 0:
            raise ValueError(f"HedgeEnsemble: learning_rate must be > 0 or None, got {learning_rate}")
        if loss not in ("sign", "squared"):
            raise ValueError(f"HedgeEnsemble: loss must be sign or squared, got {loss!r}")
        if loss_scale <= 0:
            raise ValueError(f"HedgeEnsemble: loss_scale must be > 0, got {loss_scale}")
        self.families = list(families)
        self.learning_rate = learning_rate
        self.loss = loss
        self.loss_scale = float(loss_scale)
        self.centre = float(centre)
        self.cumulative_loss = dict.fromkeys(self.families, 0.0)
        self.ensemble_loss = 0.0
        self.n_updates = 0
        self.last_timestamp: pd.Timestamp | None = None

    @classmethod
    def from_params(cls, families: Sequence[str], params: HedgeParams, *, centre: float = 0.0) -> HedgeEnsemble:
        return cls(families, learning_rate=params.learning_rate, loss=params.loss, loss_scale=params.loss_scale,
                   centre=centre)

    def eta(self) -> float:
        """The learning rate for the next update (fixed, or the anytime schedule at step t = n_updates + 1)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return math.sqrt(8.0 * math.log(max(len(self.families), 2)) / (self.n_updates + 1))

    def weights(self) -> dict[str, float]:
        """Current weights, summing to 1 (computed from the cumulative losses, shifted for stability)."""
        losses = np.array([self.cumulative_loss[f] for f in self.families])
        logits = -self.eta() * (losses - losses.min())
        raw = np.exp(logits)
        return {f: float(w) for f, w in zip(self.families, raw / raw.sum(), strict=True)}

    def combine(self, base_predictions: pd.DataFrame) -> np.ndarray:
        """The weighted average of the ``prediction_<family>`` columns; NaN where any is missing."""
        x = _base_matrix(base_predictions, self.families, "HedgeEnsemble.combine")
        weights = self.weights()
        out = np.full(len(x), np.nan)
        rows = _complete_rows(x)
        out[rows] = x[rows] @ np.array([weights[f] for f in self.families])
        return out

    def family_losses(self, predictions: pd.DataFrame | Mapping[str, Any], realised: Any) -> dict[str, float]:
        """Each family's mean bounded loss over the rows where every family and the outcome are known."""
        table = predictions if isinstance(predictions, pd.DataFrame) else pd.DataFrame(
            {prediction_column(f): np.atleast_1d(np.asarray(v, dtype=np.float64)) for f, v in predictions.items()})
        x = _base_matrix(table, self.families, "HedgeEnsemble.update")
        y = np.atleast_1d(np.asarray(realised, dtype=np.float64)).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"HedgeEnsemble.update: {len(x)} prediction rows but {len(y)} realised values")
        rows = _complete_rows(x, y)
        if not rows.any():
            raise DataError("HedgeEnsemble.update: no row has every family's prediction and a realised value")
        losses = bounded_loss(x[rows], y[rows, None], loss=self.loss, scale=self.loss_scale, centre=self.centre)
        return {f: float(v) for f, v in zip(self.families, losses.mean(axis=0), strict=True)}

    def update(
        self, predictions: pd.DataFrame | Mapping[str, Any], realised: Any, *, timestamp: Any = None,
    ) -> dict[str, float]:
        """Score one timestamp's predictions against its outcomes and move the weights; returns the new weights.

        ``predictions``: a frame with ``prediction_<family>`` columns, or family -> values; ``realised``:
        the outcomes, row for row. ``timestamp`` (optional) must be later than the last one applied.
        """
        if timestamp is not None:
            stamp = _utc(timestamp)
            if self.last_timestamp is not None and stamp <= self.last_timestamp:
                raise ValueError(f"HedgeEnsemble.update: timestamp {stamp} is not after the last update "
                                 f"{self.last_timestamp}; an outcome is applied once, in time order")
        return self.update_losses(self.family_losses(predictions, realised), timestamp=timestamp)

    def update_losses(self, losses: Mapping[str, float], *, timestamp: Any = None) -> dict[str, float]:
        """Apply one step of already-computed per-family losses (each in [0, 1])."""
        missing = [f for f in self.families if f not in losses]
        if missing:
            raise ValueError(f"HedgeEnsemble.update: no loss for family(ies) {missing}")
        bad = {f: losses[f] for f in self.families if not (0.0 <= float(losses[f]) <= 1.0)}
        if bad:
            raise ValueError(f"HedgeEnsemble.update: losses must lie in [0, 1], got {bad}")
        weights = self.weights()
        self.ensemble_loss += sum(weights[f] * float(losses[f]) for f in self.families)
        for family in self.families:
            self.cumulative_loss[family] += float(losses[family])
        self.n_updates += 1
        if timestamp is not None:
            self.last_timestamp = _utc(timestamp)
        return self.weights()

    def regret(self) -> float:
        """Cumulative loss of the ensemble minus that of the best single family in hindsight."""
        return self.ensemble_loss - min(self.cumulative_loss.values())

    def regret_bound(self) -> float:
        """The worst-case regret guarantee after ``n_updates`` steps (see the class docstring)."""
        n, t = max(len(self.families), 2), self.n_updates
        if self.learning_rate is not None:
            return math.log(n) / self.learning_rate + self.learning_rate * t / 8.0
        return math.sqrt(2.0 * t * math.log(n)) + math.sqrt(math.log(n) / 8.0)

    def report(self) -> dict[str, Any]:
        """Weights, regret, regret per step and its bound, the best family: what the stack stage writes."""
        best = min(self.cumulative_loss, key=self.cumulative_loss.__getitem__)
        return {
            "weights": self.weights(),
            "n_updates": self.n_updates,
            "ensemble_loss": self.ensemble_loss,
            "cumulative_loss": dict(self.cumulative_loss),
            "best_family": best,
            "regret": self.regret(),
            "regret_per_update": self.regret() / self.n_updates if self.n_updates else None,
            "regret_bound": self.regret_bound(),
            "last_timestamp": None if self.last_timestamp is None else str(self.last_timestamp),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION, "kind": "hedge", "families": self.families,
            "learning_rate": self.learning_rate, "loss": self.loss, "loss_scale": self.loss_scale,
            "centre": self.centre, "cumulative_loss": self.cumulative_loss, "ensemble_loss": self.ensemble_loss,
            "n_updates": self.n_updates,
            "last_timestamp": None if self.last_timestamp is None else self.last_timestamp.isoformat(),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> HedgeEnsemble:
        if payload.get("kind") != "hedge" or payload.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"Hedge state: expected kind 'hedge' format {STATE_FORMAT_VERSION}, got kind "
                             f"{payload.get('kind')!r} format {payload.get('format_version')!r}")
        hedge = cls(payload["families"], learning_rate=payload["learning_rate"], loss=payload["loss"],
                    loss_scale=payload["loss_scale"], centre=payload["centre"])
        hedge.cumulative_loss = {f: float(payload["cumulative_loss"][f]) for f in hedge.families}
        hedge.ensemble_loss = float(payload["ensemble_loss"])
        hedge.n_updates = int(payload["n_updates"])
        hedge.last_timestamp = None if payload["last_timestamp"] is None else _utc(payload["last_timestamp"])
        return hedge

    def save(self, path: str | Path) -> None:
        """Write the state atomically (temporary file + rename), so a crash mid-write keeps the previous state."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> HedgeEnsemble:
        """The ensemble saved at ``path``."""
        target = Path(path)
        if not target.is_file():
            raise FileNotFoundError(f"{target}: no Hedge state saved there")
        return cls.from_dict(json.loads(target.read_text()))

    @classmethod
    def resume(cls, state_path: str | Path, seed_path: str | Path) -> HedgeEnsemble:
        """The serving state at ``state_path`` when a server saved one, else the stack stage's seed."""
        return cls.load(state_path if Path(state_path).is_file() else seed_path)


def replay_hedge(hedge: HedgeEnsemble, oof: pd.DataFrame, target: str) -> HedgeEnsemble:
    """Feed the OOF predictions through ``hedge`` one timestamp at a time, in time order (the serving seed)."""
    _require_columns(oof, ["timestamp", target, *[prediction_column(f) for f in hedge.families]], "replay_hedge")
    columns = [prediction_column(f) for f in hedge.families]
    frame = oof.sort_values("timestamp", kind="stable")
    known = frame[columns + [target]].notna().all(axis=1)
    for stamp, group in frame[known].groupby("timestamp", sort=True):
        hedge.update(group[columns], group[target].to_numpy(), timestamp=stamp)
    return hedge
