"""Alerts: the alert record, appending them to a JSON-lines file, posting them to a webhook."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from alphaforge.drift.params import DriftParams
from alphaforge.errors import AlertDeliveryError

log = logging.getLogger("alphaforge.drift")


# --------------------------------------------------------------------------------------------- alerts


class Alert(BaseModel):
    """One rule that fired in one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    created_at: str
    source: Literal["pipeline", "monitor", "airflow"]  # airflow: a DAG task failed for good (dags/)
    rule: str
    blocking: bool
    detail: str
    report: str | None = None


def append_alerts(alerts: Sequence[Alert], path: str | Path) -> None:
    """Append one JSON line per alert (folders made as needed); the file is a log, never rewritten."""
    if not alerts:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(a.model_dump(), allow_nan=False) + "\n" for a in alerts))


def post_webhook(url: str, payload: Mapping[str, Any], timeout_seconds: float) -> int:
    """POST ``payload`` as JSON; the HTTP status. Raises :class:`AlertDeliveryError` naming the URL on failure."""
    body = json.dumps(payload, allow_nan=False, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "alphaforge-drift"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return int(response.status)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise AlertDeliveryError(f"webhook {url}: the alert was not delivered ({err}); it is recorded in the "
                                 "alerts log") from err


def dispatch_alerts(alerts: Sequence[Alert], params: DriftParams, *, context: Mapping[str, Any]) -> int | None:
    """Append ``alerts`` to the alerts log and POST them (with ``context``) to the webhook when one is set.

    Returns the webhook's HTTP status (None: no webhook or nothing to send).
    """
    if not alerts:
        return None
    append_alerts(alerts, params.alerts_path)
    if params.webhook_url is None:
        return None
    payload = {"blocking": any(a.blocking for a in alerts), "alerts": [a.model_dump() for a in alerts], **context}
    status = post_webhook(params.webhook_url, payload, params.webhook_timeout_seconds)
    log.info("alerts: %d posted to %s (HTTP %d)", len(alerts), params.webhook_url, status)
    return status
