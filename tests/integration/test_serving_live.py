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

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"
FAILS_ABOVE = 1e6  # the faulty champion raises on a row whose first feature is above this


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory: pytest.TempPathFactory):
    """v1 a good ensemble; v2 the same but its ridge member raises on a first feature > FAILS_ABOVE, tagged
    with v1 as its previous champion; champion -> v2."""
    from faulty_models import FaultyRegressor

    work = tmp_path_factory.mktemp("live")
    env = pytest.MonkeyPatch()  # undone when the module's tests are done
    env.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    env.setenv("ALPHAFORGE_HOME", str(work / "state"))
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
               "good_dir": good["model_dir"],
               "mlflow_uri": mlflow_server.uri, "work": work}
    finally:
        env.undo()


def _environment(registry: dict, folder: Path, **extra: str) -> dict[str, str]:
    """Explicit settings for a service run in ``folder``: its own params file, cache, log, state."""
    params = folder / "params.yaml"
    params.write_text(f"serving:\n  model_name: {registry['name']}\n  poll_seconds: 1.0\n  grpc_port: 0\n"
                      f"  cache_dir: {folder / 'cache'}\n  request_log_dir: {folder / 'requests'}\n")
    env = {"MLFLOW_TRACKING_URI": registry["mlflow_uri"], "ALPHAFORGE_PARAMS": str(params),
           "ALPHAFORGE_HOME": str(folder / "state"), "PYTHONPATH": str(TESTS), **extra}
    return env


def _start(registry: dict, folder: Path, *, host: str = "127.0.0.1", grpc: bool = False, **extra: str):
    folder.mkdir(parents=True, exist_ok=True)
    environment = _environment(registry, folder, **extra)
    saved = os.environ.pop("ALPHAFORGE_ADMIN_TOKEN", None)  # the service sees only what the test gives it
    try:
        return start_service(cwd=folder, project=REPO, env=environment, log_path=folder / "service.log",
                             grpc_port=None if grpc else 0, host=host)
    finally:
        if saved is not None:
            os.environ["ALPHAFORGE_ADMIN_TOKEN"] = saved


def test_a_model_fault_is_answered_by_the_previous_champion_and_counted(registry, tmp_path) -> None:
    from alphaforge.serving import api
    from alphaforge.serving.grpc_server import grpc_predict

    service = _start(registry, tmp_path / "loopback", grpc=True)
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
        over_grpc = grpc_predict(service.grpc_target, api.PredictRequest(**_request(poisoned, features)))
        assert over_grpc["variant"] == "fallback" and over_grpc["model_version"] == registry["good"]
        assert over_grpc["fallback_reason"].startswith(f"{registry['name']} v{registry['faulty']} (champion) raised")
        info = client.post("/model_info", json={}).json()["request_fallback"]
        assert info["model_faults"] == 3 and info["answered"] == 3
        metrics = client.get("/metrics").text
        assert "alphaforge_model_faults_total 3" in metrics
        assert 'alphaforge_requests_total{variant="fallback"} 3' in metrics
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


def _served_log(folder: Path, n_rows: int, timeout: float = 30.0):
    """The service's request log once it holds ``n_rows`` rows (the writer process flushes every half second)."""
    import time

    import pandas as pd

    from alphaforge.monitor import RequestLog

    deadline = time.monotonic() + timeout
    frame = None
    while time.monotonic() < deadline:
        frame = RequestLog(folder / "requests").read(pd.Timestamp("2000-01-01", tz="UTC"),
                                                     pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D"))
        if len(frame) >= n_rows:
            return frame
        time.sleep(0.3)
    raise AssertionError(f"the request log holds {0 if frame is None else len(frame)} rows, not {n_rows}")


def _bars_of_requests(registry: dict, features: list[str], n_bars: int):
    """The dataset's last ``n_bars`` complete bars that already have a next-bar return."""
    dataset = registry["dataset"].dropna(subset=[*features, "forward_return_1"])
    stamps = sorted(dataset["timestamp"].unique())[-n_bars:]
    return dataset[dataset["timestamp"].isin(stamps)], dataset


@pytest.mark.parametrize("mode", ["shadow", "split"])
def test_ab_report_on_traffic_the_service_served_in_shadow_and_split_mode(registry, tmp_path, mode: str) -> None:
    """The challenger alias (the good version: the same predictions as the champion) beside the champion, in
    shadow mode (both on every request) or a 50/50 split: the log holds both variants and the A/B report, on the
    dataset's next-bar returns, finds no evidence either way."""
    from alphaforge.ab import UNDECIDED, ABParams, ab_report

    tracking.set_model_alias(registry["name"], "challenger", registry["good"])
    extra = {"ALPHAFORGE_SHADOW": "true"} if mode == "shadow" else {"ALPHAFORGE_CHALLENGER_SHARE": "0.5"}
    folder = tmp_path / mode
    service = _start(registry, folder, **extra)
    try:
        client = httpx.Client(base_url=service.url, timeout=30)
        features = client.post("/model_info", json={}).json()["serving"]["features"]
        served, dataset = _bars_of_requests(registry, features, 30)
        answered = []
        for stamp, bar in served.groupby("timestamp"):
            halves = [bar] if mode == "shadow" else [bar.iloc[: len(bar) // 2], bar.iloc[len(bar) // 2:]]
            for i, part in enumerate(halves):
                answer = client.post("/predict", json=_request(part, features, request_id=f"{stamp.value}-{i}"))
                assert answer.status_code == 200, answer.text
                answered.append(answer.json()["variant"])
        if mode == "split":
            assert {"champion", "challenger"} == set(answered)
            expected_rows = len(served)
        else:
            assert set(answered) == {"champion"}
            expected_rows = 2 * len(served)
        log = _served_log(folder, expected_rows)
        assert set(log["variant"]) == {"champion", "challenger"}
    finally:
        service.stop()
    report = ab_report(log, dataset[["timestamp", "symbol", "forward_return_1"]], ABParams(min_bars=5),
                       cost_bps=5.0)
    assert report["pairing"] == ("same requests" if mode == "shadow" else "same bars")
    assert report["compared_bars"] == 30 if mode == "shadow" else 0 < report["compared_bars"] < 30
    assert report["verdict"] == UNDECIDED
    assert report["variants"]["challenger"]["model_versions"] == [registry["good"]]


def test_online_hedge_weights_move_with_outcomes_survive_a_restart_and_equal_the_offline_replay(registry,
                                                                                               tmp_path) -> None:
    """serving.online_weights: the good version (it ships a hedge_seed) served under its own alias; realised
    returns of 12 bars posted to /admin/outcomes move the weights, the predictions use them, a restarted service
    continues from Redis, and the same outcomes replayed offline from the seed give the same weights."""
    import json

    import numpy as np
    import pandas as pd
    import redis

    from alphaforge.ensemble import HedgeEnsemble
    from alphaforge.serving.model import load_served_model, model_artifacts

    tracking.set_model_alias(registry["name"], "online", registry["good"])
    prefix = f"alphaforge-test:hedge:{uuid.uuid4().hex[:8]}:"
    extra = {"ALPHAFORGE_MODEL_ALIAS": "online", "ALPHAFORGE_ONLINE_WEIGHTS": "true",
             "ALPHAFORGE_ONLINE_WEIGHTS_PREFIX": prefix, "ALPHAFORGE_REDIS_URL": REDIS_URL}
    key = f"{prefix}{registry['name']}:{registry['good']}"
    try:
        service = _start(registry, tmp_path / "first", **extra)
        try:
            client = httpx.Client(base_url=service.url, timeout=30)
            serving = client.post("/model_info", json={}).json()["serving"]
            assert serving["online_weights"]["source"] == "seed"
            features = serving["features"]
            served, dataset = _bars_of_requests(registry, features, 13)
            # the seed already holds the out-of-sample history's outcomes: these bars come after it (the same
            # feature rows, moved past the dataset's end)
            served = served.assign(timestamp=served["timestamp"] + (dataset["timestamp"].max()
                                                                    - served["timestamp"].min() + pd.Timedelta("1D")))
            history, latest = served[served["timestamp"] < served["timestamp"].max()], \
                served[served["timestamp"] == served["timestamp"].max()]
            rows = _request(history, features)["rows"]
            for row, realised in zip(rows, history["forward_return_1"], strict=True):
                row["realised"] = float(realised)
            moved = client.post("/admin/outcomes", json={"rows": rows})
            assert moved.status_code == 200, moved.text
            moved = moved.json()
            assert moved["applied_steps"] == 12 and moved["model_version"] == registry["good"]
            again = client.post("/admin/outcomes", json={"rows": rows[:3]}).json()  # a retried delivery
            assert again["applied_steps"] == 0 and again["weights"] == moved["weights"]
            answer = client.post("/predict", json=_request(latest, features)).json()
        finally:
            service.stop()
        service = _start(registry, tmp_path / "second", **extra)
        try:
            client = httpx.Client(base_url=service.url, timeout=30)
            restarted = client.post("/model_info", json={}).json()["serving"]["online_weights"]
        finally:
            service.stop()
        assert restarted["source"] == "store" and restarted["weights"] == moved["weights"]
        assert restarted["n_updates"] == moved["n_updates"] and restarted["updated_at"] == moved["updated_at"]

        local = load_served_model(registry["good_dir"], name=registry["name"], version=registry["good"])
        hedge = HedgeEnsemble.from_dict(json.loads(Path(model_artifacts(local.source_dir)["hedge_seed"]).read_text()))
        assert moved["n_updates"] == hedge.n_updates + 12
        for stamp, bar in history.groupby("timestamp"):
            x = bar[local.features].to_numpy(dtype=float)
            hedge.update(dict(zip(local.families, local.family_predictions(x).T, strict=True)),
                         bar["forward_return_1"].to_numpy(), timestamp=stamp)
        assert hedge.weights() == moved["weights"]
        weights = np.array([moved["weights"][f] for f in local.families])
        expected = local.family_predictions(latest[local.features].to_numpy(dtype=float)) @ weights
        np.testing.assert_allclose([p["prediction"] for p in answer["predictions"]], expected, rtol=1e-9)
    finally:
        redis.Redis.from_url(REDIS_URL).delete(key)  # only the key this test's services wrote
