"""Serving latency and throughput, through the real service on loopback, with its floor and in-process cost beside it.

    python benchmarks/serving.py --out benchmarks/results/serving.json

In one run:

* the model: the champion of the configured registry (``MLFLOW_TRACKING_URI``, params.yaml's
  ``serving.model_name``) when there is one; otherwise a LightGBM + ridge stacked ensemble with conformal
  intervals, trained on a synthetic market and registered as champion in a temporary local registry
  (the same kind of tree ensemble the default pipeline promotes);
* the service started with ``bentoml serve`` on a free loopback port (request logging on, as in production);
* sequential single-row requests (``--single`` of them) to ``/v1/predict`` (the fast JSON route, answered in front
  of BentoML) and to ``/predict`` (BentoML's typed API), over one keep-alive connection: p50 / p99 milliseconds;
* sequential 100-row batches to both: p50 / p99;
* throughput: ``--clients`` processes sending Arrow IPC bodies of ``--batch-rows`` rows to ``/v1/predict_arrow``
  for ``--seconds``: predictions per second;
* gRPC single-row p50 / p99;
* concurrent one-row traffic (``serving.batching`` on, as configured), each run ``--concurrent-seconds`` after a
  second of warm-up, with cheap load generators (``benchmarks/loadgen.py``: raw asyncio sockets in one process,
  their CPU reported beside the service's):
  - HTTP closed loop: ``--concurrent-clients`` keep-alive connections posting one row each to ``/v1/predict``
    back to back (saturation: predictions per second, p50 / p99 ms);
  - HTTP open loop: the same connections together offering ``--open-loop-rate`` requests per second on a fixed
    schedule, latency counted from each request's due time (as wrk2 or k6's constant-arrival-rate): the rate
    achieved and p50 / p99 ms;
  - one gRPC ``PredictStream``, each row its own message, at most ``--stream-window`` in flight: predictions per
    second and p50 / p99 ms;
  then the same against a second service with batching off (``--no-unbatched`` skips it);
* the HTTP floor: a bare Starlette endpoint on uvicorn (one worker, same host) answering a one-row POST;
* in process: the same model's :meth:`ServedModel.predict_matrix` on one row, and the cold load of the
  model folder (ms);
* an ensemble with a torch sequence member (ridge + LSTM, lookback 20), registered beside it and served by name
  through the same service: sequential one-window requests (each symbol's last 20 rows, one prediction),
  mean / p95 ms and predictions per second (temporary registry only; ``--no-sequence`` leaves it out);
* the same LightGBM + ridge stack over the alpha158 feature width (162 columns: Qlib's Alpha158 factors, calendar,
  three cross-sectional ranks), registered beside it and served by name: sequential one-row requests to
  ``/v1/predict``, p50 / p99 ms (temporary registry only; ``--no-alpha158`` leaves it out).

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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402

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


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (those still running)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _measured(service: object, run: Any) -> dict[str, Any]:
    """``run()`` (a load generator of :mod:`loadgen`) with the service's CPU (its process tree: server, worker,
    request-log writer) and the client's beside it, as shares of one core over the run's wall time."""
    from alphaforge.processes import descendants

    pids = [service.pid, *descendants(service.pid)]  # type: ignore[attr-defined]
    server_before, started = _cpu_seconds(pids), time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    latencies = result.pop("latencies")
    return {**(_percentiles(latencies) if latencies else {"n": 0}), **result, "wall_seconds": wall,
            "client_cpu_share": result["client_cpu_seconds"] / wall,
            "server_cpu_share": (_cpu_seconds(pids) - server_before) / wall}


def _stream_answers(payload: bytes) -> tuple[int, int]:
    """(answers, errors) in one ``PredictAnswers`` message of the row stream."""
    from alphaforge.serving.proto import alphaforge_serving_pb2 as pb

    reply = pb.PredictAnswers.FromString(payload)
    return len(reply.answers), sum(1 for answer in reply.answers if answer.HasField("error"))


CLIENTS = {
    "http_closed_loop": "benchmarks/loadgen.py http_closed_loop: one process, raw asyncio sockets (uvloop), one "
                        "keep-alive HTTP/1.1 connection per client, the next request as soon as the answer is in",
    "http_open_loop": "benchmarks/loadgen.py http_open_loop: one process, raw asyncio sockets (uvloop); requests due "
                      "at a constant rate go out on the next free connection; latency from each request's due time",
    "grpc_stream": "benchmarks/loadgen.py grpc_stream: one process, one HTTP/2 connection on raw asyncio sockets, "
                   "each row its own gRPC message and DATA frame, at most --stream-window in flight",
}


def _concurrency(service: object, body: bytes, message: object, args: argparse.Namespace) -> dict[str, object]:
    """The concurrent one-row figures of a running service: HTTP clients closed loop (saturation), then open loop
    (a constant offered rate), then one gRPC stream; then the service's batching counters."""
    host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    grpc_host, grpc_port = service.grpc_target.rsplit(":", 1)  # type: ignore[attr-defined]
    request = loadgen.http_request(host, port, "/v1/predict", body)
    seconds, clients = args.concurrent_seconds, args.concurrent_clients
    closed = _measured(service, lambda: loadgen.http_closed_loop(host, port, request, connections=clients,
                                                                 seconds=seconds))
    closed["preds_per_s"] = closed["n"] / seconds
    open_loop = _measured(service, lambda: loadgen.http_open_loop(host, port, request, connections=clients,
                                                                  rate=args.open_loop_rate, seconds=seconds))
    open_loop["achieved_per_s"] = open_loop["answered_in_window"] / seconds  # answers within the window
    stream = _measured(service, lambda: loadgen.grpc_stream(
        grpc_host, int(grpc_port), "/alphaforge.serving.v1.Predictor/PredictStream",
        message.SerializeToString(), _stream_answers, window=args.stream_window, seconds=seconds))  # type: ignore[attr-defined]
    stream["preds_per_s"] = stream["n"] / seconds
    batching = json.loads(_post_json(host, port, "/model_info", b"{}")).get("batching")
    return {"http": {**closed, "client": CLIENTS["http_closed_loop"]},
            "http_open_loop": {**open_loop, "client": CLIENTS["http_open_loop"]},
            "grpc_stream": {**stream, "client": CLIENTS["grpc_stream"]}, "batching": batching}


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


FAMILIES = {"ridge": {"alpha": 10.0},
            "lightgbm": {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 31, "min_child_samples": 100,
                         "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "max_bin": 63}}


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
    trained = train_small_ensemble(work / "trained", n_symbols=20, n_bars=1500, families=FAMILIES)
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


ALPHA158_MODEL = "alphaforge-serving-benchmark-alpha158"
# Qlib's Alpha158 factors (157; VWAP0 needs a VWAP the bars lack), the calendar columns and three cross-sectional
# ranks: 162 feature columns, the width of the alpha158 pipeline's models
ALPHA158_FEATURES = {"set": "alpha158", "cross_sectional_ranks": ("ROC5", "ROC20", "STD20")}


def _alpha158_model(work: Path) -> object:
    """The benchmark's LightGBM + ridge stack trained the same way over the alpha158 feature set
    (:data:`ALPHA158_FEATURES`), registered as ``ALPHA158_MODEL`` in the temporary registry; its dataset."""
    from alphaforge import tracking
    from alphaforge.features import FeatureParams

    sys.path.insert(0, str(REPO / "tests"))
    from ensemble_fixtures import stack_and_register, train_small_ensemble

    (work / "trained-alpha158").mkdir(parents=True)
    trained = train_small_ensemble(work / "trained-alpha158", n_symbols=20, n_bars=1500, families=FAMILIES,
                                   feature_params=FeatureParams(**ALPHA158_FEATURES))
    registered = stack_and_register(trained, work / "stack-alpha158", model_name=ALPHA158_MODEL,
                                    experiment="serving-benchmark")
    tracking.set_model_alias(ALPHA158_MODEL, "champion", registered["version"])
    return trained["dataset"]


def _alpha158_single(host: str, port: int, dataset: object, n: int) -> dict[str, Any]:
    """Sequential one-row requests to the alpha158 model by name over ``/v1/predict``: p50 / p99 ms."""
    from alphaforge.features import feature_columns

    frame = dataset  # type: ignore[assignment]
    features = feature_columns(frame)
    row = frame.dropna(subset=features).tail(1).to_dict("records")[0]
    body = json.dumps({"model": ALPHA158_MODEL, "rows": [{
        "symbol": row["symbol"], "timestamp": row["timestamp"].isoformat(),
        "features": {f: float(row[f]) for f in features}}]}).encode()
    return {**_percentiles(_timed_posts(host, port, "/v1/predict", body, "application/json", n)),
            "features": len(features), "model": ALPHA158_MODEL}


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
    parser.add_argument("--no-alpha158", action="store_true", help="leave out the alpha158-width model's one-row run")
    parser.add_argument("--concurrent-clients", type=int, default=64,
                        help="concurrent one-row HTTP clients (connections of benchmarks/loadgen.py)")
    parser.add_argument("--open-loop-rate", type=float, default=3000.0,
                        help="requests per second the concurrent clients offer together in the open-loop run")
    parser.add_argument("--concurrent-seconds", type=float, default=10.0,
                        help="length of each concurrent run (HTTP closed and open loop, the gRPC stream)")
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
            temporary_registry = env.get("ALPHAFORGE_MODEL_NAME") == name  # models of our own: there only
            if temporary_registry and not args.no_sequence:
                sequence_data, lookback = _sequence_model(work)
                results["sequence"] = _sequence_requests(host, port, sequence_data, lookback, args.sequence_requests)
            if temporary_registry and not args.no_alpha158:
                results["alpha158_single"] = _alpha158_single(host, port, _alpha158_model(work), args.single)
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
        **({"alpha158_single_p50_ms": results["alpha158_single"]["p50"],
            "alpha158_single_p99_ms": results["alpha158_single"]["p99"],
            "alpha158_features": results["alpha158_single"]["features"]} if "alpha158_single" in results else {}),
        **_concurrent_summary(results["concurrent"], ""),
        **(_concurrent_summary(results["concurrent_unbatched"], "unbatched_")
           if "concurrent_unbatched" in results else {}),
        **({f"sequence_{k}": v for k, v in results["sequence"].items() if k in ("mean_ms", "p95_ms", "preds_per_s")}
           if "sequence" in results else {}),
    }
    report = {
        **summary,
        "targets": {"single_p50_ms": 1.0, "single_p99_ms": 3.0, "batch100_p50_ms": 5.0,
                    "batched_preds_per_s": 40_000, "cold_load_ms": 100.0, "alpha158_single_p50_ms": 1.0,
                    "concurrent_http_preds_per_s": 3_000, "concurrent_http_p99_ms": 20.0,
                    "open_loop_http_achieved_per_s": 3_000, "open_loop_http_p99_ms": 20.0,
                    "grpc_stream_preds_per_s": 10_000},
        "notes": {
            "concurrent_http": "closed loop: 64 clients, each sending its next request when its answer is in "
                               "(saturation throughput; by Little's law mean latency = 64 / throughput, so p99 < "
                               "20 ms needs well over 3,000/s)",
            "open_loop_http": "open loop: the 64 clients together offer --open-loop-rate requests/s on a fixed "
                              "schedule; latency counts from each request's due time (no coordinated omission)",
            "cpu_shares": "client_cpu_share / server_cpu_share: CPU seconds per wall second (1.0 = one core) of "
                          "the load generator and of the service's processes (server, worker, request-log "
                          "writer); the client runs on the same machine",
            "clients": CLIENTS},
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


def _concurrent_summary(concurrent: dict[str, Any], prefix: str) -> dict[str, float]:
    """The headline figures of :func:`_concurrency`'s runs (keys prefixed for the unbatched service)."""
    http, open_loop, stream = concurrent["http"], concurrent["http_open_loop"], concurrent["grpc_stream"]
    return {f"{prefix}concurrent_http_preds_per_s": http["preds_per_s"],
            f"{prefix}concurrent_http_p50_ms": http.get("p50"), f"{prefix}concurrent_http_p99_ms": http.get("p99"),
            f"{prefix}concurrent_http_client_cpu_share": http["client_cpu_share"],
            f"{prefix}concurrent_http_server_cpu_share": http["server_cpu_share"],
            f"{prefix}open_loop_http_offered_per_s": open_loop["offered_per_s"],
            f"{prefix}open_loop_http_achieved_per_s": open_loop["achieved_per_s"],
            f"{prefix}open_loop_http_p50_ms": open_loop.get("p50"),
            f"{prefix}open_loop_http_p99_ms": open_loop.get("p99"),
            f"{prefix}open_loop_http_client_cpu_share": open_loop["client_cpu_share"],
            f"{prefix}open_loop_http_server_cpu_share": open_loop["server_cpu_share"],
            f"{prefix}grpc_stream_preds_per_s": stream["preds_per_s"],
            f"{prefix}grpc_stream_p50_ms": stream.get("p50"), f"{prefix}grpc_stream_p99_ms": stream.get("p99"),
            f"{prefix}grpc_stream_client_cpu_share": stream["client_cpu_share"],
            f"{prefix}grpc_stream_server_cpu_share": stream["server_cpu_share"]}


def _post_json(host: str, port: int, path: str, body: bytes) -> str:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return text


if __name__ == "__main__":
    main()
