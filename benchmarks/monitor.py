"""Benchmark: the streaming monitor's lag, from an appended log line to the updated figure in live.json.

A follower (``alphaforge.live_monitor.follow``, the loop behind ``alphaforge monitor --follow``) runs in its own
process over a seeded market of ``--symbols`` symbols: ``--warm-bars`` bars are written before it starts (its
rolling windows and the Hedge start full, as in steady state), then ``--bars`` bars one at a time, each as two
events, the way the live loop produces them:

* **return**: the bar goes into the stream's bar log (SQLite, as ``alphaforge stream`` writes it); it matures
  the predictions of two bars earlier (horizon 1), whose outcomes also move the online Hedge weights in Redis
  (``--redis-url``; ``--no-redis`` leaves them out);
* **request**: the champion's predictions for the bar go into the service's request log (SQLite, one request).

The lag of an event is the time from the commit of its rows to the moment this process sees the figure in
live.json that counts them (``matured_rows`` or ``requests``), read every 2 ms; the follower polls every
``monitor.follow_poll_seconds`` (100 ms by default) and each event comes at a random point of that cycle, so
the expected lag is about half the interval plus the update.

    PYTHONPATH=src python benchmarks/monitor.py --out benchmarks/results/monitor.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from alphaforge.drift import DriftParams
from alphaforge.ensemble import HedgeEnsemble
from alphaforge.featurestore.stream import Bar, BarLog
from alphaforge.live_monitor import DirectOutcomes, follow
from alphaforge.monitor import MonitorParams, RequestLog
from alphaforge.serving.online_weights import OnlineWeights, RedisState

FEATURES = ["good", "bad", "noise"]


def _family_predictions(x: np.ndarray) -> np.ndarray:
    return x[:, [0, 1]]


def _follower(folder: str, poll_seconds: float, redis_url: str | None, key: str) -> None:
    """The follower process (until the parent terminates it)."""
    outcomes = None
    if redis_url:
        seed = HedgeEnsemble(["good", "bad"], learning_rate=None, loss="sign").to_dict()
        outcomes = DirectOutcomes(OnlineWeights.open(seed, store=RedisState(redis_url), key=key),
                                  _family_predictions, FEATURES)
    params = MonitorParams(follow_poll_seconds=poll_seconds, retrain_cooldown="1h")
    follow(params, log_dir=Path(folder) / "requests", bar_log=Path(folder) / "bars.sqlite", horizon=1,
           cost_rate=0.0005, out_dir=Path(folder) / "live", outcomes=outcomes,
           drift=DriftParams(alerts_path=str(Path(folder) / "alerts.jsonl")))


class Market:
    def __init__(self, folder: Path, n_symbols: int, n_bars: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.symbols = [f"S{i:03d}" for i in range(n_symbols)]
        self.opens = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_bars + 2, n_symbols)), axis=0))
        self.noise = rng.normal(0, 0.002, (n_bars + 2, n_symbols, 3))
        self.start_ns = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1e9)
        self.bar_log = BarLog(folder / "bars.sqlite")
        self.request_log = RequestLog(folder / "requests")

    def stamp_ns(self, t: int) -> int:
        return self.start_ns + t * 86_400 * 10**9

    def write_bar(self, t: int) -> None:
        self.bar_log.append(self.stamp_ns(t), [Bar(0, self.stamp_ns(t), s, {"open": float(self.opens[t, i]),
                                                                         "close": float(self.opens[t, i])})
                                               for i, s in enumerate(self.symbols)], None)

    def write_requests(self, t: int) -> None:
        realised = np.log(self.opens[t + 2] / self.opens[t + 1])
        features = np.column_stack([realised, -realised, np.zeros_like(realised)]) + self.noise[t]
        self.request_log.append_block(
            request_id=f"r{t}", received_at=datetime.now(UTC), model_name="bench", model_version="1",
            variant="champion", symbols=self.symbols,
            timestamps_us=np.full(len(self.symbols), self.stamp_ns(t) // 1000), feature_names=FEATURES,
            features=features, predictions=features[:, 0], latency_ms=0.5)


def _wait(path: Path, field: str, target: int, timeout: float) -> float:
    """Wall time at which live.json's champion ``field`` first reaches ``target`` (read every 2 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = json.loads(path.read_text())["variants"]["champion"][field]
        except (OSError, ValueError, KeyError):
            value = -1
        if value >= target:
            return time.time()
        time.sleep(0.002)
    raise TimeoutError(f"live.json {field} did not reach {target} in {timeout} s")


def _summary(lags: list[float]) -> dict[str, float | int]:
    array = np.asarray(lags) * 1000
    return {"events": int(array.size), "p50_ms": round(float(np.quantile(array, 0.5)), 2),
            "p95_ms": round(float(np.quantile(array, 0.95)), 2), "max_ms": round(float(array.max()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/monitor.json"))
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--warm-bars", type=int, default=300)
    parser.add_argument("--bars", type=int, default=200, help="measured bars (two events each)")
    parser.add_argument("--poll-seconds", type=float, default=MonitorParams().follow_poll_seconds)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true", help="leave the online weights out")
    args = parser.parse_args(argv)

    redis_url = None if args.no_redis else args.redis_url
    key = f"alphaforge-bench:hedge:{uuid.uuid4().hex[:8]}:bench:1"
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        folder = Path(tmp)
        market = Market(folder, args.symbols, args.warm_bars + args.bars)
        for t in range(args.warm_bars):
            market.write_bar(t)
            market.write_requests(t)
        live = folder / "live" / "live.json"
        child = multiprocessing.get_context("spawn").Process(
            target=_follower, args=(str(folder), args.poll_seconds, redis_url, key), daemon=True)
        child.start()
        try:
            _wait(live, "matured_rows", (args.warm_bars - 2) * args.symbols, timeout=120)
            request_lags, return_lags = [], []
            pause = np.random.default_rng(1).uniform(0, args.poll_seconds, (args.bars, 2))
            for i, t in enumerate(range(args.warm_bars, args.warm_bars + args.bars)):
                time.sleep(pause[i, 0])  # an event at a random point of the poll cycle, not just after an update
                market.write_bar(t)
                committed = time.time()
                return_lags.append(_wait(live, "matured_rows", (t - 1) * args.symbols, 10) - committed)
                time.sleep(pause[i, 1])
                market.write_requests(t)
                committed = time.time()
                request_lags.append(_wait(live, "requests", (t + 1) * args.symbols, 10) - committed)
            figures = json.loads(live.read_text())
        finally:
            child.terminate()
            child.join(10)
            market.bar_log.close()
            market.request_log.close()
            if redis_url:
                RedisState(redis_url).client.delete(key)
    result = {
        "benchmark": "monitor --follow lag: appended log line -> updated figure in live.json",
        "created_at": datetime.now(UTC).isoformat(),
        "command": "PYTHONPATH=src python benchmarks/monitor.py --out benchmarks/results/monitor.json",
        "setup": {"symbols": args.symbols, "warm_bars": args.warm_bars, "measured_bars": args.bars,
                  "poll_seconds": args.poll_seconds, "online_weights_in_redis": redis_url is not None,
                  "follower_reported_lag_seconds": figures["lag_seconds"],
                  "hedge_updates": (figures["online_weights"]["last"] or {}).get("n_updates")},
        "request_to_figure": _summary(request_lags),
        "return_to_figure": _summary(return_lags),
        "all_events": _summary(request_lags + return_lags),
        "goal": "p95 < 1000 ms",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average_1min_at_start": round(load_before, 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("request_to_figure", "return_to_figure", "all_events")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
