"""The Airflow DAGs, driven from the project venv through the Airflow virtualenv (``make airflow-venv``).

* integrity: the DagBag imports with no errors; tags, owners, retries >= 2 with back-off, timeouts, the failure
  alert on every task; ``nightly_retrain``'s stage tasks are dvc.yaml's stages in its order, one chain;
* the run parameters: the Param schemas refuse bad values; ``prepare`` writes good ones into params.yaml keeping
  its comments, and takes back a previous run's values;
* the gate, the packaging and the reload against a real HTTP endpoint; drift_monitor's retrain decision;
* ``dag.test()`` of ``nightly_retrain`` in a temporary copy of the repository on a small real slice (the same
  slice as the DVC end-to-end test), against the session's real MLflow server: every stage runs, the decision is
  recorded, a second run of the same interval changes nothing, and corrupted data stops at validate;
* ``airflow standalone`` (``tools/airflow.sh``, what ``make airflow`` runs) with its metadata DB on this
  machine's PostgreSQL: it answers its health endpoint, a triggered run succeeds, and stopping it stops every
  process it started.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alphaforge.orchestration import apply_overrides, overrides_from_run, settings_document
from mlflow_server import _postgres_admin as _postgres
from test_pipeline_e2e import SMALL, _merge, copy_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VENV = Path(os.environ.get("ALPHAFORGE_AIRFLOW_VENV", REPO_ROOT / ".venv-airflow"))
DRIVER = Path(__file__).resolve().parents[1] / "airflow_driver.py"
SETTINGS = Path(".alphaforge/airflow/settings.json")
LOGICAL_DATE = "2023-01-03T02:00:00+00:00"  # after the bundled data ends: the interval keeps every bar


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    python = AIRFLOW_VENV / "bin/python"
    if not python.exists():
        message = f"{python} missing: run `make airflow-venv` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def airflow_env(home: Path, workspace: Path, **extra: str) -> dict[str, str]:
    """The environment of every Airflow process: its home, the workspace's dags, no examples, no outside config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(workspace / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False", ALPHAFORGE_WORKSPACE=str(workspace),
        ALPHAFORGE_HOME=str(workspace / ".alphaforge"), PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env.update(extra)
    return env


def drive(python: Path, command: str, *args: str, env: dict[str, str], timeout: float = 120) -> dict:
    """Run one airflow_driver.py command in the Airflow venv, in the workspace of ``env``; its JSON result."""
    done = subprocess.run([str(python), str(DRIVER), command, *args], cwd=env["ALPHAFORGE_WORKSPACE"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    marker = "AIRFLOW_DRIVER_RESULT "
    lines = [line for line in done.stdout.splitlines() if line.startswith(marker)]
    assert done.returncode == 0 and lines, f"driver {command} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return {**json.loads(lines[-1][len(marker):]), "output": done.stdout + done.stderr}


def export_settings(workspace: Path, params_path: Path | None = None) -> None:
    document = settings_document(params_path or workspace / "params.yaml")
    (workspace / SETTINGS).parent.mkdir(parents=True, exist_ok=True)
    (workspace / SETTINGS).write_text(json.dumps(document))


# --------------------------------------------------------------------------------------------- fast checks


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding only the settings export of this repository's params.yaml and dvc.yaml."""
    workspace = tmp_path_factory.mktemp("exported")
    export_settings(workspace, REPO_ROOT / "params.yaml")
    return workspace


def test_dagbag_imports_and_every_task_is_guarded(airflow_python: Path, exported: Path, tmp_path: Path) -> None:
    env = airflow_env(tmp_path / "home", exported, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"))
    bag = drive(airflow_python, "dagbag", str(REPO_ROOT / "dags"), env=env)
    assert bag["import_errors"] == {}
    assert set(bag["dags"]) == {"nightly_retrain", "drift_monitor"}
    for dag_id, dag in bag["dags"].items():
        assert dag["tags"] and "alphaforge" in dag["tags"], dag_id
        assert dag["owner"] not in ("", "airflow"), dag_id
        assert dag["max_active_runs"] == 1 and dag["dagrun_timeout_s"], dag_id
        for task in dag["tasks"]:
            where = f"{dag_id}.{task['task_id']}"
            assert task["owner"] == dag["owner"] and task["retries"] >= 2, where
            assert task["retry_exponential_backoff"] and task["execution_timeout_s"], where
            assert task["on_failure_callback"], where


def test_nightly_stage_tasks_follow_dvc_yaml(airflow_python: Path, exported: Path, tmp_path: Path) -> None:
    env = airflow_env(tmp_path / "home", exported, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"))
    dag = drive(airflow_python, "dagbag", str(REPO_ROOT / "dags"), env=env)["dags"]["nightly_retrain"]
    stages = [s for s in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"] if s != "rl"]
    tasks = {t["task_id"]: t for t in dag["tasks"]}
    order = [t["task_id"] for t in dag["tasks"]]
    assert [t for t in order if t in stages] == stages  # every stage, in dvc.yaml's order
    chain = ["prepare", *stages, "gate"]
    for before, after in zip(chain, chain[1:]):  # one strict chain: never two dvc commands at once
        assert tasks[after]["upstream"] == [before], after
    for stage in stages:
        assert f"dvc repro --single-item {stage}" in tasks[stage]["bash_command"]
    assert tasks["gate"]["downstream"] == ["package_bento", "skip_packaging"]
    assert tasks["reload_service"]["upstream"] == ["package_bento"]
    assert set(dag["params"]) == {"source", "start", "end", "families", "n_trials"}
    monitor = {t["task_id"]: t for t in drive(airflow_python, "dagbag", str(REPO_ROOT / "dags"),
                                              env=env)["dags"]["drift_monitor"]["tasks"]}
    assert monitor["trigger_retrain"]["upstream"] == ["blocking_alert"]
    assert monitor["blocking_alert"]["upstream"] == ["monitor"]


def test_run_params_are_validated_by_their_schema(airflow_python: Path, exported: Path, tmp_path: Path) -> None:
    env = airflow_env(tmp_path / "home", exported, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"))
    good = {"source": "bokeh_stocks", "start": "2010-01-01", "families": ["ridge"], "n_trials": 2}
    bad = [{"source": "nasdaq_live"}, {"families": ["not_a_family"]}, {"n_trials": 0}, {"families": []},
           {"start": "yesterday"}]
    results = drive(airflow_python, "params", str(REPO_ROOT / "dags"), *(json.dumps(c) for c in [good, *bad]),
                    env=env)["results"]
    resolved = results[0]["resolved"]
    assert {k: resolved[k] for k in good} == good and resolved["end"] is None
    for conf, refused in zip(bad, results[1:]):
        assert "error" in refused and "Invalid input for param" in refused["error"], conf


def test_prepare_writes_run_settings_keeping_comments_and_takes_them_back(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    shutil.copy(REPO_ROOT / "runtime.yaml", tmp_path / "runtime.yaml")
    state = tmp_path / "overrides.json"
    original = params.read_text()

    manual = overrides_from_run({"source": "bokeh_stocks", "families": ["ridge"], "n_trials": 2}, None)
    changed = apply_overrides(manual, params, state)
    document = yaml.safe_load(params.read_text())
    assert document["ingest"]["source"] == "bokeh_stocks" and document["train"]["families"] == ["ridge"]
    assert document["tune"]["families"] == ["ridge"] and document["tune"]["n_trials"] == 2
    assert set(changed) == {"ingest.source", "train.families", "tune.families", "tune.n_trials"}
    assert "# Every knob of the pipeline." in params.read_text() and "# skfolio_sp500 |" in params.read_text()

    nightly = overrides_from_run({}, "2024-03-01T02:00:00+00:00")  # the next scheduled run: manual choices undone
    apply_overrides(nightly, params, state)
    document = yaml.safe_load(params.read_text())
    assert document["ingest"]["source"] == yaml.safe_load(original)["ingest"]["source"]
    assert document["ingest"]["end"] == "2024-03-01T02:00:00"
    before = params.stat().st_mtime_ns
    assert apply_overrides(nightly, params, state) == {}  # the same interval again: the file is not rewritten
    assert params.stat().st_mtime_ns == before
    apply_overrides({}, params, state)
    assert params.read_text() == original

    with pytest.raises(ValueError, match="train.families"):
        apply_overrides({"train.families": ["not_a_family"]}, params, state)
    assert params.read_text() == original


class _ReloadHandler(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []
    authorizations: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).calls.append(self.path)
        type(self).authorizations.append(self.headers.get("Authorization"))
        body = json.dumps({"reloaded": True, "model_version": "7"}).encode()
        self.send_response(200 if self.path == "/admin/reload" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def reload_endpoint() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _ReloadHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _decision(workspace: Path, status: str, version: str) -> None:
    path = workspace / "reports/promotion/decision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status, "model_name": "alphaforge-signal", "version": version}))


def test_gate_packages_only_a_new_champion_then_the_service_reloads(
        airflow_python: Path, exported: Path, tmp_path: Path, reload_endpoint: str) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(exported, workspace)
    settings = json.loads((workspace / SETTINGS).read_text())
    settings["airflow"]["bento_build_command"] = "echo bento for the champion > bento-built.txt"
    (workspace / SETTINGS).write_text(json.dumps(settings))
    promoted, refused, packaged = (tmp_path / name for name in ("promoted", "refused", "packaged"))
    for folder, status in ((promoted, "promoted"), (refused, "refused"), (packaged, "promoted")):
        shutil.copytree(workspace, folder)
        _decision(folder, status, "3")
    (packaged / ".alphaforge/airflow/packaged.json").write_text(
        json.dumps({"model_name": "alphaforge-signal", "version": "3"}))
    env = airflow_env(tmp_path / "home", workspace, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"))
    choices = drive(airflow_python, "gate", str(REPO_ROOT / "dags"), str(promoted), str(refused), str(packaged),
                    env=env)["choices"]
    assert choices == {str(promoted): "package_bento", str(refused): "skip_packaging",
                       str(packaged): "skip_packaging"}

    _ReloadHandler.calls.clear()
    _ReloadHandler.authorizations.clear()
    env = airflow_env(tmp_path / "home", promoted, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
                      ALPHAFORGE_SERVICE_URL=reload_endpoint, ALPHAFORGE_ADMIN_TOKEN="dag-token")
    result = drive(airflow_python, "package_and_reload", str(REPO_ROOT / "dags"), env=env)
    assert (promoted / "bento-built.txt").read_text().strip() == "bento for the champion"
    assert json.loads((promoted / ".alphaforge/airflow/packaged.json").read_text())["version"] == "3"
    assert _ReloadHandler.calls == ["/admin/reload"] and result["reload"]["reloaded"] is True
    assert _ReloadHandler.authorizations == ["Bearer dag-token"]  # a service beyond loopback requires it
    again = drive(airflow_python, "gate", str(REPO_ROOT / "dags"), str(promoted), env=env)["choices"]
    assert again == {str(promoted): "skip_packaging"}  # packaged once per promoted version


def test_drift_monitor_retrains_only_on_served_traffic_with_a_blocking_alert(
        airflow_python: Path, exported: Path, tmp_path: Path) -> None:
    quiet, calm, drifted = (tmp_path / name for name in ("quiet", "calm", "drifted"))
    for folder, blocking in ((quiet, None), (calm, False), (drifted, True)):
        shutil.copytree(exported, folder)
        if blocking is None:
            continue  # the service has logged nothing yet
        (folder / "logs/requests").mkdir(parents=True)
        (folder / "logs/requests/2026-11-23.sqlite").write_bytes(b"")
        (folder / "reports/monitor").mkdir(parents=True)
        (folder / "reports/monitor/alert.json").write_text(json.dumps(
            {"blocking": blocking, "detail": "data_drift" if blocking else "no alert"}))
    env = airflow_env(tmp_path / "home", exported, AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"))
    checks = drive(airflow_python, "monitor_checks", str(REPO_ROOT / "dags"), str(quiet), str(calm), str(drifted),
                   env=env)["checks"]
    assert checks[str(quiet)] == {"has_traffic": False, "blocking_alert": None}
    assert checks[str(calm)] == {"has_traffic": True, "blocking_alert": False}
    assert checks[str(drifted)] == {"has_traffic": True, "blocking_alert": True}  # -> trigger_retrain runs


# --------------------------------------------------------------------------------------------- dag.test()

AIRFLOW_TEST_SETTINGS = {
    "airflow": {"start_date": "2022-01-01", "retry_delay_seconds": 1, "max_retry_delay_seconds": 2, "schedule": None, "monitor_schedule": None,
                "bento_build_command": "alphaforge serve build"},
}


def _registry(uri: str, name: str) -> tuple[list[str], dict[str, str]]:
    """Versions and aliases of ``name`` on the tracking server at ``uri``."""
    from alphaforge import tracking

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        return [v.version for v in tracking.list_model_versions(name)], tracking.get_model_aliases(name)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def _alert_lines(workspace: Path) -> list[dict]:
    path = workspace / "logs/alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def airflow_workspace(repo_root: Path, tmp_path_factory: pytest.TempPathFactory, airflow_python: Path,
                      mlflow_server) -> dict:
    """A copy of the repository on the small slice, its DAG settings exported, an Airflow home with a migrated DB."""
    workspace = copy_repo(repo_root, tmp_path_factory.mktemp("airflow_repo"))
    model_name = f"alphaforge-airflow-{uuid.uuid4().hex[:8]}"
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    small = _merge(SMALL, {**AIRFLOW_TEST_SETTINGS, "promote": {"model_name": model_name}})
    (workspace / "params.yaml").write_text(yaml.safe_dump(_merge(params, small), sort_keys=False))
    export_settings(workspace)
    home = workspace / ".alphaforge/airflow/home"
    env = airflow_env(home, workspace, MLFLOW_TRACKING_URI=mlflow_server.uri)
    migrated = subprocess.run([str(AIRFLOW_VENV / "bin/airflow"), "db", "migrate"], cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return {"workspace": workspace, "home": home, "env": env, "model_name": model_name, "mlflow": mlflow_server.uri}


@pytest.fixture(scope="module")
def first_run(airflow_python: Path, airflow_workspace: dict) -> dict:
    return drive(airflow_python, "test", str(airflow_workspace["workspace"] / "dags"), LOGICAL_DATE,
                 env=airflow_workspace["env"], timeout=900)


STAGES = ["ingest", "validate", "regimes", "features", "tune", "train", "stack", "evaluate", "drift", "promote", "risk"]


@pytest.mark.slow
@pytest.mark.e2e
def test_dag_test_runs_every_stage_and_records_the_decision(airflow_workspace: dict, first_run: dict) -> None:
    workspace = airflow_workspace["workspace"]
    assert first_run["state"] == "success", first_run
    for task in ["prepare", *STAGES, "gate"]:
        assert first_run["tasks"][task] == "success", (task, first_run["tasks"])
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_run["output"], stage  # dag.test() logs the tasks' output
    assert yaml.safe_load((workspace / "params.yaml").read_text())["ingest"]["end"] == "2023-01-03T02:00:00"
    decision = json.loads((workspace / "reports/promotion/decision.json").read_text())
    versions, aliases = _registry(airflow_workspace["mlflow"], airflow_workspace["model_name"])
    assert versions == [decision["version"]] and aliases.get("challenger") == decision["version"]
    if decision["status"] == "promoted":
        assert aliases.get("champion") == decision["version"]
        assert first_run["tasks"]["package_bento"] == "success"
        assert first_run["tasks"]["reload_service"] == "skipped"  # no service URL set
    else:  # bundled data: buy-and-hold usually wins, the gate refuses, nothing is packaged
        assert decision["status"] == "refused" and "champion" not in aliases
        assert decision["decision"]["reasons"]
        assert first_run["tasks"]["package_bento"] == "skipped"
        assert first_run["tasks"]["skip_packaging"] == "success"


@pytest.mark.slow
@pytest.mark.e2e
def test_second_run_of_the_same_interval_changes_nothing(airflow_python: Path, airflow_workspace: dict,
                                                         first_run: dict) -> None:
    workspace = airflow_workspace["workspace"]
    watched = ["params.yaml", "data/raw/bars.parquet", "reports/promotion/decision.json", "models/run.json",
               "reports/drift/alert.json"]
    before = {name: (workspace / name).stat().st_mtime_ns for name in watched}
    registry_before = _registry(airflow_workspace["mlflow"], airflow_workspace["model_name"])
    alerts_before = _alert_lines(workspace)

    second = drive(airflow_python, "test", str(workspace / "dags"), LOGICAL_DATE, env=airflow_workspace["env"],
                   timeout=600)
    assert second["state"] == "success", second
    assert {name: (workspace / name).stat().st_mtime_ns for name in watched} == before  # every stage skipped
    assert _registry(airflow_workspace["mlflow"], airflow_workspace["model_name"]) == registry_before
    assert _alert_lines(workspace) == alerts_before
    assert second["tasks"]["package_bento"] == "skipped"  # nothing newly promoted to package


# A market with a planted, learnable signal (reversion to a 50-bar average, which no naive baseline trades) and no
# regime switches: the trained ensemble's net edge over every baseline is significant and its Sharpe plausible, so
# the gate promotes it (on the bundled real slice above no edge survives the baselines and it refuses).
PLANTED = {"ingest": {"source": "synthetic", "start": None, "symbols": None,
                      "synthetic": {"n_symbols": 30, "n_bars": 1200, "signal_strength": 0.07, "signal_span": 50,
                                    "regime_switch_prob": 0.0, "turbulent_drift": 0.0, "seed": 3}}}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_model_that_beats_the_baselines_is_promoted_packaged_and_the_service_told(
        airflow_python: Path, airflow_workspace: dict, first_run: dict, tmp_path: Path) -> None:
    """The gate's other branch for real: promote -> champion alias -> `alphaforge serve build` -> reload."""
    workspace = airflow_workspace["workspace"]
    planted = tmp_path / "planted"
    keep_out = {".alphaforge", "data", "models", "reports", "logs"}
    shutil.copytree(workspace, planted, ignore=lambda folder, names: keep_out & set(names)
                    if Path(folder) == workspace else [])
    (planted / "data/external").mkdir(parents=True)  # a dvc dependency of ingest (tracked as an empty folder)
    model_name = f"alphaforge-airflow-planted-{uuid.uuid4().hex[:8]}"
    params = yaml.safe_load((planted / "params.yaml").read_text())
    params = _merge(params, {**PLANTED, "promote": {"model_name": model_name}})
    params["ingest"]["start"] = params["ingest"]["symbols"] = None
    (planted / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    export_settings(planted)
    home = planted / ".alphaforge/airflow/home"
    home.mkdir(parents=True)
    shutil.copy(airflow_workspace["home"] / "airflow.db", home / "airflow.db")  # the migrated metadata DB
    reloads: list[str] = []

    class Reload(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            reloads.append(self.path)
            body = b'{"changes": {}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Reload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bentoml_home = planted / ".alphaforge/bentoml"
    env = airflow_env(home, planted, MLFLOW_TRACKING_URI=airflow_workspace["mlflow"], BENTOML_HOME=str(bentoml_home),
                      BENTOML_DO_NOT_TRACK="true",
                      ALPHAFORGE_SERVICE_URL=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        run = drive(airflow_python, "test", str(planted / "dags"), LOGICAL_DATE, env=env, timeout=900)
    finally:
        server.shutdown()
    assert run["state"] == "success", run
    decision = json.loads((planted / "reports/promotion/decision.json").read_text())
    assert decision["status"] == "promoted", decision["decision"]["reasons"]
    versions, aliases = _registry(airflow_workspace["mlflow"], model_name)
    assert aliases.get("champion") == decision["version"] == versions[-1]
    assert run["tasks"]["package_bento"] == "success" and run["tasks"]["skip_packaging"] == "skipped"
    assert (bentoml_home / "bentos" / "alphaforge").is_dir()  # a real `alphaforge serve build`
    assert run["tasks"]["reload_service"] == "success" and reloads == ["/admin/reload"]


@pytest.mark.slow
@pytest.mark.e2e
def test_corrupted_data_stops_at_validate_and_alerts(airflow_python: Path, airflow_workspace: dict,
                                                      first_run: dict, tmp_path: Path) -> None:
    workspace = airflow_workspace["workspace"]
    bad = tmp_path / "bad"
    keep_out = {".alphaforge", "data", "models", "reports", "logs"}
    shutil.copytree(workspace, bad, ignore=lambda folder, names: keep_out & set(names) if Path(folder) == workspace
                    else [])
    (bad / "data/external").mkdir(parents=True)
    (bad / "data/external/bars.csv").write_text(
        "timestamp,symbol,open,high,low,close,volume\n"
        + "".join(f"2022-11-{d:02d},X,10,11,9,10.5,100\n" for d in range(1, 25))
        + "2022-11-28,X,10,9,11,10.5,100\n"  # high below low
    )
    params = yaml.safe_load((bad / "params.yaml").read_text())
    params["ingest"] = {"source": "file", "path": "data/external/bars.csv"}
    (bad / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    export_settings(bad)
    home = bad / ".alphaforge/airflow/home"
    home.mkdir(parents=True)
    shutil.copy(airflow_workspace["home"] / "airflow.db", home / "airflow.db")  # the migrated metadata DB
    env = airflow_env(home, bad, MLFLOW_TRACKING_URI=airflow_workspace["mlflow"])
    registry_before = _registry(airflow_workspace["mlflow"], airflow_workspace["model_name"])

    run = drive(airflow_python, "test", str(bad / "dags"), LOGICAL_DATE, env=env, timeout=600)
    assert run["state"] == "failed", run
    assert run["tasks"]["ingest"] == "success"
    assert run["tasks"]["validate"] == "failed"
    for task in ["features", "tune", "train", "stack", "evaluate", "drift", "promote", "gate", "package_bento"]:
        assert run["tasks"][task] == "upstream_failed", task
    assert "high_ge_open_close" in run["output"]
    assert not (bad / "data/validated/bars.parquet").exists() and not (bad / "reports/promotion").exists()
    assert _registry(airflow_workspace["mlflow"], airflow_workspace["model_name"]) == registry_before
    alerts = [a for a in _alert_lines(bad) if a["source"] == "airflow"]
    assert len(alerts) == 1 and alerts[0]["rule"] == "task_failed" and "task validate" in alerts[0]["detail"]
    assert alerts[0]["blocking"] is True


# --------------------------------------------------------------------------------------------- standalone


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _session_members(leader: int) -> set[int]:
    """Every live process in ``leader``'s session, and every descendant of ``leader``."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))  # ppid, session id
    members = {pid for pid, (_, sid) in table.items() if sid == leader} | ({leader} & set(table))
    grown = True
    while grown:
        extra = {pid for pid, (ppid, _) in table.items() if ppid in members} - members
        members |= extra
        grown = bool(extra)
    return members


def _api(base: str, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


@pytest.mark.slow
@pytest.mark.e2e
def test_standalone_on_postgres_answers_runs_a_triggered_dag_and_stops_everything(
        airflow_python: Path, airflow_workspace: dict, first_run: dict, tmp_path: Path) -> None:
    workspace = airflow_workspace["workspace"]
    database = f"alphaforge_airflow_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "test-password"}))
    env = airflow_env(
        home, workspace, MLFLOW_TRACKING_URI=airflow_workspace["mlflow"], AIRFLOW_VENV=str(AIRFLOW_VENV),
        PROJECT_BIN=str(Path(sys.executable).parent), AIRFLOW__API__PORT=str(port),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="5", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    script = workspace / "tools/airflow.sh"
    _postgres(f'CREATE DATABASE "{database}"')
    standalone = None
    started: set[int] = set()
    left: set[int] = set()
    stop = None
    try:
        setup = subprocess.run([str(script), "setup"], cwd=workspace, env=env, capture_output=True, text=True,
                               timeout=300)
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
        standalone = subprocess.Popen([str(script), "start"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        health = None
        while time.monotonic() < deadline:
            try:
                health = _api(base, "GET", "/api/v2/monitor/health")
                if health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy":
                    break
            except (OSError, KeyError, ValueError):
                pass
            assert standalone.poll() is None, standalone.stdout.read()[-4000:]
            time.sleep(1)
        assert health and health["metadatabase"]["status"] == "healthy", health
        leader = int((home / "standalone.pid").read_text())
        started = _session_members(leader)
        assert len(started) >= 4  # standalone, scheduler, dag-processor, api-server, triggerer, ...

        token = _api(base, "POST", "/auth/token", body={"username": "admin", "password": "test-password"})
        token = token["access_token"]
        while time.monotonic() < deadline + 120:  # the dag processor has to have parsed it
            try:
                _api(base, "PATCH", "/api/v2/dags/nightly_retrain", token, {"is_paused": False})
                break
            except urllib.error.HTTPError as err:
                assert err.code == 404, err
                time.sleep(2)
        run = _api(base, "POST", "/api/v2/dags/nightly_retrain/dagRuns", token, {"logical_date": None, "conf": {}})
        state = run["state"]
        deadline = time.monotonic() + 420
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(3)
            state = _api(base, "GET", f"/api/v2/dags/nightly_retrain/dagRuns/{run['dag_run_id']}", token)["state"]
        tasks = _api(base, "GET", f"/api/v2/dags/nightly_retrain/dagRuns/{run['dag_run_id']}/taskInstances", token)
        assert state == "success", {t["task_id"]: t["state"] for t in tasks["task_instances"]}
        started |= _session_members(leader)
    finally:
        if standalone is not None:
            stop = subprocess.run([str(script), "stop"], cwd=workspace, env=env, capture_output=True, text=True,
                                  timeout=120)
            standalone.wait(timeout=60)
            left = {pid for pid in started if Path(f"/proc/{pid}").exists()}
            for pid in left:  # only what this test started, and only if the script failed to
                os.kill(pid, signal.SIGKILL)
        _postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert stop is not None and stop.returncode == 0, stop and stop.stdout + stop.stderr
    assert left == set(), f"processes left running after stop: {left}"


# --------------------------------------------------------------------------------------------- compose stack


@pytest.mark.slow
def test_compose_stack_validates_with_docker_compose_config(tmp_path: Path) -> None:
    """`docker compose config` accepts docker/compose.yaml with .env.example (the stack is validated, not run)."""
    if shutil.which("docker") is None:
        if os.environ.get("CI"):
            pytest.fail("no docker CLI on this machine: CI validates docker/compose.yaml with it")
        pytest.skip("no docker CLI on this machine")
    env = {**os.environ, "ALPHAFORGE_HOME": str(tmp_path / "state")}  # its docker CLI config goes there
    done = subprocess.run([str(REPO_ROOT / "tools/compose-config.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    services = set(done.stdout.split())
    assert {"postgres", "redis", "mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker", "airflow-triggerer", "bento"} <= services
