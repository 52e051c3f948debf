"""The retrain trigger: a DAG run through Airflow 3's REST API, and the cooldown kept across restarts."""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphaforge.io import write_json_atomic
from alphaforge.monitor import MonitorParams

_RETRY_SECONDS = 60.0  # a failed retrain trigger is retried no sooner than this


class AirflowTrigger:
    """Triggers a DAG run through Airflow 3's REST API: a JWT from ``POST /auth/token``, then
    ``POST /api/v2/dags/{dag_id}/dagRuns`` with ``logical_date`` null (a manual run now)."""

    def __init__(self, url: str, *, username: str, password: str, dag_id: str, timeout_seconds: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.dag_id = dag_id
        self.timeout_seconds = timeout_seconds

    @classmethod
    def from_settings(cls, params: MonitorParams, environ: Mapping[str, str] = os.environ) -> AirflowTrigger | None:
        """``monitor.airflow_url`` (``ALPHAFORGE_AIRFLOW_URL`` sets it, through alphaforge.config), with the secrets
        ``ALPHAFORGE_AIRFLOW_USER`` (default admin) and ``ALPHAFORGE_AIRFLOW_PASSWORD`` read here, never stored; None
        when no URL is set (alerts are recorded, nothing triggered)."""
        url = params.airflow_url
        if not url:
            return None
        password = environ.get("ALPHAFORGE_AIRFLOW_PASSWORD")
        if not password:
            raise ValueError(f"Airflow at {url} is set (monitor.airflow_url / ALPHAFORGE_AIRFLOW_URL) but "
                             "ALPHAFORGE_AIRFLOW_PASSWORD is not: export the password of the Airflow user "
                             "(ALPHAFORGE_AIRFLOW_USER, default admin)")
        return cls(url, username=environ.get("ALPHAFORGE_AIRFLOW_USER", "admin"), password=password,
                   dag_id=params.retrain_dag_id)

    def _post(self, path: str, body: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"Airflow {self.url}{path} answered {err.code}: {err.read()[:500]!r}") from err

    def __call__(self, reason: str) -> str:
        """Trigger one run; its dag_run_id."""
        token = self._post("/auth/token", {"username": self.username, "password": self.password})["access_token"]
        run = self._post(f"/api/v2/dags/{self.dag_id}/dagRuns", {"logical_date": None, "note": reason[:1000],
                                                                   "conf": {}}, token)
        return str(run["dag_run_id"])


class RetrainCooldown:
    """The last retrain trigger, kept in ``path`` (``retrain_state.json``) so a restarted follower respects it, and
    when the next may fire: ``cooldown_seconds`` after the last one, and no sooner than ``_RETRY_SECONDS`` after a
    failed try (a failure is recorded, not persisted)."""

    def __init__(self, path: Path, cooldown_seconds: float) -> None:
        self.path = path
        self.cooldown_seconds = cooldown_seconds
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.state.setdefault("triggers", 0)
        self._last_failure = -math.inf

    def due(self, now: float) -> bool:
        last = self.state.get("last_trigger_at")
        return (last is None or now - last >= self.cooldown_seconds) and now - self._last_failure >= _RETRY_SECONDS

    def failed(self, now: float, err: Exception) -> None:
        self._last_failure = now
        self.state["error"] = f"{type(err).__name__}: {err}"

    def succeeded(self, now: float, run_id: str, reason: str) -> None:
        self.state.update(last_trigger_at=now, dag_run_id=run_id, reason=reason, triggers=self.state["triggers"] + 1,
                          error=None)
        write_json_atomic(self.state, self.path)

    def summary(self) -> dict[str, Any]:
        """What ``live.json`` shows under ``retrain``: the last trigger, its run, the last error, the count."""
        return {**{k: self.state.get(k) for k in ("last_trigger_at", "dag_run_id", "error")},
                "triggers": self.state["triggers"]}
