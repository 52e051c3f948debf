"""Serving latency and throughput, through the real service on loopback, with its floor and in-process cost beside it.

    python benchmarks/serving.py --out benchmarks/results/serving.json

In one run:

* the model: the champion of the configured registry (``MLFLOW_TRACKING_URI``, params.yaml's
  ``serving.model_name``) when there is one; otherwise a LightGBM + ridge stacked ensemble with conformal
  intervals, trained on a synthetic market and registered as champion in a temporary local registry
  (the same kind of tree ensemble the default pipeline promotes);
* the service started with ``bentoml serve`` on a free loopback port (request logging on, as in production);
* sequential single-row requests (``--single`` of them) to ``/v1/predict`` (the mounted fast JSON route) and to
  ``/predict`` (BentoML's typed API), over one keep-alive connection: p50 / p99 milliseconds;
* sequential 100-row batches to both: p50 / p99;
* throughput: ``--clients`` processes sending Arrow IPC bodies of ``--batch-rows`` rows to ``/v1/predict_arrow``
  for ``--seconds``: predictions per second;
* gRPC single-row p50 / p99;
* concurrent one-row traffic (``serving.batching`` on, as configured): ``--concurrent-clients`` asyncio clients
  (aiohttp, one connection each) posting one row each to ``/v1/predict`` back to back, and one gRPC
  ``PredictStream`` with ``--stream-window`` one-row messages in flight, each for ``--concurrent-seconds``:
  predictions per second and p50 / p99 ms; then the same against a second service with batching off
  (``--no-unbatched`` skips it);
* the HTTP floor: a bare Starlette endpoint on uvicorn (one worker, same host) answering a one-row POST;
* in process: the same model's :meth:`ServedModel.predict_matrix` on one row, and the cold load of the
  model folder (ms);
* an ensemble with a torch sequence member (ridge + LSTM, lookback 20), registered beside it and served by name
  through the same service: sequential one-window requests (each symbol's last 20 rows, one prediction),
  mean / p95 ms and predictions per second (temporary registry only; ``--no-sequence`` leaves it out).

Timings are wall clock on a shared machine: run it on an idle one for figures to quote.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "mean": float(values.mean()), "n": len(values)}


def _timed_posts(host: str, port: int, path: str, body: bytes, content_type: str, n: int, warmup: int = 100
                 ) -> list[float]:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    samples = []
    headers = {"Content-Type": content_type}
    for i in range(n + warmup):
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {payload[:300]!r}")
        if i >= warmup:
            samples.append(elapsed)
    connection.close()
    return samples


def _arrow_client(args: tuple[str, int, bytes, float, int]) -> tuple[int, int]:
    host, port, body, seconds, rows = args
    connection = http.client.HTTPConnection(host, port, timeout=60)
    predictions, failures = 0, 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        connection.request("POST", "/v1/predict_arrow", body=body,
                           headers={"Content-Type": "application/vnd.apache.arrow.stream"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            predictions += rows
        else:
            failures += 1
    connection.close()
    return predictions, failures


def _concurrent_client(args: tuple[str, int, bytes, int, float, float]) -> dict[str, object]:
    """``connections`` asyncio clients (aiohttp, one keep-alive connection each) posting one-row requests to
    ``/v1/predict`` back to back for ``seconds`` after ``warmup`` seconds: latencies (ms) and failures."""
    import asyncio

    import aiohttp

    host, port, body, connections, seconds, warmup = args

    async def run() -> dict[str, object]:
        latencies: list[float] = []
        failures = 0
        loop = asyncio.get_running_loop()
        begin = loop.time()
        measure_from, deadline = begin + warmup, begin + warmup + seconds
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def client() -> None:
                nonlocal failures
                while True:
                    started = time.perf_counter()
                    now = loop.time()
                    if now >= deadline:
                        return
                    async with session.post(f"http://{host}:{port}/v1/predict", data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                        await response.read()
                        ok = response.status == 200
                    if now >= measure_from:
                        if ok:
                            latencies.append((time.perf_counter() - started) * 1000.0)
                        else:
                            failures += 1

            await asyncio.gather(*(client() for _ in range(connections)))
        return {"latencies": latencies, "failures": failures}

    return asyncio.run(run())


def _concurrent_http(host: str, port: int, body: bytes, clients: int, processes: int, seconds: float
                     ) -> dict[str, float]:
    """``clients`` concurrent one-row clients spread over ``processes`` processes: predictions per second and
    latency percentiles (each answer is one prediction)."""
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        outcomes = pool.map(_concurrent_client, [(host, port, body, n, seconds, 1.0) for n in shares if n])
    latencies = [v for outcome in outcomes for v in outcome["latencies"]]  # type: ignore[attr-defined]
    return {**_percentiles(latencies), "preds_per_s": len(latencies) / seconds, "clients": clients,
            "client_processes": processes, "seconds": seconds,
            "failures": sum(int(outcome["failures"]) for outcome in outcomes)}  # type: ignore[call-overload]


def _grpc_stream(target: str, message: object, seconds: float, window: int) -> dict[str, float]:
    """One ``PredictStream`` with at most ``window`` one-row messages in flight, for ``seconds`` after a second of
    warm-up: predictions per second and the latency of each message (sent -> its answer), ms."""
    import collections
    import threading

    import grpc

    from alphaforge.serving.proto import alphaforge_serving_pb2_grpc as pb_grpc

    in_flight = threading.Semaphore(window)
    sent: collections.deque[float] = collections.deque()
    begin = time.perf_counter()
    measure_from, deadline = begin + 1.0, begin + 1.0 + seconds

    def messages():  # type: ignore[no-untyped-def]
        while time.perf_counter() < deadline:
            in_flight.acquire()
            sent.append(time.perf_counter())
            yield message

    latencies, failures = [], 0
    with grpc.insecure_channel(target) as channel:
        for reply in pb_grpc.PredictorStub(channel).PredictStream(messages(), timeout=seconds + 60):
            now = time.perf_counter()
            for answer in reply.answers:  # the answers of the messages the service predicted together, in order
                started = sent.popleft()
                in_flight.release()
                if started >= measure_from:
                    if answer.HasField("error"):
                        failures += 1
                    else:
                        latencies.append((now - started) * 1000.0)
    return {**_percentiles(latencies), "preds_per_s": len(latencies) / seconds, "window": window,
            "seconds": seconds, "failures": failures}


def _concurrency(service: object, body: bytes, message: object, args: argparse.Namespace) -> dict[str, object]:
    """The concurrent one-row figures of a running service: HTTP clients, then one gRPC stream, then the
    service's batching counters."""
    host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    http = _concurrent_http(host, port, body, args.concurrent_clients, args.client_processes,
                            args.concurrent_seconds)
    stream = _grpc_stream(service.grpc_target, message, args.concurrent_seconds, args.stream_window)  # type: ignore[attr-defined]
    batching = json.loads(_post_json(host, port, "/model_info", b"{}")).get("batching")
    return {"http": http, "grpc_stream": stream, "batching": batching}


FLOOR_APP = '''
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def predict(request):
    await request.body()
    return Response(b'{"prediction": 0.0}', media_type="application/json")

app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
'''


def _floor(body: bytes, n: int) -> dict[str, float]:
    """A bare Starlette endpoint on uvicorn: the HTTP floor on this machine."""
    from alphaforge.serving.launcher import free_port

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "floor_app.py").write_text(FLOOR_APP)
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "floor_app:app", "--host", "127.0.0.1",
                                    "--port", str(port), "--no-access-log", "--log-level", "warning"],
                                   cwd=folder, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _timed_posts("127.0.0.1", port, "/predict", b"{}", "application/json", 1, warmup=0)
                    break
                except (ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            return _percentiles(_timed_posts("127.0.0.1", port, "/predict", body, "application/json", n))
        finally:
            process.terminate()
            process.wait(10)


def _model(work: Path) -> tuple[dict[str, str], str, str, object]:
    """(env for the service, model name, where it came from, a dataset of feature rows)."""
    from alphaforge import tracking
    from alphaforge.config import load_params

    name = load_params(REPO / "params.yaml").serving.model_name
    if os.environ.get("MLFLOW_TRACKING_URI") or (REPO / ".alphaforge" / "mlflow.db").exists():
        os.environ.setdefault("ALPHAFORGE_HOME", str(REPO / ".alphaforge"))
        try:
            if tracking.get_model_aliases(name).get("champion"):
                import pandas as pd

                dataset = pd.read_parquet(REPO / "data/features/dataset.parquet")
                return ({"MLFLOW_TRACKING_URI": tracking.tracking_uri()}, name,
                        f"the registry's champion ({tracking.tracking_uri()})", dataset)
        except Exception as err:  # no usable registry: fall through to a freshly trained one
            print(f"serving benchmark: no champion in the configured registry ({err})", file=sys.stderr)
    sys.path.insert(0, str(REPO / "tests"))
    from ensemble_fixtures import stack_and_register, train_small_ensemble

    os.environ["ALPHAFORGE_HOME"] = str(work / "state")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'state' / 'mlflow.db'}"
    (work / "trained").mkdir(parents=True)
    trained = train_small_ensemble(work / "trained", n_symbols=20, n_bars=1500, families={
        "ridge": {"alpha": 10.0},
        "lightgbm": {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 31, "min_child_samples": 100,
                     "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "max_bin": 63}})
    name = "alphaforge-serving-benchmark"
    registered = stack_and_register(trained, work / "stack", model_name=name, experiment="serving-benchmark")
    tracking.set_model_alias(name, "champion", registered["version"])
    return ({"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], "ALPHAFORGE_MODEL_NAME": name}, name,
            "a LightGBM (300 trees, 31 leaves) + ridge stack with conformal intervals on a synthetic market, "
            "registered in a temporary local registry", trained["dataset"])


SEQUENCE_MODEL = "alphaforge-serving-benchmark-lstm"


def _sequence_model(work: Path) -> tuple[object, int]:
    """A ridge + LSTM (lookback 20, 32 hidden units, default settings, 2 epochs) stack registered as
    ``SEQUENCE_MODEL`` in the benchmark's temporary registry; (dataset, lookback)."""
    from alphaforge import tracking

    sys.path.insert(0, str(REPO / "tests"))
    from ensemble_fixtures import stack_and_register, train_small_ensemble

    (work / "trained-lstm").mkdir(parents=True)
    trained = train_small_ensemble(work / "trained-lstm", seed=7, n_symbols=10, n_bars=800, families={
        "ridge": {"alpha": 10.0}, "lstm": {"lookback": 20, "hidden_size": 32, "max_epochs": 2}})
    registered = stack_and_register(trained, work / "stack-lstm", model_name=SEQUENCE_MODEL,
                                    experiment="serving-benchmark")
    tracking.set_model_alias(SEQUENCE_MODEL, "champion", registered["version"])
    return trained["dataset"], 20


def _sequence_requests(host: str, port: int, dataset: object, lookback: int, n: int) -> dict[str, float]:
    """Sequential requests, each one symbol's last ``lookback`` rows (one prediction: its last bar), to the
    sequence ensemble by name: mean / p95 ms and predictions per second (the originating design's system test)."""
    from alphaforge.features import feature_columns

    frame = dataset  # type: ignore[assignment]
    features = feature_columns(frame)
    complete = frame.dropna(subset=features).sort_values(["symbol", "timestamp"])
    bodies = []
    for _, rows in complete.groupby("symbol"):
        window = rows.tail(lookback)
        bodies.append(json.dumps({"model": SEQUENCE_MODEL, "rows": [
            {"symbol": r["symbol"], "timestamp": r["timestamp"].isoformat(),
             "features": {f: float(r[f]) for f in features}} for r in window.to_dict("records")]}).encode())
    connection = http.client.HTTPConnection(host, port, timeout=60)
    samples = []
    for i in range(n + 20):
        body = bodies[i % len(bodies)]
        started = time.perf_counter()
        connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status != 200:
            raise RuntimeError(f"sequence model: {response.status} {payload[:300]!r}")
        answered = [p for p in json.loads(payload)["predictions"] if p["prediction"] is not None]
        if len(answered) != 1:
            raise RuntimeError(f"sequence model: {len(answered)} predictions for one window (expected 1)")
        if i >= 20:
            samples.append(elapsed)
    connection.close()
    values = np.asarray(samples)
    return {"mean_ms": float(values.mean()), "p95_ms": float(np.percentile(values, 95)),
            "p50_ms": float(np.percentile(values, 50)), "preds_per_s": float(1000.0 / values.mean()),
            "n": len(samples), "lookback": lookback,
            "targets": {"mean_ms": 10.0, "p95_ms": 20.0, "preds_per_s": 100.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--single", type=int, default=2000, help="sequential single-row requests per route")
    parser.add_argument("--batches", type=int, default=300, help="sequential 100-row batches per route")
    parser.add_argument("--clients", type=int, default=2, help="client processes for the throughput run")
    parser.add_argument("--batch-rows", type=int, default=2000, help="rows per Arrow request in the throughput run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run")
    parser.add_argument("--sequence-requests", type=int, default=500,
                        help="sequential one-window requests to the ridge + LSTM ensemble")
    parser.add_argument("--no-sequence", action="store_true", help="leave out the sequence-ensemble measurement")
    parser.add_argument("--concurrent-clients", type=int, default=64,
                        help="concurrent one-row HTTP clients (asyncio + aiohttp)")
    parser.add_argument("--client-processes", type=int, default=1, help="processes the HTTP clients run in")
    parser.add_argument("--concurrent-seconds", type=float, default=10.0,
                        help="length of each concurrent run (HTTP clients, the gRPC stream)")
    parser.add_argument("--stream-window", type=int, default=256,
                        help="one-row messages in flight on the gRPC stream")
    parser.add_argument("--no-unbatched", action="store_true",
                        help="leave out the concurrent runs against a second service with serving.batching off")
    args = parser.parse_args()
    load_at_start = [round(v, 2) for v in os.getloadavg()]  # a busy machine reads low: say how busy it was

    import pandas as pd

    from alphaforge.serving import api
    from alphaforge.serving.grpc_server import grpc_predict
    from alphaforge.serving.launcher import start_service

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        env, name, source, dataset = _model(work)
        env.update({"ALPHAFORGE_SERVING_CACHE": str(work / "cache"), "ALPHAFORGE_REQUEST_LOG_DIR": str(work / "log"),
                    "ALPHAFORGE_HOME": os.environ.get("ALPHAFORGE_HOME", str(work / "state"))})
        started = time.perf_counter()
        service = start_service(cwd=REPO, env=env, log_path=work / "service.log")
        start_seconds = time.perf_counter() - started
        try:
            host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])
            info = json.loads(_post_json(host, port, "/model_info", b"{}"))
            features = info["serving"]["features"]
            rows = dataset.dropna(subset=features)
            rows = rows[rows["timestamp"] == rows["timestamp"].max()]
            if len(rows) < 100:
                rows = dataset.dropna(subset=features).tail(100)
            rows = rows.drop_duplicates(["symbol", "timestamp"])
            one = rows.head(1)
            hundred = dataset.dropna(subset=features).drop_duplicates(["symbol", "timestamp"]).tail(100)

            def body(frame: pd.DataFrame) -> bytes:
                return json.dumps({"rows": [{"symbol": r["symbol"], "timestamp": r["timestamp"].isoformat(),
                                             "features": {f: float(r[f]) for f in features}}
                                            for r in frame.to_dict("records")]}).encode()

            single_body, batch_body = body(one), body(hundred)
            results: dict[str, object] = {}
            for label, path in (("fast", "/v1/predict"), ("api", "/predict")):
                results[f"{label}_single"] = _percentiles(_timed_posts(host, port, path, single_body,
                                                                       "application/json", args.single))
                results[f"{label}_batch100"] = _percentiles(_timed_posts(host, port, path, batch_body,
                                                                         "application/json", args.batches))
            request = api.PredictRequest(**json.loads(single_body))
            grpc_samples = []
            import grpc

            from alphaforge.serving.proto import alphaforge_serving_pb2 as pb
            from alphaforge.serving.proto import alphaforge_serving_pb2_grpc as pb_grpc
            message = pb.PredictRequest(rows=[pb.FeatureRow(symbol=r.symbol, timestamp=r.timestamp,
                                                            features=r.features) for r in request.rows])
            with grpc.insecure_channel(service.grpc_target) as channel:
                stub = pb_grpc.PredictorStub(channel)
                for i in range(args.single + 100):
                    t0 = time.perf_counter()
                    stub.Predict(message, timeout=10)
                    if i >= 100:
                        grpc_samples.append((time.perf_counter() - t0) * 1000.0)
            grpc_predict(service.grpc_target, request)  # the client helper works too
            results["grpc_single"] = _percentiles(grpc_samples)
            results["concurrent"] = _concurrency(service, single_body, message, args)

            big = pd.concat([hundred] * (args.batch_rows // len(hundred) + 1), ignore_index=True).head(args.batch_rows)
            big = big.assign(timestamp=pd.date_range("1970-01-01", periods=len(big), freq="min", tz="UTC"))
            arrow = api.arrow_body(big[["symbol", "timestamp", *features]])
            with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
                t0 = time.perf_counter()
                outcomes = pool.map(_arrow_client, [(host, port, arrow, args.seconds, len(big))] * args.clients)
                elapsed = time.perf_counter() - t0
            predictions = sum(p for p, _ in outcomes)
            results["throughput"] = {"predictions": predictions, "seconds": elapsed,
                                     "failures": sum(f for _, f in outcomes), "clients": args.clients,
                                     "rows_per_request": len(big)}
            if env.get("ALPHAFORGE_MODEL_NAME") == name and not args.no_sequence:  # the temporary registry only
                sequence_data, lookback = _sequence_model(work)
                results["sequence"] = _sequence_requests(host, port, sequence_data, lookback, args.sequence_requests)
            final_info = json.loads(_post_json(host, port, "/model_info", b"{}"))
        finally:
            service.stop()

        if not args.no_unbatched:  # the same concurrent runs with serving.batching off: what batching buys
            unbatched = start_service(cwd=REPO, env={**env, "ALPHAFORGE_BATCHING": "false"},
                                      log_path=work / "service-unbatched.log")
            try:
                results["concurrent_unbatched"] = _concurrency(unbatched, single_body, message, args)
            finally:
                unbatched.stop()
        results["floor_single"] = _floor(single_body, args.single)
        from alphaforge.serving.model import load_served_model

        model_dir = next((work / "cache" / name).iterdir())
        cold = []
        for _ in range(5):
            t0 = time.perf_counter()
            model = load_served_model(model_dir, name=name, version=model_dir.name)
            cold.append((time.perf_counter() - t0) * 1000.0)
        x = one[features].to_numpy(dtype=np.float64)
        inprocess = []
        for i in range(args.single + 100):
            t0 = time.perf_counter()
            model.predict_matrix(x)
            if i >= 100:
                inprocess.append((time.perf_counter() - t0) * 1000.0)

    best = min(("fast", "api"), key=lambda k: results[f"{k}_single"]["p50"])  # type: ignore[index]
    summary = {
        "single_p50_ms": results[f"{best}_single"]["p50"], "single_p99_ms": results[f"{best}_single"]["p99"],
        "single_endpoint": "/v1/predict" if best == "fast" else "/predict",
        "batch100_p50_ms": results[f"{best}_batch100"]["p50"], "batch100_p99_ms": results[f"{best}_batch100"]["p99"],
        "api_single_p50_ms": results["api_single"]["p50"], "api_single_p99_ms": results["api_single"]["p99"],
        "api_batch100_p50_ms": results["api_batch100"]["p50"],
        "grpc_single_p50_ms": results["grpc_single"]["p50"], "grpc_single_p99_ms": results["grpc_single"]["p99"],
        "batched_preds_per_s": results["throughput"]["predictions"] / results["throughput"]["seconds"],
        "floor_single_p50_ms": results["floor_single"]["p50"],
        "inprocess_single_p50_ms": float(np.percentile(inprocess, 50)),
        "cold_load_ms": float(np.median(cold)),
        "service_start_seconds": start_seconds,
        "concurrent_http_preds_per_s": results["concurrent"]["http"]["preds_per_s"],
        "concurrent_http_p50_ms": results["concurrent"]["http"]["p50"],
        "concurrent_http_p99_ms": results["concurrent"]["http"]["p99"],
        "grpc_stream_preds_per_s": results["concurrent"]["grpc_stream"]["preds_per_s"],
        "grpc_stream_p50_ms": results["concurrent"]["grpc_stream"]["p50"],
        "grpc_stream_p99_ms": results["concurrent"]["grpc_stream"]["p99"],
        **({"unbatched_concurrent_http_preds_per_s": results["concurrent_unbatched"]["http"]["preds_per_s"],
            "unbatched_concurrent_http_p99_ms": results["concurrent_unbatched"]["http"]["p99"],
            "unbatched_grpc_stream_preds_per_s": results["concurrent_unbatched"]["grpc_stream"]["preds_per_s"]}
           if "concurrent_unbatched" in results else {}),
        **({f"sequence_{k}": v for k, v in results["sequence"].items() if k in ("mean_ms", "p95_ms", "preds_per_s")}
           if "sequence" in results else {}),
    }
    report = {
        **summary,
        "targets": {"single_p50_ms": 1.0, "single_p99_ms": 3.0, "batch100_p50_ms": 5.0,
                    "batched_preds_per_s": 40_000, "cold_load_ms": 100.0,
                    "concurrent_http_preds_per_s": 3_000, "concurrent_http_p99_ms": 20.0,
                    "grpc_stream_preds_per_s": 10_000},
        "details": results, "model": {"name": name, "source": source, "families": final_info["serving"]["families"],
                                      "row_path": final_info["serving"]["row_wise"]},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_at_start},
        "command": " ".join(["python", "benchmarks/serving.py", *sys.argv[1:]]),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _post_json(host: str, port: int, path: str, body: bytes) -> str:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return text


if __name__ == "__main__":
    main()
