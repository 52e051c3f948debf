"""Concurrent one-row traffic through the real service (``bentoml serve`` in a temporary folder, a real MLflow
server): server-side micro-batching of concurrent ``/v1/predict`` requests and the gRPC row stream
(``PredictStream``), with ``serving.batching`` on and off.

A champion and a challenger (two ensembles of other seeds) are registered and half the requests go to the
challenger by the hash of their request id, so one batch holds both variants: every answer must still be the
one its request gets alone (its own id, variant, version and prediction), equal to the model in process. No
timing is asserted here; the speed figures are ``benchmarks/serving.py``'s.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from ensemble_fixtures import stack_and_register, train_small_ensemble
from test_serving import _request, _rows

from alphaforge import tracking
from alphaforge.serving import api
from alphaforge.serving.grpc_server import grpc_predict, grpc_predict_stream
from alphaforge.serving.host import ModelHost, ServingParams
from alphaforge.serving.launcher import start_service
from alphaforge.serving.model import load_served_model

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N_CLIENTS = 64


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory: pytest.TempPathFactory):
    """champion -> an ensemble of seed 5, challenger -> one of seed 6 (other predictions)."""
    work = tmp_path_factory.mktemp("concurrency")
    env = pytest.MonkeyPatch()  # undone when the module's tests are done
    env.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    env.setenv("ALPHAFORGE_HOME", str(work / "state"))
    name = f"concurrency-{uuid.uuid4().hex[:8]}"
    try:
        champion_run = train_small_ensemble(work / "trained1", seed=5, n_symbols=8, n_bars=500)
        challenger_run = train_small_ensemble(work / "trained2", seed=6, n_symbols=8, n_bars=500)
        champion = stack_and_register(champion_run, work / "stack1", model_name=name)
        challenger = stack_and_register(challenger_run, work / "stack2", model_name=name)
        tracking.set_model_alias(name, "champion", champion["version"])
        tracking.set_model_alias(name, "challenger", challenger["version"])
        yield {"name": name, "champion": champion["version"], "challenger": challenger["version"],
               "dataset": champion_run["dataset"], "mlflow_uri": mlflow_server.uri}
    finally:
        env.undo()


def _start(registry: dict, folder: Path, *, batching: bool):
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(f"serving:\n  model_name: {registry['name']}\n  challenger_share: 0.5\n"
                      f"  cache_dir: {folder / 'cache'}\n  request_log_dir: {folder / 'requests'}\n"
                      f"  batching:\n    enabled: {str(batching).lower()}\n    max_batch_size: 256\n"
                      "    max_latency_ms: 1.0\n")
    env = {"MLFLOW_TRACKING_URI": registry["mlflow_uri"], "ALPHAFORGE_PARAMS": str(params),
           "ALPHAFORGE_HOME": str(folder / "state")}
    return start_service(cwd=folder, project=REPO, env=env, log_path=folder / "service.log")


@pytest.fixture(scope="module")
def batched(registry, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("batched")
    service = _start(registry, folder, batching=True)
    try:
        yield {"process": service, "folder": folder}
    finally:
        service.stop()


@pytest.fixture(scope="module")
def unbatched(registry, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("unbatched")
    service = _start(registry, folder, batching=False)
    try:
        yield {"process": service, "folder": folder}
    finally:
        service.stop()


def _routed_variant(request_id: str) -> str:
    """The variant the service's A/B split (challenger_share 0.5) gives ``request_id``: a hash of the id."""
    return ModelHost(ServingParams(challenger_share=0.5, request_log=False)).choose_variant(request_id, None)


def _in_process(registry: dict, service: dict, variant: str, bodies: list[dict]) -> tuple[np.ndarray, ...]:
    """Prediction, lower, upper of the bodies' rows by ``variant``'s version loaded in this process."""
    version = registry[variant]
    model = load_served_model(service["folder"] / "cache" / registry["name"] / version, name=registry["name"],
                              version=version)
    x = np.array([[row["features"][f] for f in model.features] for body in bodies for row in body["rows"]])
    return model.predict_matrix(x)


def _values(row: dict) -> list[float]:
    return [row["prediction"], row["lower"], row["upper"]]


def _one_row_requests(registry: dict, features: list[str], tag: str) -> list[dict]:
    """``N_CLIENTS`` one-row requests, each its own (symbol, bar) and request id."""
    frame = _rows(registry["dataset"], features, n_per_symbol=N_CLIENTS // 8)
    assert len(frame) == N_CLIENTS
    return [_request(frame.iloc[[i]], features, request_id=f"{tag}-{i}") for i in range(N_CLIENTS)]


def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """Every body posted to ``/v1/predict`` at once, one connection each."""
    async def post_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json=body) for body in bodies))

    return asyncio.run(post_all())


def _info(url: str) -> dict:
    return httpx.post(url + "/model_info", json={}, timeout=30).json()


def _batched_burst(url: str, bodies: list[dict], attempts: int = 5) -> tuple[list[dict], list[httpx.Response]]:
    """``bodies`` sent at once until the service has answered some of them in a shared batch (it nearly always
    does at the first burst: 64 requests arriving together); the bodies of the last burst (request ids get an
    attempt suffix after the first: the request log keeps ids unique) and their answers."""
    for attempt in range(attempts):
        sent = bodies if attempt == 0 else [dict(b, request_id=f"{b['request_id']}.{attempt}") for b in bodies]
        before = _info(url)["batching"]
        answers = _concurrently(url, sent)
        after = _info(url)["batching"]
        if after["batches"] - before["batches"] < after["requests"] - before["requests"]:
            return sent, answers
    raise AssertionError(f"{attempts} bursts of {len(bodies)} concurrent requests, never two in one batch: "
                         f"{after}")


def test_concurrent_one_row_requests_each_get_their_own_answer_equal_to_one_batch_and_the_model(
        registry, batched) -> None:
    service = batched["process"]
    info = _info(service.url)
    assert info["batching"]["enabled"] is True
    features = info["serving"]["features"]

    bodies, answers = _batched_burst(service.url, _one_row_requests(registry, features, "burst"))

    assert [a.status_code for a in answers] == [200] * N_CLIENTS, [a.text for a in answers if a.status_code != 200]
    payloads = [a.json() for a in answers]
    assert [p["request_id"] for p in payloads] == [b["request_id"] for b in bodies]
    # each request routed by its own id (the A/B hash), inside a batch that holds both variants
    assert [p["variant"] for p in payloads] == [_routed_variant(b["request_id"]) for b in bodies]
    assert {p["variant"] for p in payloads} == {"champion", "challenger"}
    for body, payload in zip(bodies, payloads, strict=True):
        (row,) = payload["predictions"]
        assert (row["symbol"], row["timestamp"]) == (body["rows"][0]["symbol"], body["rows"][0]["timestamp"])
        assert payload["model_version"] == registry[payload["variant"]]
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for variant in ("champion", "challenger"):
            mine = [i for i, p in enumerate(payloads) if p["variant"] == variant]
            together = client.post("/v1/predict", json={"rows": [bodies[i]["rows"][0] for i in mine],
                                                        "variant": variant, "request_id": f"together-{variant}"})
            assert together.status_code == 200 and together.json()["model_version"] == registry[variant]
            prediction, lower, upper = _in_process(registry, batched, variant, [bodies[i] for i in mine])
            concurrent = [payloads[i]["predictions"][0] for i in mine]
            np.testing.assert_allclose([r["prediction"] for r in concurrent],
                                       [r["prediction"] for r in together.json()["predictions"]], rtol=1e-12)
            np.testing.assert_allclose([r["prediction"] for r in concurrent], prediction, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose([r["lower"] for r in concurrent], lower, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose([r["upper"] for r in concurrent], upper, rtol=1e-12, atol=1e-15)


def test_bad_requests_in_a_burst_get_their_own_errors_and_the_others_their_answers(registry, batched) -> None:
    service = batched["process"]
    features = _info(service.url)["serving"]["features"]
    bodies = _one_row_requests(registry, features, "mixed")
    missing = bodies[3]["rows"][0]["features"]
    missing.pop(features[0])
    bodies[10]["rows"][0]["timestamp"] = "not a time"
    bodies[20]["model"] = "no-such-model"

    answers = _concurrently(service.url, bodies)

    codes = [a.status_code for a in answers]
    assert (codes[3], codes[10], codes[20]) == (400, 400, 404)
    assert f"missing ['{features[0]}']" in answers[3].json()["error"]
    assert "timestamp" in answers[10].json()["error"]
    assert "no-such-model" in answers[20].json()["error"]
    good = [i for i in range(N_CLIENTS) if i not in (3, 10, 20)]
    assert all(codes[i] == 200 for i in good)
    assert [answers[i].json()["request_id"] for i in good] == [bodies[i]["request_id"] for i in good]


def test_the_grpc_row_stream_answers_each_row_in_order_like_http_and_refuses_a_bad_row_alone(
        registry, batched) -> None:
    service = batched["process"]
    features = _info(service.url)["serving"]["features"]
    clean = _one_row_requests(registry, features, "stream-clean")
    broken = [dict(b, request_id=f"stream-broken-{i}", rows=[dict(b["rows"][0], features=dict(b["rows"][0]["features"]))])
              for i, b in enumerate(clean)]
    broken[5]["rows"][0]["features"].pop(features[1])  # a row without a feature
    broken[6]["rows"][0]["timestamp"] = "2022-12-30T00:00:00"  # no time zone
    broken[7]["rows"][0]["features"][features[2]] = float("nan")  # not finite
    bad = {5, 6, 7}
    results: dict[str, list[dict]] = {}

    def stream(key: str, bodies: list[dict]) -> None:
        messages = [api.PredictRequest.model_construct(
            rows=[api.FeatureRow.model_construct(**b["rows"][0])], model=None, request_id=b["request_id"],
            variant=None) for b in bodies]
        results[key] = grpc_predict_stream(service.grpc_target, messages)

    # two clients at once: the one sending bad rows must not disturb the other's stream, nor its own
    threads = [threading.Thread(target=stream, args=("broken", broken)),
               threading.Thread(target=stream, args=("clean", clean))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    with httpx.Client(base_url=service.url, timeout=30) as client:
        for key, bodies in (("clean", clean), ("broken", broken)):
            answers = results[key]
            assert [a["request_id"] for a in answers] == [b["request_id"] for b in bodies]  # one each, in order
            good = [i for i in range(N_CLIENTS) if key == "clean" or i not in bad]
            assert all("error" not in answers[i] for i in good), [answers[i] for i in good if "error" in answers[i]]
            assert [answers[i]["variant"] for i in good] == [_routed_variant(bodies[i]["request_id"]) for i in good]
            for i in good:
                (row,) = answers[i]["predictions"]
                assert (row["symbol"], row["timestamp"]) == (bodies[i]["rows"][0]["symbol"],
                                                             bodies[i]["rows"][0]["timestamp"])
                http = client.post("/v1/predict", json=dict(bodies[i], request_id=f"http-{key}-{i}",
                                                            variant=answers[i]["variant"])).json()
                assert http["model_version"] == answers[i]["model_version"]
                assert _values(http["predictions"][0]) == pytest.approx(_values(row), rel=1e-12)
    refused = results["broken"]
    assert refused[5]["status"] == 400 and f"missing ['{features[1]}']" in refused[5]["error"]
    assert refused[6]["status"] == 400 and "time zone" in refused[6]["error"]
    assert refused[7]["status"] == 400 and features[2] in refused[7]["error"]
    # the unary call answers as before
    unary = grpc_predict(service.grpc_target, api.PredictRequest(**dict(clean[0], request_id="unary-0",
                                                                        variant=results["clean"][0]["variant"])))
    assert unary["predictions"][0]["prediction"] == pytest.approx(results["clean"][0]["predictions"][0]["prediction"],
                                                                  rel=1e-12)


def test_with_batching_off_concurrent_requests_and_the_stream_get_the_same_answers(
        registry, batched, unbatched) -> None:
    features = _info(batched["process"].url)["serving"]["features"]
    assert _info(unbatched["process"].url)["batching"] == {"enabled": False}
    bodies = [dict(b, variant="challenger" if i % 2 else "champion")
              for i, b in enumerate(_one_row_requests(registry, features, "off"))]

    def tagged(tag: str) -> list[dict]:
        return [dict(b, request_id=f"{b['request_id']}-{tag}") for b in bodies]

    on = [a.json() for a in _concurrently(batched["process"].url, tagged("on"))]
    off_answers = _concurrently(unbatched["process"].url, tagged("off"))
    streamed = grpc_predict_stream(unbatched["process"].grpc_target,
                                   [api.PredictRequest(**b) for b in tagged("stream")])

    assert [a.status_code for a in off_answers] == [200] * N_CLIENTS
    off = [a.json() for a in off_answers]
    for body, with_batching, without, over_stream in zip(bodies, on, off, streamed, strict=True):
        for answer in (with_batching, without, over_stream):
            assert (answer["variant"], answer["model_version"]) == (body["variant"], registry[body["variant"]])
        for answer in (without, over_stream):
            assert answer["predictions"][0]["symbol"] == with_batching["predictions"][0]["symbol"]
            assert _values(answer["predictions"][0]) == pytest.approx(_values(with_batching["predictions"][0]),
                                                                      rel=1e-12)


def test_the_request_log_holds_one_entry_per_batched_request(registry, batched) -> None:
    """Batching is invisible to monitoring: each request of a burst is logged under its own id and variant."""
    import time

    from alphaforge.monitor import RequestLog

    service = batched["process"]
    features = _info(service.url)["serving"]["features"]
    bodies = _one_row_requests(registry, features, "logged")
    payloads = [a.json() for a in _batched_burst(service.url, bodies)[1]]
    wanted = {(p["request_id"], p["variant"]) for p in payloads}
    deadline = time.monotonic() + 30
    found: set = set()
    while time.monotonic() < deadline and not wanted <= found:
        log = RequestLog(batched["folder"] / "requests").read(pd.Timestamp("2000-01-01", tz="UTC"),
                                                              pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D"))
        found = set(zip(log["request_id"], log["variant"], strict=True)) if len(log) else set()
        time.sleep(0.3)
    assert wanted <= found, f"not logged: {sorted(wanted - found)[:5]}"


def test_the_benchmark_load_generators_are_answered_in_full_by_the_real_service(registry, batched) -> None:
    """``benchmarks/loadgen.py`` (raw sockets: HTTP/1.1, and HTTP/2 for the gRPC stream) against the service: every
    request sent is answered, none fails, the counts agree with what the service counted."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import loadgen

    from alphaforge.serving.grpc_server import request_to_proto
    from alphaforge.serving.proto import alphaforge_serving_pb2 as pb

    service = batched["process"]
    features = _info(service.url)["serving"]["features"]
    body = _one_row_requests(registry, features, "loadgen")[0]
    host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])
    before = _info(service.url)["variants"]
    one_row = api.PredictRequest(**{**body, "request_id": None})  # the service gives each request its own id
    request = loadgen.http_request(host, port, "/v1/predict", one_row.model_dump_json(exclude_none=True).encode())
    closed = loadgen.http_closed_loop(host, port, request, connections=8, seconds=1.0, warmup=0.2)
    opened = loadgen.http_open_loop(host, port, request, connections=8, rate=200.0, seconds=1.0, warmup=0.2)
    assert closed["failures"] == 0 and len(closed["latencies"]) > 0
    assert opened["failures"] == 0 and len(opened["latencies"]) == opened["offered"] == 200

    def count(payload: bytes) -> tuple[int, int]:
        reply = pb.PredictAnswers.FromString(payload)
        assert all(answer.predictions[0].symbol == body["rows"][0]["symbol"] for answer in reply.answers
                   if not answer.HasField("error"))
        return len(reply.answers), sum(answer.HasField("error") for answer in reply.answers)

    message = request_to_proto(one_row)
    grpc_host, grpc_port = service.grpc_target.rsplit(":", 1)
    stream = loadgen.grpc_stream(grpc_host, int(grpc_port), "/alphaforge.serving.v1.Predictor/PredictStream",
                                 message.SerializeToString(), count, window=64, seconds=1.0, warmup=0.2)
    assert stream["failures"] == 0 and stream["stream_error"] is None and stream["answers"] > 0
    after = _info(service.url)["variants"]
    served = sum(after[v]["requests"] - before[v]["requests"] for v in ("champion", "challenger"))
    assert served >= stream["answers"] + len(closed["latencies"]) + len(opened["latencies"])
