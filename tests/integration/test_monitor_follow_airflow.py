"""``alphaforge monitor --follow`` against a real ``airflow standalone`` (``tools/airflow.sh``, metadata DB on this
machine's PostgreSQL, as in test_airflow.py): a planted degradation in served traffic triggers ``nightly_retrain``
through the REST API exactly once, and a restarted follower respects the cooldown it persisted.

The DAG stays paused (DAGS_ARE_PAUSED_AT_CREATION), so the triggered run is created and queued but nothing runs:
the test is about the trigger, test_airflow.py runs the DAG itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path

import pytest
from live_market import ServedMarket
from mlflow_server import _postgres_admin as _postgres
from test_airflow import AIRFLOW_VENV, _api, _free_port, _session_members, airflow_env, airflow_python  # noqa: F401
from test_monitor_follow import Follower
from test_pipeline_e2e import copy_repo

from alphaforge.live_monitor import AirflowTrigger
from alphaforge.monitor import MonitorParams

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DAG = "nightly_retrain"


@pytest.fixture(scope="module")
def standalone(repo_root: Path, airflow_python: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A running standalone on a fresh PostgreSQL database; its base URL, login and start time in seconds."""
    workspace = copy_repo(repo_root, tmp_path_factory.mktemp("follow_airflow"))
    home = workspace / ".alphaforge/airflow/home"
    home.mkdir(parents=True)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "test-password"}))
    database = f"alphaforge_follow_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    port = _free_port()
    env = airflow_env(
        home, workspace, AIRFLOW_VENV=str(AIRFLOW_VENV), PROJECT_BIN=str(Path(sys.executable).parent),
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="5", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    script = workspace / "tools/airflow.sh"
    _postgres(f'CREATE DATABASE "{database}"')
    process, started, left = None, set(), set()
    try:
        began = time.monotonic()
        setup = subprocess.run([str(script), "setup"], cwd=workspace, env=env, capture_output=True, text=True,
                               timeout=300)
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
        migrated = time.monotonic()
        process = subprocess.Popen([str(script), "start"], cwd=workspace, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline, healthy = time.monotonic() + 300, False
        while time.monotonic() < deadline and not healthy:
            try:
                health = _api(base, "GET", "/api/v2/monitor/health")
                healthy = health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy"
            except (OSError, KeyError, ValueError):
                pass
            assert process.poll() is None, (home / "standalone.log").read_text()[-4000:]
            time.sleep(1)
        assert healthy, f"standalone not healthy in 300 s: {(home / 'standalone.log').read_text()[-4000:]}"
        token = _api(base, "POST", "/auth/token", body={"username": "admin", "password": "test-password"})
        token = token["access_token"]
        while time.monotonic() < deadline + 120:  # the dag processor has to have parsed it
            try:
                dag = _api(base, "GET", f"/api/v2/dags/{DAG}", token)
                break
            except urllib.error.HTTPError as err:
                assert err.code == 404, err
                time.sleep(2)
        assert dag["is_paused"], dag  # nothing runs: the triggered run stays queued
        leader = int((home / "standalone.pid").read_text())
        started = _session_members(leader)
        yield {"base": base, "token": token, "setup_seconds": migrated - began,
               "start_seconds": time.monotonic() - migrated}
        started |= _session_members(leader)
    finally:
        if process is not None:
            subprocess.run([str(script), "stop"], cwd=workspace, env=env, capture_output=True, timeout=120)
            process.wait(timeout=60)
            left = {pid for pid in started if Path(f"/proc/{pid}").exists()}
            for pid in left:  # only what this fixture started, and only if the script failed to stop it
                os.kill(pid, signal.SIGKILL)
        _postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert left == set(), f"processes left running after stop: {left}"


def _runs(standalone: dict) -> list[dict]:
    return _api(standalone["base"], "GET", f"/api/v2/dags/{DAG}/dagRuns", standalone["token"])["dag_runs"]


def test_a_planted_degradation_triggers_the_retrain_dag_once_through_the_rest_api(standalone, tmp_path) -> None:
    print(f"airflow standalone: setup (db migrate) {standalone['setup_seconds']:.0f} s, start to healthy with the "
          f"DAG parsed {standalone['start_seconds']:.0f} s")
    assert _runs(standalone) == []
    trigger = AirflowTrigger.from_settings(MonitorParams(airflow_url=standalone["base"]),  # settings as in production
                                           environ={"ALPHAFORGE_AIRFLOW_PASSWORD": "test-password"})
    market = ServedMarket(tmp_path, n_bars=60, degrade_from=40, seed=4)
    out = tmp_path / "live"
    follower = Follower(market, out, retrain=trigger)
    try:
        for t in range(40):
            market.write(t)
        follower.wait_for(lambda f: f["variants"].get("champion", {}).get("matured_rows") == 38 * 6)
        assert _runs(standalone) == []
        started = time.monotonic()
        for t in range(40, 60):
            market.write(t)
            time.sleep(0.05)
        follower.wait_for(lambda f: f["retrain"]["triggers"] == 1, timeout=30)
        seconds = time.monotonic() - started
        time.sleep(1.0)  # more polls while still degraded
    finally:
        follower.close()
    runs = _runs(standalone)
    figures = json.loads((out / "live.json").read_text())
    assert [r["dag_run_id"] for r in runs] == [figures["retrain"]["dag_run_id"]], runs
    assert runs[0]["run_type"] == "manual" and "live degradation" in (runs[0].get("note") or "")
    assert seconds < 10, seconds

    (out / "live.json").unlink()
    restarted = Follower(market, out, retrain=trigger)  # still degraded after the replay, inside the cooldown
    try:
        restarted.wait_for(lambda f: f["alert"]["blocking"], timeout=30)
        time.sleep(1.0)
    finally:
        restarted.close()
    assert len(_runs(standalone)) == 1
    market.close()
