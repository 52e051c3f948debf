"""Online Hedge weights for a served ensemble, persisted in Redis so a restart continues where it stopped.

With ``serving.online_weights`` the service combines the ensemble's families with the weights of a
:class:`alphaforge.ensemble.HedgeEnsemble` instead of the stacked combiner's. The Hedge starts from the
``hedge_seed`` the stack stage ships with the model (its state after the out-of-sample history) and moves as
realised returns arrive (``POST /admin/outcomes``: rows with their features and realised return; the families'
predictions are recomputed from the features, one Hedge step per bar timestamp, in time order; a timestamp
already applied is skipped, so a retried delivery counts once).

After every step the state (the Hedge's own JSON, :meth:`HedgeEnsemble.to_dict`, plus when it was updated) is
written to one Redis key per model version (``{prefix}{name}:{version}``); a restarted service reads it back
and continues from exactly that state. Replaying the same outcomes offline from the seed with
:class:`HedgeEnsemble` gives the same weights (the test holds them equal).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd

from alphaforge.ensemble import HedgeEnsemble


class StateStore(Protocol):
    """Where the Hedge state lives: a JSON document per key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, state: Mapping[str, Any]) -> None: ...


class RedisState:
    """One Redis string per key, holding the state as JSON (a single SET: a reader sees the old or the new)."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(key)
        return None if raw is None else json.loads(raw)

    def set(self, key: str, state: Mapping[str, Any]) -> None:
        self.client.set(key, json.dumps(state, allow_nan=False))


class MemoryState:
    """An in-process dictionary (tests, or a service without Redis: the state does not survive a restart)."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.states.get(key)

    def set(self, key: str, state: Mapping[str, Any]) -> None:
        self.states[key] = json.loads(json.dumps(state, allow_nan=False))


class OnlineWeights:
    """A Hedge over the families of one model version, its state kept in ``store`` under ``key``."""

    def __init__(self, hedge: HedgeEnsemble, *, store: StateStore, key: str, source: str,
                 updated_at: str | None = None) -> None:
        self.hedge = hedge
        self.store = store
        self.key = key
        self.source = source  # "seed" (the shipped hedge_seed) or "store" (continued from a saved state)
        self.updated_at = updated_at
        self.skipped = 0  # outcomes of timestamps already applied (a retried delivery)
        self._lock = threading.Lock()
        self._weights = self._vector()

    @classmethod
    def open(cls, seed: Mapping[str, Any], *, store: StateStore, key: str) -> OnlineWeights:
        """The state saved under ``key`` if there is one (a restart), else the shipped seed."""
        saved = store.get(key)
        if saved is not None:
            hedge = HedgeEnsemble.from_dict(saved["hedge"])
            if hedge.families != list(seed["families"]):
                raise ValueError(f"online weights {key}: the saved state is over families {hedge.families}, the "
                                 f"model's seed over {list(seed['families'])}")
            return cls(hedge, store=store, key=key, source="store", updated_at=saved.get("updated_at"))
        return cls(HedgeEnsemble.from_dict(seed), store=store, key=key, source="seed")

    @property
    def families(self) -> list[str]:
        return self.hedge.families

    def _vector(self) -> np.ndarray:
        weights = self.hedge.weights()
        return np.array([weights[f] for f in self.hedge.families], dtype=np.float64)

    def vector(self) -> np.ndarray:
        """The weights in family order (read on every prediction: swapped in one assignment after a step)."""
        return self._weights

    def update(self, timestamps: pd.DatetimeIndex, family_predictions: np.ndarray, realised: np.ndarray) -> int:
        """One Hedge step per bar timestamp (oldest first) of rows x families predictions against realised
        returns; timestamps at or before the last applied are skipped. The state is saved after each step.
        The number of steps applied."""
        stamps = pd.DatetimeIndex(timestamps)
        stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
        applied = 0
        with self._lock:
            for stamp in sorted(set(stamps)):
                if self.hedge.last_timestamp is not None and stamp <= self.hedge.last_timestamp:
                    self.skipped += 1
                    continue
                rows = np.asarray(stamps == stamp)
                predictions = {f: family_predictions[rows, i] for i, f in enumerate(self.hedge.families)}
                self.hedge.update(predictions, realised[rows], timestamp=stamp)
                self.updated_at = datetime.now(UTC).isoformat()
                self.store.set(self.key, {"hedge": self.hedge.to_dict(), "updated_at": self.updated_at})
                self._weights = self._vector()
                applied += 1
        return applied

    def info(self) -> dict[str, Any]:
        report = self.hedge.report()
        return {"weights": report["weights"], "n_updates": report["n_updates"],
                "last_timestamp": report["last_timestamp"], "updated_at": self.updated_at, "regret": report["regret"],
                "key": self.key, "source": self.source, "skipped_outcomes": self.skipped}
