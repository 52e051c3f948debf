"""The live loop through the real service (``bentoml serve`` in a temporary folder, a real MLflow server):
a registered champion that raises on some inputs is rescued request by request by the previous champion, and
the admin route needs a bearer token once the service listens beyond loopback (it refuses to start there
without one). Requests go to 127.0.0.1 only, whatever address the service binds."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import httpx
import joblib
import pytest
from ensemble_fixtures import stack_and_register, train_small_ensemble
from test_serving import _register_broken, _request, _rows

from alphaforge import tracking
from alphaforge.serving.launcher import start_service

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAILS_ABOVE = 1e6  # the faulty champion raises on a row whose first feature is above this


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory: pytest.TempPathFactory):
    """v1 a good ensemble; v2 the same but its ridge member raises on a first feature > FAILS_ABOVE, tagged
    with v1 as its previous champion; champion -> v2."""
    from faulty_models import FaultyRegressor

    work = tmp_path_factory.mktemp("live")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "ALPHAFORGE_HOME")}
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    os.environ["ALPHAFORGE_HOME"] = str(work / "state")
    name = f"live-{uuid.uuid4().hex[:8]}"
    try:
        trained = train_small_ensemble(work / "trained", seed=5, n_symbols=6, n_bars=500)
        good = stack_and_register(trained, work / "stack1", model_name=name)
        faulty_dir = work / "trained-faulty"
        shutil.copytree(trained["trained_dir"], faulty_dir)
        (member,) = (faulty_dir / "ridge" / "final").rglob("model.joblib")
        joblib.dump(FaultyRegressor(joblib.load(member), FAILS_ABOVE), member)
        faulty = _register_broken(dict(trained, trained_dir=faulty_dir), work / "stack2", name, good)
        tracking.set_model_version_tags(name, faulty, {"alphaforge.previous_champion": good["version"]})
        tracking.set_model_alias(name, "champion", faulty)
        yield {"name": name, "good": good["version"], "faulty": faulty, "dataset": trained["dataset"],
               "mlflow_uri": mlflow_server.uri, "work": work}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _environment(registry: dict, folder: Path, **extra: str) -> dict[str, str]:
    """Explicit settings for a service run in ``folder``: its own params file, cache, log, state."""
    params = folder / "params.yaml"
    params.write_text(f"serving:\n  model_name: {registry['name']}\n  poll_seconds: 1.0\n  grpc_port: 0\n"
                      f"  cache_dir: {folder / 'cache'}\n  request_log_dir: {folder / 'requests'}\n")
    env = {"MLFLOW_TRACKING_URI": registry["mlflow_uri"], "ALPHAFORGE_PARAMS": str(params),
           "ALPHAFORGE_HOME": str(folder / "state"), "PYTHONPATH": str(TESTS), **extra}
    return env


def _start(registry: dict, folder: Path, *, host: str = "127.0.0.1", **extra: str):
    folder.mkdir(parents=True, exist_ok=True)
    environment = _environment(registry, folder, **extra)
    saved = os.environ.pop("ALPHAFORGE_ADMIN_TOKEN", None)  # the service sees only what the test gives it
    try:
        return start_service(cwd=folder, working_dir=REPO, env=environment, log_path=folder / "service.log",
                             grpc_port=0, host=host)
    finally:
        if saved is not None:
            os.environ["ALPHAFORGE_ADMIN_TOKEN"] = saved


def test_a_model_fault_is_answered_by_the_previous_champion_and_counted(registry, tmp_path) -> None:
    service = _start(registry, tmp_path / "loopback")
    try:
        client = httpx.Client(base_url=service.url, timeout=30)
        info = client.post("/model_info", json={}).json()
        assert info["serving_version"] == registry["faulty"]
        assert info["request_fallback"]["standby_version"] == registry["good"]
        features = info["serving"]["features"]
        frame = _rows(registry["dataset"], features)[:2]
        fine = client.post("/predict", json=_request(frame, features)).json()
        assert fine["variant"] == "champion" and fine["model_version"] == registry["faulty"]
        poisoned = frame.copy()
        poisoned.loc[0, features[0]] = 10 * FAILS_ABOVE
        for route in ("/predict", "/v1/predict"):
            answer = client.post(route, json=_request(poisoned, features))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["variant"] == "fallback" and body["model_version"] == registry["good"]
            assert f"v{registry['faulty']} (champion) raised ValueError" in body["fallback_reason"]
            assert "previous champion" in body["fallback_reason"]
            assert all(p["prediction"] is not None for p in body["predictions"])
        info = client.post("/model_info", json={}).json()["request_fallback"]
        assert info["model_faults"] == 2 and info["answered"] == 2
        metrics = client.get("/metrics").text
        assert "alphaforge_model_faults_total 2" in metrics
        assert 'alphaforge_requests_total{variant="fallback"} 2' in metrics
        # on loopback without a token the admin route stays open
        assert client.post("/admin/reload", json={}).status_code == 200
    finally:
        service.stop()


def test_beyond_loopback_the_admin_route_needs_the_token_and_the_service_refuses_to_start_without_one(
        registry, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="exited") as refused:
        _start(registry, tmp_path / "open", host="0.0.0.0")
    assert "ALPHAFORGE_ADMIN_TOKEN is not set" in str(refused.value)

    service = _start(registry, tmp_path / "guarded", host="0.0.0.0", ALPHAFORGE_ADMIN_TOKEN="s3cret-token")
    try:
        client = httpx.Client(base_url=service.url, timeout=30)  # 127.0.0.1, though the service binds 0.0.0.0
        assert client.post("/admin/reload", json={}).status_code == 401
        wrong = client.post("/admin/reload", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "ALPHAFORGE_ADMIN_TOKEN" in wrong.text
        right = client.post("/admin/reload", json={}, headers={"Authorization": "Bearer s3cret-token"})
        assert right.status_code == 200 and right.json()["serving_version"] == registry["faulty"]
        assert client.post("/model_info", json={}).status_code == 200  # reading stays open
    finally:
        service.stop()
