"""Benchmark: vectorised feature library vs the plain per-symbol pandas reference.

Generates seeded random OHLCV bars (default 500 symbols x 2,500 bars) with NumPy,
computes the features with :func:`alphaforge.features.compute_features` and with
``benchmarks/feature_reference.py`` (pandas groupby-rolling/ewm per symbol) in the
same process, checks that both give the same columns and values, and writes the
timings as JSON.

    PYTHONPATH=src python benchmarks/features.py --out benchmarks/results/features.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feature_reference import reference_features  # noqa: E402

from alphaforge.features import FEATURE_VERSION, FeatureParams, compute_features, feature_columns  # noqa: E402


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


def _timed(function: Callable[[], pd.DataFrame], repeats: int) -> tuple[float, float, pd.DataFrame]:
    """Median wall time and median CPU time of this process over ``repeats`` calls, and the last result.

    CPU time is reported too because a shared machine's other load inflates wall time.
    """
    wall, cpu = [], []
    result = pd.DataFrame()
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return statistics.median(wall), statistics.median(cpu), result


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
    args = parser.parse_args(argv)

    bars = random_ohlcv(args.symbols, args.bars, args.seed)
    params = FeatureParams()
    compute_features(bars.iloc[: args.bars * 2], params)  # warm-up: lazy imports, first-call costs

    load_before = os.getloadavg()[0]
    library_s, library_cpu_s, features = _timed(lambda: compute_features(bars, params), args.repeats)
    reference_s, reference_cpu_s, reference = _timed(lambda: reference_features(bars, params), args.reference_repeats)

    columns = feature_columns(features)
    if columns != feature_columns(reference):
        raise SystemExit(f"library and reference columns differ: {columns} vs {feature_columns(reference)}")
    lib_values = features[columns].to_numpy()
    ref_values = reference[columns].to_numpy()
    if not np.array_equal(np.isnan(lib_values), np.isnan(ref_values)):
        raise SystemExit("library and reference disagree on which values are NaN")
    both = ~np.isnan(lib_values)
    max_abs_diff = float(np.max(np.abs(lib_values[both] - ref_values[both])))

    n_rows = len(bars)
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
