"""What both alphaforge DAGs share: where the workspace is, its exported settings, and the failure alert.

Standard library and Airflow only. Listed in ``.airflowignore``: a helper module, not a DAG file.

The settings are the JSON that ``python -m alphaforge.orchestration export`` (``make airflow-setup``, and the
first task of every ``nightly_retrain`` run) writes from params.yaml and dvc.yaml; reading it costs nothing at
parse time and the DAG files never import yaml or alphaforge.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

WORKSPACE_ENV = "ALPHAFORGE_WORKSPACE"
SERVICE_URL_ENV = "ALPHAFORGE_SERVICE_URL"
SETTINGS_RELATIVE = Path(".alphaforge/airflow/settings.json")
TAGS = ["alphaforge", "mlops"]


def workspace() -> Path:
    """The checkout the stages run in: ``ALPHAFORGE_WORKSPACE``, else the folder above ``dags/``."""
    configured = os.environ.get(WORKSPACE_ENV)
    return Path(configured).resolve() if configured else Path(__file__).resolve().parents[1]


def load_settings() -> dict[str, Any]:
    """The exported settings; a missing file is an import error that says how to make it."""
    path = workspace() / SETTINGS_RELATIVE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `make airflow-setup` (or `python -m alphaforge.orchestration export` with the "
            f"project's python in {workspace()}) so the DAGs can read params.yaml's airflow: section")
    return json.loads(path.read_text())


def default_args(settings: dict[str, Any]) -> dict[str, Any]:
    """Retries with exponential back-off, a timeout and the failure alert on every task."""
    airflow = settings["airflow"]
    return {
        "owner": airflow["owner"],
        "retries": int(airflow["retries"]),
        "retry_delay": timedelta(seconds=float(airflow["retry_delay_seconds"])),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=float(airflow["max_retry_delay_seconds"])),
        "execution_timeout": timedelta(minutes=float(airflow["stage_timeout_minutes"])),
        "on_failure_callback": alert_on_failure,
    }


def start_date(settings: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(settings["airflow"]["start_date"]).replace(tzinfo=timezone.utc)


def in_project_env(command: str) -> str:
    """``command`` with the project's virtualenv first on PATH (dvc runs ``python pipelines/...`` through it)."""
    bin_dir = load_settings()["venv_bin"]
    return f"export PATH={shlex.quote(bin_dir)}:\"$PATH\"; {command}"


def alert_on_failure(context: dict[str, Any]) -> None:
    """Append one alert to the drift stage's alerts log (same JSON-lines format) when a task has failed for good."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    task_id = getattr(ti, "task_id", "?")
    dag_id = getattr(ti, "dag_id", "?")
    run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", "?")
    detail = (f"airflow: task {task_id} of {dag_id} run {run_id} failed after {getattr(ti, 'try_number', '?')} "
              f"tries: {type(exception).__name__ if exception else 'error'}: {exception}")
    alert = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": "airflow",
        "rule": "task_failed",
        "blocking": True,  # the run stopped: nothing after this task was promoted or packaged
        "detail": detail[:2000],
        "report": getattr(ti, "log_url", None),
    }
    path = workspace() / load_settings()["alerts_path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(alert) + "\n")
