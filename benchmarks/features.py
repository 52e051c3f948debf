"""Benchmark: vectorised feature library vs the plain per-symbol pandas reference.

Generates seeded random OHLCV bars (default 500 symbols x 2,500 bars) with NumPy,
computes the features with :func:`alphaforge.features.compute_features` and with
``benchmarks/feature_reference.py`` (pandas groupby-rolling/ewm per symbol) in the
same process, checks that both give the same columns and values, and writes the
timings as JSON. It also times the online path: the incremental engine updating
every symbol one timestamp at a time (cost per symbol-bar, feature updates per second,
checked against the batch values) and the Redis online store (pipelined write and read
latency per symbol, single-symbol read latency) at ``--redis-url``.

    PYTHONPATH=src python benchmarks/features.py --out benchmarks/results/features.json

``--feature-set alpha158`` times the Alpha158 batch library and incremental engine instead (500 symbols x 2,500
bars; targets: >= 1M rows/s batch, <= 10 us per symbol-bar incremental) and writes them under the key
``alpha158`` of the same file, keeping the basic set's figures. Its numba kernels' one-off costs stay out of the
timed repeats and are reported beside them: ``compile_seconds`` (a fresh process with an empty numba cache) and
``kernel_load_seconds`` (loading them from the cache, what a new process pays once they are compiled):

    PYTHONPATH=src python benchmarks/features.py --feature-set alpha158 --repeats 3 \
        --out benchmarks/results/features.json --note "idle machine"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feature_reference import reference_features  # noqa: E402

from alphaforge import alpha158  # noqa: E402
from alphaforge.features import FEATURE_VERSION, FeatureParams, compute_features, feature_columns  # noqa: E402
from alphaforge.featurestore.config import FeatureStoreParams  # noqa: E402
from alphaforge.featurestore.incremental import IncrementalEngine  # noqa: E402
from alphaforge.featurestore.online import OnlineStore  # noqa: E402


def random_ohlcv(n_symbols: int, n_bars: int, seed: int) -> pd.DataFrame:
    """Seeded random daily OHLCV in the canonical long schema, sorted by symbol then time."""
    rng = np.random.default_rng(seed)
    volatility = rng.uniform(0.005, 0.03, size=(n_symbols, 1))
    returns = rng.standard_normal((n_symbols, n_bars)) * volatility
    close = rng.uniform(5.0, 500.0, size=(n_symbols, 1)) * np.exp(np.cumsum(returns, axis=1))
    open_ = close * np.exp(rng.standard_normal((n_symbols, n_bars)) * volatility / 3)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal((n_symbols, n_bars))) * volatility / 2)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal((n_symbols, n_bars))) * volatility / 2)
    volume = np.floor(rng.lognormal(mean=12.0, sigma=1.0, size=(n_symbols, n_bars)))
    timestamps = pd.date_range("2010-01-04", periods=n_bars, freq="B", tz="UTC")
    symbols = np.array([f"SYM{i:04d}" for i in range(n_symbols)], dtype=object)
    return pd.DataFrame(
        {
            "timestamp": np.tile(timestamps, n_symbols),
            "symbol": np.repeat(symbols, n_bars),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": volume.ravel(),
        }
    )


def _timed(function: Callable[[], pd.DataFrame], repeats: int) -> tuple[list[float], list[float], pd.DataFrame]:
    """Wall and CPU times of this process for each of ``repeats`` calls, and the last result.

    CPU time is reported too because a shared machine's other load inflates wall time. The previous result is
    dropped before each call: a call's output is not kept alive while the next one allocates its own (the first
    touch of fresh memory, GBs for alpha158, costs system time that recycled memory does not; the first call's
    times show it).
    """
    wall, cpu = [], []
    result = pd.DataFrame()
    for _ in range(repeats):
        del result
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return wall, cpu, result


def kernel_seconds() -> dict[str, float]:
    """The Alpha158 kernels' one-off costs, outside the timed repeats: compiling them (in a fresh process with an
    empty numba cache, as the first run after an install pays) and loading them from the on-disk cache (what a
    new process pays once the cache exists: this process's warm-up)."""
    code = "from alphaforge import alpha158; print(alpha158.warm_up())"
    with tempfile.TemporaryDirectory() as cache:
        compiled = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_CACHE_DIR": cache},
                                  check=True, capture_output=True, text=True)
    return {"compile_seconds": round(float(compiled.stdout.split()[-1]), 3),
            "kernel_load_seconds": round(alpha158.warm_up(), 3)}


def incremental_benchmark(bars: pd.DataFrame, features: pd.DataFrame, n_symbols: int, n_bars: int,
                          timed_bars: int, params: FeatureParams) -> dict[str, object]:
    """The engine fed ``timed_bars`` timestamps of every symbol (after a warm-up of the longest window, so the
    steady state is timed), one vectorised update per timestamp; checked against the batch ``features``."""
    names = feature_columns(features)
    engine = IncrementalEngine(params, names)
    columns = {c: bars[c].to_numpy().reshape(n_symbols, n_bars) for c in engine.input_columns}
    symbols = bars["symbol"].to_numpy()[::n_bars].tolist()
    stamps = bars["timestamp"].iloc[:n_bars].astype("int64").to_numpy()
    warm_up = min(60, n_bars - timed_bars)
    got = np.empty((n_symbols, warm_up + timed_bars, len(names)))

    def run(lo: int, hi: int) -> None:
        for t in range(lo, hi):
            got[:, t] = engine.update(int(stamps[t]), symbols, {c: v[:, t] for c, v in columns.items()})

    run(0, warm_up)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    run(warm_up, warm_up + timed_bars)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    expected = features[names].to_numpy().reshape(n_symbols, n_bars, len(names))[:, : warm_up + timed_bars]
    both = ~np.isnan(expected)
    if not np.array_equal(both, ~np.isnan(got)):
        raise SystemExit("incremental and batch disagree on which values are NaN")
    symbol_bars = n_symbols * timed_bars
    return {
        "n_symbols": n_symbols,
        "timed_timestamps": timed_bars,
        "n_features": len(names),
        "microseconds_per_symbol_bar": round(wall / symbol_bars * 1e6, 3),
        "cpu_microseconds_per_symbol_bar": round(cpu / symbol_bars * 1e6, 3),
        "microseconds_per_timestamp_update": round(wall / timed_bars * 1e6, 1),
        "feature_updates_per_s": round(symbol_bars * len(names) / wall),
        "max_abs_diff_vs_batch": float(np.max(np.abs(got[both] - expected[both]))),
        "targets": {"microseconds_per_symbol_bar": 5.0, "feature_updates_per_s": 10_000_000},
    }


def store_benchmark(url: str, n_symbols: int, n_features: int, repeats: int) -> dict[str, object]:
    """Redis write and read latency per symbol (pipelined: all symbols in one round trip), and the latency of
    reading one symbol (arrays, and as the DataFrame serving gets), under a key prefix deleted afterwards."""
    prefix = f"alphaforge-bench:{os.getpid()}:"
    store = OnlineStore.from_params(FeatureStoreParams(redis_url=url, key_prefix=prefix))
    symbols = [f"SYM{i:04d}" for i in range(n_symbols)]
    names = [f"feature_{i}" for i in range(n_features)]
    values = np.random.default_rng(0).standard_normal((n_symbols, n_features))
    try:
        store.write(0, symbols, names, values, FEATURE_VERSION)  # warm-up: connection, schema
        writes, reads, singles, frames = [], [], [], []
        for i in range(repeats):
            start = time.perf_counter()
            store.write(i, symbols, names, values, FEATURE_VERSION)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.read_vectors(symbols)
            reads.append(time.perf_counter() - start)
        round_trips = []
        for i in range(repeats * 20):
            start = time.perf_counter()
            store.client.get(f"{prefix}{symbols[i % n_symbols]}")  # the floor: one bare redis-py GET
            round_trips.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.read_vectors(symbols[i % n_symbols])
            singles.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.read(symbols[i % n_symbols])
            frames.append(time.perf_counter() - start)
    finally:
        store.clear()
    return {
        "backend": "redis",
        "n_symbols": n_symbols,
        "n_features": n_features,
        "write_microseconds_per_symbol_pipelined": round(statistics.median(writes) / n_symbols * 1e6, 2),
        "read_microseconds_per_symbol_pipelined": round(statistics.median(reads) / n_symbols * 1e6, 2),
        "read_one_symbol_microseconds": round(statistics.median(singles) * 1e6, 1),
        "read_one_symbol_as_dataframe_microseconds": round(statistics.median(frames) * 1e6, 1),
        "bare_redis_get_microseconds": round(statistics.median(round_trips) * 1e6, 1),
        "repeats": repeats,
        "targets": {"read_one_symbol_microseconds": 100.0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Time alphaforge.features.compute_features against a plain per-symbol pandas "
            "groupby-rolling reference on seeded random OHLCV, check they agree, and write JSON "
            "(rows per second for each, wall and CPU-time speedup, feature count, machine). "
            "Library time is the median of --repeats runs after a warm-up; the reference runs --reference-repeats "
            "times."
        )
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--symbols", type=int, default=500, help="number of symbols (default 500)")
    parser.add_argument("--bars", type=int, default=2500, help="bars per symbol (default 2500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the bars (default 0)")
    parser.add_argument("--repeats", type=int, default=5, help="library runs; the median is reported (default 5)")
    parser.add_argument(
        "--reference-repeats", type=int, default=1, help="reference runs; the median is reported (default 1)"
    )
    parser.add_argument("--timed-bars", type=int, default=250,
                        help="timestamps of every symbol timed through the incremental engine (default 250)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="the Redis server for the store latencies; 'none' leaves them out")
    parser.add_argument("--store-repeats", type=int, default=20, help="write/read rounds timed (default 20)")
    parser.add_argument("--feature-set", choices=("basic", "alpha158"), default="basic",
                        help="features.set (default basic); alpha158 has no pandas reference here (its per-operator "
                             "reference is tests/test_alpha158.py), so only the library and incremental engine are "
                             "timed, and the figures go under the key 'alpha158' of --out (the rest is kept)")
    parser.add_argument("--note", default="",
                        help="free text stored with the alpha158 figures (e.g. that the machine was shared)")
    args = parser.parse_args(argv)

    bars = random_ohlcv(args.symbols, args.bars, args.seed)
    params = (FeatureParams() if args.feature_set == "basic"
              else FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5", "ROC20", "STD20")))
    kernel = kernel_seconds() if args.feature_set == "alpha158" else {}
    compute_features(bars.iloc[: args.bars * 2], params)  # warm-up: lazy imports, first-call costs

    load_before = os.getloadavg()[0]
    library_walls, library_cpus, features = _timed(lambda: compute_features(bars, params), args.repeats)
    library_s, library_cpu_s = statistics.median(library_walls), statistics.median(library_cpus)
    columns = feature_columns(features)
    n_rows = len(bars)
    if args.feature_set == "alpha158":
        alpha = {
            "feature_set": "alpha158", "feature_version": FEATURE_VERSION,
            "n_symbols": args.symbols, "n_bars_per_symbol": args.bars, "n_rows": n_rows, "n_features": len(columns),
            "library_seconds": round(library_s, 4), "library_rows_per_s": round(n_rows / library_s),
            "library_cpu_seconds": round(library_cpu_s, 4), "library_repeats": args.repeats,
            "library_seconds_each": [round(x, 4) for x in library_walls],
            "library_cpu_seconds_each": [round(x, 4) for x in library_cpus],
            "library_cpu_rows_per_s": round(n_rows / library_cpu_s),
            **kernel,
            "incremental": incremental_benchmark(bars, features, args.symbols, args.bars,
                                                 min(args.timed_bars, args.bars - 1), params),
            "targets": {"library_rows_per_s": 1_000_000, "incremental_microseconds_per_symbol_bar": 10.0},
            "load_average_1min_at_start": round(load_before, 2), "cpu_count": os.cpu_count(),
            "note": args.note,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        alpha["incremental"]["targets"] = {"microseconds_per_symbol_bar": 10.0}
        # the basic set's figures stay in the same file; the alpha158 run fills its own key
        result = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "features"}
        result["alpha158"] = alpha
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(alpha, indent=2))
        return 0
    reference_walls, reference_cpus, reference = _timed(lambda: reference_features(bars, params),
                                                        args.reference_repeats)
    reference_s, reference_cpu_s = statistics.median(reference_walls), statistics.median(reference_cpus)

    if columns != feature_columns(reference):
        raise SystemExit(f"library and reference columns differ: {columns} vs {feature_columns(reference)}")
    lib_values = features[columns].to_numpy()
    ref_values = reference[columns].to_numpy()
    if not np.array_equal(np.isnan(lib_values), np.isnan(ref_values)):
        raise SystemExit("library and reference disagree on which values are NaN")
    both = ~np.isnan(lib_values)
    max_abs_diff = float(np.max(np.abs(lib_values[both] - ref_values[both])))

    result = {
        "benchmark": "features",
        "feature_version": FEATURE_VERSION,
        "n_symbols": args.symbols,
        "n_bars_per_symbol": args.bars,
        "n_rows": n_rows,
        "n_features": len(columns),
        "library_seconds": round(library_s, 4),
        "reference_seconds": round(reference_s, 4),
        "library_rows_per_s": round(n_rows / library_s),
        "reference_rows_per_s": round(n_rows / reference_s),
        "speedup": round(reference_s / library_s, 2),
        "library_cpu_seconds": round(library_cpu_s, 4),
        "reference_cpu_seconds": round(reference_cpu_s, 4),
        "speedup_cpu": round(reference_cpu_s / library_cpu_s, 2),
        "max_abs_diff_vs_reference": max_abs_diff,
        "library_repeats": args.repeats,
        "reference_repeats": args.reference_repeats,
        "seed": args.seed,
        "incremental": incremental_benchmark(bars, features, args.symbols, args.bars,
                                             min(args.timed_bars, args.bars - 1), params),
        "online_store": (store_benchmark(args.redis_url, args.symbols, len(columns), args.store_repeats)
                         if args.redis_url != "none" else None),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_at_start": round(load_before, 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
