"""The BentoML service, started for real with ``bentoml serve`` against a real MLflow server on PostgreSQL.

Two ensembles trained on synthetic markets are registered (v1, v2) plus a version whose LightGBM member is
corrupt (v3). The service must predict what the pyfunc predicts, refuse every kind of bad input with a 4xx
(and gRPC with the matching status), answer the same over gRPC and HTTP, survive schemathesis without a 5xx,
fall back to the previous champion when the champion cannot load, switch versions under a steady request
stream without one failed request, and log what it served so that ``alphaforge monitor`` can read it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import grpc
import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from ensemble_fixtures import stack_and_register, train_small_ensemble
from isolation import subprocess_workdir

from alphaforge import tracking
from alphaforge.pyfunc import to_model_input
from alphaforge.serving import api
from alphaforge.serving.grpc_server import grpc_predict
from alphaforge.serving.host import ModelHost, ServingParams
from alphaforge.serving.launcher import start_service

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
FEATURE_PREFIX = f"alphaforge-test:{uuid.uuid4().hex[:8]}:"


def _rows(dataset: pd.DataFrame, features: list[str], n_per_symbol: int = 1) -> pd.DataFrame:
    complete = dataset.dropna(subset=features)
    return complete.groupby("symbol").tail(n_per_symbol)[["timestamp", "symbol", *features]].reset_index(drop=True)


def _request(frame: pd.DataFrame, features: list[str], **extra: object) -> dict:
    return {"rows": [{"symbol": r["symbol"], "timestamp": r["timestamp"].isoformat(),
                      "features": {f: float(r[f]) for f in features}} for r in frame.to_dict("records")], **extra}


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory: pytest.TempPathFactory):
    """v1 and v2 (different seeds), v3 with a corrupt LightGBM member; champion -> v1."""
    work = tmp_path_factory.mktemp("serving")
    env = pytest.MonkeyPatch()  # undone when the module's tests are done
    env.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    env.setenv("ALPHAFORGE_HOME", str(work / "state"))
    name = f"serving-{uuid.uuid4().hex[:8]}"
    try:
        first = train_small_ensemble(work / "trained1", seed=5)
        second = train_small_ensemble(work / "trained2", seed=6)
        v1 = stack_and_register(first, work / "stack1", model_name=name)
        v2 = stack_and_register(second, work / "stack2", model_name=name)
        broken_dir = work / "trained3"
        shutil.copytree(second["trained_dir"], broken_dir)
        for model_file in (broken_dir / "lightgbm" / "final").rglob("*.txt"):
            model_file.write_text("this is not a LightGBM model\n")
        broken = dict(second, trained_dir=broken_dir)
        v3 = _register_broken(broken, work / "stack3", name, v2)
        tracking.set_model_alias(name, "champion", v1["version"])
        yield {"name": name, "work": work, "versions": (v1["version"], v2["version"], v3),
               "dataset": first["dataset"], "model_dirs": {v1["version"]: v1["model_dir"],
                                                            v2["version"]: v2["model_dir"]},
               "bars": first["bars"], "mlflow_uri": mlflow_server.uri}
    finally:
        env.undo()


def _register_broken(trained: dict, work: Path, name: str, good: dict) -> str:
    """Log the ensemble with a corrupt member without loading it (no input example), as a new version."""
    from alphaforge.ensemble import combiner_from_dict
    from alphaforge.pyfunc import EnsembleModel, build_ensemble_artifacts, ensemble_pip_requirements

    meta = combiner_from_dict(json.loads((good["paths"].ensemble_dir / "meta.json").read_text()))
    artifacts = build_ensemble_artifacts(trained["trained_dir"], meta, work / "ensemble")
    signature = mlflow.models.Model.load(str(good["model_dir"])).signature
    info = tracking.log_ensemble_model(
        artifacts=artifacts, python_model=EnsembleModel(), signature=signature, input_example=None,
        pip_requirements=ensemble_pip_requirements(), code_paths=None, experiment="serving-test",
        registered_model_name=name)
    return info["registered_model_version"]


@pytest.fixture(scope="module")
def service(registry, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("service")
    workdir = subprocess_workdir(work / "workdir")
    env = {"MLFLOW_TRACKING_URI": registry["mlflow_uri"], "ALPHAFORGE_MODEL_NAME": registry["name"],
           "ALPHAFORGE_REDIS_URL": REDIS_URL, "ALPHAFORGE_FEATURE_PREFIX": FEATURE_PREFIX,
           "ALPHAFORGE_SERVING_CACHE": str(work / "cache"), "ALPHAFORGE_REQUEST_LOG_DIR": str(work / "requests"),
           "ALPHAFORGE_POLL_SECONDS": "1", "ALPHAFORGE_HOME": str(work / "state"),
           "ALPHAFORGE_PARAMS": str(workdir / "params.yaml")}
    process = start_service(cwd=workdir, project=REPO, env=env, log_path=work / "service.log")
    try:
        yield {"process": process, "url": process.url, "grpc": process.grpc_target, "work": work,
               "client": httpx.Client(base_url=process.url, timeout=30)}
    finally:
        process.stop()


def _features(service) -> list[str]:
    return service["client"].post("/model_info", json={}).json()["serving"]["features"]


def test_predictions_equal_the_registered_pyfunc(registry, service) -> None:
    client = service["client"]
    features = _features(service)
    frame = _rows(registry["dataset"], features, n_per_symbol=3)
    answer = client.post("/predict", json=_request(frame, features))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == registry["versions"][0] and body["variant"] == "champion"
    mlflow.set_tracking_uri(registry["mlflow_uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry['name']}@champion")
    ordered = frame.sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    expected = pyfunc.predict(to_model_input(ordered, "1")).set_index(["symbol", "timestamp"])
    served = pd.DataFrame(body["predictions"])
    served["timestamp"] = pd.to_datetime(served["timestamp"]).dt.tz_convert(None)
    served = served.set_index(["symbol", "timestamp"])
    expected.index = expected.index.set_levels(pd.to_datetime(expected.index.levels[1]).tz_localize(None), level=1) \
        if getattr(expected.index.levels[1], "tz", None) is not None else expected.index
    joined = served.join(expected, rsuffix="_pyfunc", how="inner")
    assert len(joined) == len(frame)
    for column in ("prediction", "lower", "upper"):
        np.testing.assert_allclose(joined[column], joined[f"{column}_pyfunc"], rtol=1e-9, atol=1e-12)

    # those numbers came from the LightGBM member's compiled code (packaged with the model, checked at load)
    assert client.post("/model_info", json={}).json()["serving"]["compiled_trees"] == ["lightgbm.base"]

    # the fast JSON route and the Arrow route answer the same numbers
    fast = client.post("/v1/predict", json=_request(frame, features)).json()
    assert [p["prediction"] for p in fast["predictions"]] == [p["prediction"] for p in body["predictions"]]
    arrow = client.post("/v1/predict_arrow", content=api.arrow_body(frame),
                        headers={"content-type": api.ARROW_MEDIA_TYPE, "x-request-id": "arrow-1"})
    assert arrow.status_code == 200 and arrow.headers["x-model-version"] == registry["versions"][0]
    assert arrow.headers["x-request-id"] == "arrow-1" and arrow.headers["content-type"] == api.ARROW_MEDIA_TYPE
    assert client.get("/v1/predict").status_code == 405  # the fast routes take POST only
    import io

    import pyarrow as pa
    table = pa.ipc.open_stream(io.BytesIO(arrow.content)).read_all().to_pandas()
    np.testing.assert_allclose(table["prediction"], [p["prediction"] for p in body["predictions"]], rtol=1e-12)


def test_raw_bars_give_the_batch_pipelines_prediction(registry, service) -> None:
    """/predict_bars computes the features with the training code: same answer as features -> /predict."""
    from alphaforge.features import FeatureParams, compute_features

    features = _features(service)
    bars = registry["bars"]
    recent = bars.groupby("symbol").tail(120).reset_index(drop=True)
    payload = {"bars": [{k: (v.isoformat() if k == "timestamp" else v) for k, v in row.items()
                         if k in ("timestamp", "symbol", "open", "high", "low", "close", "volume")}
                        for row in recent.to_dict("records")]}
    answer = service["client"].post("/predict_bars", json=payload)
    assert answer.status_code == 200, answer.text
    computed = compute_features(recent, FeatureParams()).groupby("symbol").tail(1)
    direct = service["client"].post("/predict", json=_request(computed, features)).json()
    assert [p["prediction"] for p in answer.json()["predictions"]] == pytest.approx(
        [p["prediction"] for p in direct["predictions"]], rel=1e-12)
    short = {"bars": payload["bars"][:3]}
    refused = service["client"].post("/predict_bars", json=short)
    assert refused.status_code == 400 and "more history" in refused.text or "cannot give" in refused.text


BAD_INPUTS = {
    "missing feature": (lambda r, f: r["rows"][0]["features"].pop(f[0]), 400, "missing"),
    "unknown feature": (lambda r, f: r["rows"][0]["features"].update(not_a_feature=1.0), 400, "unknown"),
    "string value": (lambda r, f: r["rows"][0]["features"].update({f[1]: "0.5"}), 400, "valid number"),
    "boolean value": (lambda r, f: r["rows"][0]["features"].update({f[1]: True}), 400, "valid number"),
    "no rows": (lambda r, f: r.update(rows=[]), 400, "no rows"),
    "naive timestamp": (lambda r, f: r["rows"][0].update(timestamp="2020-01-02T00:00:00"), 400, "time zone"),
    "duplicate bar": (lambda r, f: r["rows"].append(json.loads(json.dumps(r["rows"][0]))), 400, "repeat"),
    "unknown model": (lambda r, f: r.update(model="no-such-model"), 404, "unknown model"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_4xx_naming_the_problem_over_http_and_grpc(registry, service, case: str) -> None:
    features = _features(service)
    request = _request(_rows(registry["dataset"], features)[:2], features)
    change, status, words = BAD_INPUTS[case]
    change(request, features)
    for route in ("/predict", "/v1/predict"):
        answer = service["client"].post(route, json=request)
        assert answer.status_code == status, (route, answer.text)
        assert words.lower() in answer.text.lower(), (route, answer.text)
    if case in ("string value", "boolean value"):
        return  # a proto map<string, double> cannot carry them
    expected = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}[status]
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(service["grpc"], api.PredictRequest.model_construct(
            rows=[api.FeatureRow.model_construct(**row) for row in request["rows"]], model=request.get("model"),
            request_id=None, variant=None))
    assert refused.value.code() == expected and words.lower() in refused.value.details().lower()


def test_nan_infinity_and_oversize_batches_are_refused(registry, service) -> None:
    features = _features(service)
    frame = _rows(registry["dataset"], features)[:1]
    text = json.dumps(_request(frame, features))
    for token in ("NaN", "Infinity"):
        body = text.replace(repr(float(frame[features[2]].iloc[0])), token, 1)
        answer = service["client"].post("/predict", content=body, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, answer.text
    big = _request(pd.concat([frame] * 10_001, ignore_index=True).assign(
        timestamp=pd.date_range("1990-01-01", periods=10_001, freq="D", tz="UTC")), features)
    answer = service["client"].post("/v1/predict", json=big)
    assert answer.status_code == 413 and "limit is 10000" in answer.text
    nan_row = api.PredictRequest.model_construct(rows=[api.FeatureRow.model_construct(
        symbol="X", timestamp="2020-01-02T00:00:00Z", features={f: float("nan") for f in features})], model=None,
        request_id=None, variant=None)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(service["grpc"], nan_row)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in refused.value.details()


def test_grpc_and_http_answer_alike(registry, service) -> None:
    features = _features(service)
    request = _request(_rows(registry["dataset"], features, n_per_symbol=2), features, request_id="same")
    http = service["client"].post("/predict", json=request).json()
    over_grpc = grpc_predict(service["grpc"], api.PredictRequest(**request))
    assert over_grpc == http


def test_schemathesis_finds_no_5xx(service) -> None:
    """Every operation of the service's OpenAPI schema, fuzzed for a bounded number of cases: never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{service['url']}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/predict", "/predict_bars", "/model_info"} <= {operation.path for operation in operations}
    failures: list[str] = []

    def fuzz(operation) -> None:
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=service["url"], timeout=30)
            if response.status_code >= 500:
                failures.append(f"{operation.label}: {response.status_code} {response.text[:300]}")

        check()

    for operation in operations:
        fuzz(operation)
    assert not failures, failures[:5]


def test_alias_switch_under_steady_traffic_loses_no_request(registry, service) -> None:
    client = service["client"]
    features = _features(service)
    request = _request(_rows(registry["dataset"], features)[:1], features)
    v1, v2, _ = registry["versions"]
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=service["url"], timeout=30) as own:
            while not stop.is_set():
                for route in ("/predict", "/v1/predict"):
                    answer = own.post(route, json=request)
                    version = answer.json().get("model_version") if answer.status_code == 200 else None
                    seen.append((answer.status_code, version))

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        time.sleep(1.0)
        tracking.set_model_alias(registry["name"], "champion", v2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1][1] != v2):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(30)
        tracking.set_model_alias(registry["name"], "champion", v1)
        client.post("/admin/reload", json={})
    statuses = {status for status, _ in seen}
    versions = [version for _, version in seen]
    assert statuses == {200}, f"failed requests during the switch: {[s for s in seen if s[0] != 200][:5]}"
    assert versions[0] == v1 and versions[-1] == v2
    switch = versions.index(v2)
    assert all(v == v2 for v in versions[switch:]), "the service went back to the old version"


def test_a_champion_that_cannot_load_falls_back_to_the_previous_one(registry, service, tmp_path) -> None:
    v1, v2, v3 = registry["versions"]
    name = registry["name"]
    tracking.set_model_version_tags(name, v3, {"alphaforge.previous_champion": v1})
    tracking.set_model_alias(name, "champion", v3)
    try:
        # a fresh host (what a service does at start-up): the broken champion is skipped for v1
        host = ModelHost(ServingParams(model_name=name, cache_dir=str(tmp_path / "cache"), request_log=False))
        host.start()
        info = host.info()
        assert info["serving_version"] == v1 and info["fallback"]
        assert f"version {v3}" in info["fallback_reason"] and "previous champion" in info["fallback_reason"]
        assert 'alphaforge_model_fallback{model="%s",alias="champion",version="%s"} 1' % (name, v1) \
            in host.prometheus()
        host.close()
        # the running service keeps serving what it had and says why
        reloaded = service["client"].post("/admin/reload", json={}).json()
        assert reloaded["serving_version"] == v1
        info = service["client"].post("/model_info", json={}).json()
        assert info["fallback"] and f"version {v3}" in info["fallback_reason"]
        metrics = service["client"].get("/metrics").text
        assert "alphaforge_model_fallback" in metrics and "alphaforge_requests_total" in metrics
    finally:
        tracking.set_model_alias(name, "champion", v1)
        service["client"].post("/admin/reload", json={})


def test_served_requests_reach_the_request_log_and_the_monitor(registry, service, tmp_path) -> None:
    """What the service answered is in its request log, in the format ``alphaforge monitor`` reads."""
    from alphaforge.monitor import RequestLog

    features = _features(service)
    request = _request(_rows(registry["dataset"], features), features, request_id="logged-request")
    answer = service["client"].post("/predict", json=request).json()
    log = RequestLog(service["work"] / "requests")
    deadline = time.monotonic() + 20
    rows = pd.DataFrame()
    while time.monotonic() < deadline:
        frame = log.read(pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D"))
        rows = frame[frame["request_id"] == "logged-request"] if len(frame) else frame
        if len(rows) == len(request["rows"]):
            break
        time.sleep(0.3)
    assert len(rows) == len(request["rows"])
    by_symbol = {p["symbol"]: p["prediction"] for p in answer["predictions"]}
    for row in rows.to_dict("records"):
        assert row["prediction"] == pytest.approx(by_symbol[row["symbol"]], rel=1e-12)
        assert row["model_version"] == answer["model_version"] and row["variant"] == "champion"


def test_bentoml_build_makes_a_bento_of_the_service(tmp_path, workdir) -> None:
    """`alphaforge serve build` (bentoml build -f bentos/bentofile.yaml) packages the service with its code."""
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    alphaforge = Path(sys.executable).with_name("alphaforge")
    done = subprocess.run([str(alphaforge), "serve", "build", "--version", "test", "--project", str(REPO)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bento = tmp_path / "bentoml" / "bentos" / "alphaforge" / "test"
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    routes = {route["route"] for route in manifest["schema"]["routes"]}
    assert {"/predict", "/predict_bars", "/model_info", "/admin/reload"} <= routes
    config = manifest["services"][0]["config"]
    assert config["workers"] == 1 and config["logging"]["access"]["enabled"] is False  # the lean settings travel
    assert (bento / "src" / "src" / "alphaforge" / "serving" / "host.py").is_file()
    assert (bento / "src" / "src" / "alphaforge" / "serving" / "proto" / "alphaforge_serving.proto").is_file()


def test_by_symbol_endpoint_predicts_the_streamed_bar_as_the_batch_pipeline_does(registry, service, tmp_path) -> None:
    """Bars streamed into Redis (`alphaforge stream`), then /predict_symbols: the batch pipeline's prediction."""
    from alphaforge.featurestore.config import FeatureStoreParams
    from alphaforge.featurestore.online import OnlineStore
    from alphaforge.featurestore.stream import run_stream
    from alphaforge.features import FeatureParams, compute_features

    bars = registry["bars"]
    recent = bars[bars["timestamp"] >= bars["timestamp"].unique()[-300]].reset_index(drop=True)
    source = tmp_path / "bars.csv"
    recent.to_csv(source, index=False)
    store_params = FeatureStoreParams(redis_url=REDIS_URL, key_prefix=FEATURE_PREFIX,
                                      bar_log=tmp_path / "bars.sqlite")
    try:
        run_stream(FeatureParams(), store_params, str(source))
        symbols = sorted(recent["symbol"].unique())[:4]
        answer = service["client"].post("/predict_symbols", json={"symbols": symbols})
        assert answer.status_code == 200, answer.text
        features = _features(service)
        batch = compute_features(recent, FeatureParams()).groupby("symbol").tail(1)
        batch = batch[batch["symbol"].isin(symbols)]
        direct = service["client"].post("/predict", json=_request(batch, features)).json()
        got = {p["symbol"]: (p["timestamp"], p["prediction"]) for p in answer.json()["predictions"]}
        for p in direct["predictions"]:
            assert got[p["symbol"]][0] == p["timestamp"]
            assert got[p["symbol"]][1] == pytest.approx(p["prediction"], rel=1e-9, abs=1e-12)
        missing = service["client"].post("/predict_symbols", json={"symbols": ["NEVER-STREAMED"]})
        assert missing.status_code == 404 and "stream" in missing.text
    finally:
        OnlineStore.from_params(store_params).clear()


def test_several_models_by_name_in_a_bounded_lru_cache(registry, service, tmp_path) -> None:
    """Other registered models are served by name; the cache keeps at most serving.max_models of them."""
    v1 = registry["versions"][0]
    source = tracking.get_model_version(registry["name"], v1).source
    others = [f"{registry['name']}-{suffix}" for suffix in ("a", "b")]
    for other in others:
        version = tracking.register_model_version(other, source).version
        tracking.set_model_alias(other, "champion", version)
    features = _features(service)
    request = _request(_rows(registry["dataset"], features)[:2], features)
    main = service["client"].post("/predict", json=request).json()
    for other in others:
        answer = service["client"].post("/predict", json={**request, "model": other})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == other
        assert [p["prediction"] for p in answer.json()["predictions"]] == [p["prediction"] for p in main["predictions"]]

    host = ModelHost(ServingParams(model_name=registry["name"], max_models=2, cache_dir=str(tmp_path / "cache"),
                                   request_log=False))
    host.start()
    host.model(others[0])
    host.model(others[1])  # over the budget: the least recently used extra model goes, never the main one
    loaded = {slot.name for slot in host.loaded()}
    assert loaded == {registry["name"], others[1]}
    host.close()


def test_an_lstm_ensemble_is_served_by_name_through_the_panel_path(registry, service, tmp_path) -> None:
    """A registered ridge + LSTM ensemble, asked for by name: one window of rows per symbol gives its last bar's
    prediction and interval, equal to the pyfunc's on the whole history; a window shorter than the lookback gives
    nulls, not an error."""
    lookback = 6
    (tmp_path / "trained").mkdir()
    trained = train_small_ensemble(tmp_path / "trained", seed=21, n_symbols=5, n_bars=420, families={
        "ridge": {"alpha": 10.0},
        "lstm": {"lookback": lookback, "hidden_size": 8, "num_layers": 1, "batch_size": 128, "max_epochs": 1}})
    name = f"{registry['name']}-lstm"
    os.environ["MLFLOW_TRACKING_URI"] = registry["mlflow_uri"]
    registered = stack_and_register(trained, tmp_path / "stack", model_name=name)
    tracking.set_model_alias(name, "champion", registered["version"])
    features = json.loads((Path(registered["paths"].ensemble_dir) / "spec.json").read_text())["features"]
    history = _rows(trained["dataset"], features, n_per_symbol=30)
    window = history.groupby("symbol").tail(lookback)
    answer = service["client"].post("/v1/predict", json=_request(window, features, model=name))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == name and body["model_version"] == registered["version"]
    served = pd.DataFrame(body["predictions"]).dropna(subset=["prediction"])
    assert len(served) == window["symbol"].nunique()  # each window's last bar
    expected = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        to_model_input(history.sort_values(["symbol", "timestamp"]).reset_index(drop=True), "1"))
    expected["timestamp"] = pd.to_datetime(expected["timestamp"], utc=True)
    served["timestamp"] = pd.to_datetime(served["timestamp"], utc=True)
    joined = served.merge(expected, on=["symbol", "timestamp"], suffixes=("", "_pyfunc"))
    assert len(joined) == len(served)
    for column in ("prediction", "lower", "upper"):
        np.testing.assert_allclose(joined[column], joined[f"{column}_pyfunc"], rtol=1e-5, atol=1e-7)
    short = service["client"].post("/v1/predict", json=_request(window.groupby("symbol").tail(2), features, model=name))
    assert short.status_code == 200 and all(p["prediction"] is None for p in short.json()["predictions"])


def test_serve_start_becomes_the_server_so_a_sigterm_stops_it_and_its_writer(registry, tmp_path, workdir) -> None:
    """`alphaforge serve start` execs `bentoml serve` (same PID): a supervisor's SIGTERM to that PID stops the
    server, its worker and the request-log writer; nothing is left behind (it once left the server running)."""
    import signal
    import subprocess
    import sys
    import time

    from alphaforge.serving.launcher import descendants, free_port

    def command_line(pid: int) -> str:
        path = Path(f"/proc/{pid}/cmdline")
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace") if path.exists() else ""

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["mlflow_uri"], "ALPHAFORGE_HOME": str(tmp_path / "state"),
           "ALPHAFORGE_SERVING_CACHE": str(tmp_path / "cache"), "ALPHAFORGE_REQUEST_LOG_DIR": str(tmp_path / "log")}
    process = subprocess.Popen([str(Path(sys.executable).with_name("alphaforge")), "serve", "start", "--port",
                                str(port), "--grpc-port", "0", "--model", registry["name"], "--params",
                                str(workdir / "params.yaml"), "--project", str(REPO)], cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200
            except httpx.HTTPError:
                live = False
            started = descendants(process.pid)
            if live and any("request_log_writer" in command_line(pid) for pid in started):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"no live service with its request-log writer in 120 s: "
                                 f"{[command_line(p) for p in started]}")
        assert "bentoml serve" in command_line(process.pid)  # the same PID is the server now
        process.send_signal(signal.SIGTERM)  # to the PID only, as a supervisor would
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in started):
            time.sleep(0.5)
        assert not [pid for pid in started if Path(f"/proc/{pid}").exists()], "processes left after SIGTERM"
    finally:  # whatever happened, nothing this test started stays (deepest first)
        for pid in reversed([process.pid, *started, *descendants(process.pid)]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)
