"""The one module that talks to MLflow.

The store is ``MLFLOW_TRACKING_URI`` when set (a server, say), otherwise a SQLite
file under the repository's state folder ``.alphaforge/`` with artifacts beside it.
Stages that belong to one pipeline run share one MLflow run: the train stage opens
it and records its id in a file; the evaluate stage reopens it by that id.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_DIR_ENV = "ALPHAFORGE_HOME"


def state_dir() -> Path:
    """The ignored folder for local state (MLflow store, Airflow home): ``$ALPHAFORGE_HOME`` or ``./.alphaforge``."""
    return Path(os.environ.get(STATE_DIR_ENV, ".alphaforge")).resolve()


def tracking_uri() -> str:
    """Where runs go: ``MLFLOW_TRACKING_URI`` or the local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{state_dir() / 'mlflow.db'}"


def _configure(experiment: str) -> str:
    """Point MLflow at the store and return the experiment id (created with a local artifact root)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        state_dir().mkdir(parents=True, exist_ok=True)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (state_dir() / "mlartifacts").as_uri()
    return mlflow.create_experiment(experiment, artifact_location=artifact_location)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``a.b.c`` keys, the way MLflow's params table shows them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Run:
    """A handle on the active MLflow run that stages log through."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        items = {k: str(v)[:6000] for k, v in flatten(params).items()}
        keys = list(items)
        for start in range(0, len(keys), 100):
            mlflow.log_params({k: items[k] for k in keys[start : start + 100]})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        import mlflow

        finite = {
            k: float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if finite:
            mlflow.log_metrics(finite, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextmanager
def start_run(
    experiment: str,
    *,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Run]:
    """Open (or, given ``run_id``, reopen) a run; it ends FAILED if the block raises."""
    import mlflow

    experiment_id = _configure(experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name) as active:
        run = Run(active.info.run_id)
        if tags:
            run.set_tags(tags)
        log.info("MLflow run %s in %s", active.info.run_id, tracking_uri())
        yield run


def write_run_reference(path: str | Path, run_id: str, experiment: str) -> None:
    """Record which MLflow run a pipeline run logs to, for the later stages."""
    Path(path).write_text(json.dumps({"run_id": run_id, "experiment": experiment, "tracking_uri": tracking_uri()}))


def read_run_reference(path: str | Path) -> dict[str, str]:
    """The run reference written by the train stage."""
    return json.loads(Path(path).read_text())
