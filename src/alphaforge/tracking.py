"""The one module that talks to MLflow.

The store is ``MLFLOW_TRACKING_URI`` when set (a server, say), otherwise a SQLite
file under the repository's state folder ``.alphaforge/`` with artifacts beside it.
Stages that belong to one pipeline run share one MLflow run: the train stage opens
it and records its id in a file; the evaluate stage reopens it by that id.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------------------
# The ensemble: one pyfunc logged into the pipeline's run, optionally registered as a new version.
# ------------------------------------------------------------------------------------------------


def log_ensemble_model(
    *,
    artifacts: Mapping[str, str],
    python_model: Any,
    signature: Any,
    input_example: Any,
    pip_requirements: list[str],
    code_paths: list[str] | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    name: str = "ensemble",
    registered_model_name: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Log a pyfunc model (the ensemble) into a run and, given a name, register it as a new model version.

    The run is ``run_id`` (reopened, in ``experiment``), else the active run, else a new run in
    ``experiment``. ``pip_requirements`` is passed as given (MLflow's inferred list drops local
    versions such as torch's ``+cpu``). ``metrics`` (nested, flattened to ``a.b`` names) go to the
    same run. Returns ``model_uri`` (``models:/<model id>``), ``run_id``, ``registered_model_name``
    and ``registered_model_version`` (None when not registered).
    """
    import mlflow

    def log_into(run: Run) -> dict[str, Any]:
        mlflow.set_registry_uri(tracking_uri())
        info = mlflow.pyfunc.log_model(
            name=name, python_model=python_model, artifacts=dict(artifacts), signature=signature,
            input_example=input_example, pip_requirements=list(pip_requirements), code_paths=code_paths,
            registered_model_name=registered_model_name,
        )
        if metrics:
            run.log_metrics(metrics)
        version = getattr(info, "registered_model_version", None)
        log.info("MLflow: logged %s as %s%s", name, info.model_uri,
                 f", registered {registered_model_name} version {version}" if version is not None else "")
        return {"model_uri": info.model_uri, "run_id": run.run_id, "registered_model_name": registered_model_name,
                "registered_model_version": None if version is None else str(version)}

    active = mlflow.active_run() if run_id is None else None
    if active is not None:
        return log_into(Run(active.info.run_id))
    if experiment is None:
        raise ValueError("log_ensemble_model: no active run; pass run_id and/or experiment")
    with start_run(experiment, run_id=run_id, run_name=None if run_id else name) as run:
        return log_into(run)


# ------------------------------------------------------------------------------------------------
# Model Registry (the promote stage and `alphaforge registry ...`).
#
# Aliases, not stages: ``champion`` serves, ``challenger`` is the newest candidate. Everything the
# promotion logic needs is here as plain Python values (records, dicts, strings), so
# ``alphaforge.promotion`` never touches an MLflow type and stays testable on its own.
# ------------------------------------------------------------------------------------------------

HTTP_RETRY_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
HTTP_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_JITTER_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"


@dataclass(frozen=True)
class LoggedModelRef:
    """Where a logged model lives: ``model_uri`` (``models:/m-...``) and the run that logged it."""

    model_uri: str
    run_id: str


@dataclass(frozen=True)
class ModelVersionRecord:
    """One registered model version as plain values (``version`` is MLflow's string form, "1", "2", ...)."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    created_ms: int


def _registry_client() -> Any:
    """A client whose tracking *and* registry store are :func:`tracking_uri` (never a default registry)."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        state_dir().mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _record(version: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=version.name, version=str(version.version), run_id=version.run_id or None, source=version.source,
        tags=dict(version.tags or {}), created_ms=int(version.creation_timestamp or 0),
    )


def _error_code(err: BaseException) -> str | None:
    return getattr(err, "error_code", None)


@contextmanager
def fail_fast_http(max_retries: int = 1, timeout_seconds: int = 10) -> Iterator[None]:
    """Make MLflow's HTTP client give up on a dead tracking server in seconds, inside the block.

    MLflow's defaults (7 retries with exponential backoff, 120 s timeout) keep a client knocking on a
    stopped server for minutes. The client reads these environment variables on every request, so
    setting them for the block is enough. A value the user already exported wins. The environment is
    process-wide: do not run blocks with different settings in concurrent threads.
    """
    wanted = {
        HTTP_RETRY_ENV: str(max_retries), HTTP_TIMEOUT_ENV: str(timeout_seconds),
        HTTP_BACKOFF_ENV: "1", HTTP_JITTER_ENV: "0.5",
    }
    added = [name for name in wanted if name not in os.environ]
    for name in added:
        os.environ[name] = wanted[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def log_python_model(
    experiment: str,
    python_model: Any,
    *,
    pip_requirements: list[str],
    artifact_name: str = "model",
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> LoggedModelRef:
    """Log an ``mlflow.pyfunc.PythonModel`` in a new run (or into ``run_id``); where it landed.

    ``pip_requirements`` is required because MLflow's inferred list can be wrong (it drops torch's
    ``+cpu`` local version, for one).
    """
    import mlflow

    experiment_id = _configure(experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name) as active:
        if tags:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        info = mlflow.pyfunc.log_model(name=artifact_name, python_model=python_model,
                                       pip_requirements=list(pip_requirements))
        return LoggedModelRef(model_uri=info.model_uri, run_id=active.info.run_id)


def register_model_version(name: str, model_uri: str, *, tags: Mapping[str, Any] | None = None) -> ModelVersionRecord:
    """Register ``model_uri`` (``runs:/<run>/<path>``, ``models:/m-...``, a path...) as a new version of ``name``.

    The registered model is created on first use. Goes through ``mlflow.register_model``, which
    resolves ``runs:/`` URIs to the logged model behind them, against :func:`tracking_uri`.
    """
    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        state_dir().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    return _record(version)


def get_model_version(name: str, version: str) -> ModelVersionRecord:
    """One version of a registered model, with its tags."""
    return _record(_registry_client().get_model_version(name, str(version)))


def list_model_versions(name: str) -> list[ModelVersionRecord]:
    """Every version of ``name``, oldest first (empty when the model is not registered)."""
    client = _registry_client()
    versions: list[ModelVersionRecord] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        versions += [_record(v) for v in page]
        token = page.token
        if not token:
            return sorted(versions, key=lambda record: int(record.version))


def get_model_aliases(name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model is not registered yet.

    Read from the registered model rather than by alias: MLflow answers a missing alias with a generic
    INVALID_PARAMETER_VALUE, which cannot be told apart from a real error.
    """
    try:
        model = _registry_client().get_registered_model(name)
    except Exception as err:
        if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def get_registered_model_tags(name: str) -> dict[str, str] | None:
    """The tags on a registered model (not on its versions); None when no model of that name exists."""
    try:
        model = _registry_client().get_registered_model(name)
    except Exception as err:
        if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return dict(model.tags or {})


def set_model_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``: one registry write, atomic in the backend store."""
    _registry_client().set_registered_model_alias(name, alias, str(version))


def set_model_version_tags(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on one model version (values as strings)."""
    client = _registry_client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def set_registered_model_tags(name: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a registered model (values as strings)."""
    client = _registry_client()
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, str(value))


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on an existing run (in batches MLflow accepts), whether or not it has ended."""
    _log_batch(_registry_client(), run_id, tags=tags)


def create_registered_model_if_absent(name: str, *, tags: Mapping[str, Any] | None = None) -> bool:
    """Create an empty registered model; False when one of that name exists already.

    The backend store enforces unique names, so of several processes racing to create the same name
    exactly one gets True: the promote stage uses this as a mutex shared through the tracking server.
    """
    try:
        _registry_client().create_registered_model(name, tags={k: str(v) for k, v in (tags or {}).items()})
    except Exception as err:
        if _error_code(err) in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            return False
        raise
    return True


def delete_registered_model(name: str, *, missing_ok: bool = False) -> None:
    """Delete a registered model and all its versions (with ``missing_ok``, an absent one is no error)."""
    try:
        _registry_client().delete_registered_model(name)
    except Exception as err:
        if missing_ok and _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return
        raise


def load_pyfunc_model(model_uri: str) -> Any:
    """A logged or registered pyfunc model (``models:/NAME@champion``, ``runs:/...``) from the current store."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.pyfunc.load_model(model_uri)


def download_model_version(name: str, version: str, destination: str | Path) -> Path:
    """Download registered ``name`` version ``version`` (the MLflow model folder) into ``destination``; its path."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination),
                                                tracking_uri=uri)
    return Path(local)
