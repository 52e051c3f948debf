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


# ------------------------------------------------------------------------------------------------
# Nested runs by explicit id (the tune stage: one parent run per study, one child run per trial).
#
# These go through ``MlflowClient`` rather than the fluent ``mlflow.start_run(nested=True,
# parent_run_id=...)``: trials finish in several worker processes, each with no active run of its
# own, and the fluent API keeps a per-process stack of active runs (and refuses a parent id that is
# not the run active in the process). A child is an ordinary run tagged ``mlflow.parentRunId``,
# which is all the fluent API does too; the MLflow UI nests it under the parent.
# ------------------------------------------------------------------------------------------------

PARENT_RUN_TAG = "mlflow.parentRunId"


def _client() -> Any:
    """A client on :func:`tracking_uri` (the local SQLite folder is created when needed)."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        state_dir().mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _log_batch(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    step_metrics: Mapping[str, Mapping[int, Any]] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Params, finite metrics (``step_metrics``: name -> {step: value}) and tags in batches MLflow accepts."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    param_items = [Param(k, str(v)[:6000]) for k, v in flatten(params or {}).items()]
    metric_items = [Metric(k, float(v), now, 0) for k, v in flatten(metrics or {}).items() if finite(v)]
    for name, by_step in (step_metrics or {}).items():
        metric_items += [Metric(name, float(v), now, int(step)) for step, v in by_step.items() if finite(v)]
    tag_items = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for start in range(0, len(param_items), 100):
        client.log_batch(run_id, params=param_items[start : start + 100])
    for start in range(0, len(metric_items), 1000):
        client.log_batch(run_id, metrics=metric_items[start : start + 1000])
    for start in range(0, len(tag_items), 100):
        client.log_batch(run_id, tags=tag_items[start : start + 100])


def create_parent_run(
    experiment: str,
    *,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Open a run that child runs attach to (left RUNNING until :func:`update_parent_run` ends it); its id."""
    experiment_id = _configure(experiment)
    client = _client()
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
    _log_batch(client, run.info.run_id, params=params)
    log.info("MLflow parent run %s (%s) in %s", run.info.run_id, run_name, tracking_uri())
    return run.info.run_id


def log_child_run(
    parent_run_id: str,
    *,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    step_metrics: Mapping[str, Mapping[int, Any]] | None = None,
    tags: Mapping[str, Any] | None = None,
    status: str = "FINISHED",
    start_time_ms: int | None = None,
    end_time_ms: int | None = None,
) -> str:
    """Record one finished piece of work as a run nested under ``parent_run_id``, in the parent's experiment.

    ``step_metrics`` maps a metric name to {step: value} (per-fold values, step = fold number);
    ``status`` is an MLflow run status (FINISHED, FAILED or KILLED). Returns the child's run id.
    """
    client = _client()
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        start_time=start_time_ms,
        run_name=run_name,
        tags={PARENT_RUN_TAG: parent_run_id, **{k: str(v) for k, v in (tags or {}).items()}},
    )
    _log_batch(client, run.info.run_id, params=params, metrics=metrics, step_metrics=step_metrics)
    client.set_terminated(run.info.run_id, status=status, end_time=end_time_ms)
    return run.info.run_id


def update_parent_run(
    run_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    step: int = 0,
    tags: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> None:
    """Add metrics (at ``step``) and tags to a parent run; with ``status``, mark it ended with that status.

    Params are immutable in MLflow, so results that change as a study grows (its best parameters)
    belong in tags or metrics, not params.
    """
    client = _client()
    _log_batch(client, run_id, step_metrics={k: {step: v} for k, v in flatten(metrics or {}).items()}, tags=tags)
    if status is not None:
        client.set_terminated(run_id, status=status)


def child_run_ids(parent_run_id: str) -> list[str]:
    """Ids of the runs nested under ``parent_run_id`` (oldest first)."""
    client = _client()
    parent = client.get_run(parent_run_id)
    ids: list[str] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"], page_token=token, max_results=1000,
        )
        ids += [run.info.run_id for run in page]
        token = page.token
        if not token:
            return ids
