"""Where the follower sends matured champion outcomes: the service's ``/admin/outcomes`` or the weights directly."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

_CHUNK_ROWS = 2000  # outcome rows per /admin/outcomes request (whole bars)
_OUTCOME_RETRY_SECONDS = 5.0  # outcomes the sink refused are sent again no sooner than this


class OutcomeSink(Protocol):
    """Where matured champion outcomes go: rows of one or more bars, one Hedge step per bar."""

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]: ...


def _stamp(us: int) -> pd.Timestamp:
    return pd.Timestamp(int(us) * 1000, tz="UTC")


class ServiceOutcomes:
    """POST to the service's ``/admin/outcomes`` (the service owns the weights: its memory and Redis move together).

    ``token``: the service's ``ALPHAFORGE_ADMIN_TOKEN`` (needed when it listens beyond loopback)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_seconds: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_seconds = timeout_seconds

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]:
        rows = [{"symbol": s, "timestamp": _stamp(t).isoformat(), "features": dict(f), "realised": float(r)}
                for t, s, f, r in zip(timestamps_us, symbols, features, realised, strict=True)]
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        request = urllib.request.Request(f"{self.url}/admin/outcomes", data=json.dumps({"rows": rows}).encode(),
                                         method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{self.url}/admin/outcomes answered {err.code}: {err.read()[:500]!r}") from err


class DirectOutcomes:
    """The same update as ``/admin/outcomes`` in this process: the families' predictions of the logged features,
    then :meth:`OnlineWeights.update` (its state in Redis). For a follower that loads the model itself."""

    def __init__(self, online: Any, family_predictions: Callable[[np.ndarray], np.ndarray],
                 features: Sequence[str]) -> None:
        self.online = online
        self.family_predictions = family_predictions
        self.features = list(features)

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]:
        x = np.array([[row.get(name, math.nan) for name in self.features] for row in features], dtype=np.float64)
        stamps = pd.DatetimeIndex([_stamp(t) for t in timestamps_us])
        applied = self.online.update(stamps, self.family_predictions(x), np.asarray(realised, dtype=np.float64))
        return {"applied_steps": applied, **self.online.info()}
