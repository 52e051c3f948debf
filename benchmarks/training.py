"""Training cost at scale: a walk-forward LightGBM pass and one epoch of each torch family.

    python benchmarks/training.py --out benchmarks/results/training.json

* LightGBM: one walk-forward pass (5 expanding folds, purge + embargo) on ``--rows``
  rows (default 1,000,000: 500 symbols x 2,000 bars of the ``synthetic`` source) with
  60 features, using the params.yaml defaults (63 histogram bins, row and feature
  subsampling).
* torch: one training epoch of each sequence family (LSTM, GRU, Transformer, CNN) over
  ``--windows`` windows of ``--lookback`` bars (default 1,000,000 windows).

Each measurement runs in its own child process so its peak resident memory
(``ru_maxrss``) is its own. Results are written as JSON; nothing is timed in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SEQUENCE_FAMILIES = ("lstm", "gru", "transformer", "cnn")
EXTRA_RANKS = (
    "log_return_1", "log_return_2", "log_return_3", "log_return_10", "log_return_40", "sma_ratio_5", "sma_ratio_10",
    "sma_ratio_20", "sma_ratio_50", "ema_ratio_5", "ema_ratio_10", "ema_ratio_20", "ema_ratio_50", "macd",
    "macd_hist", "volatility_5", "volume_ratio",
)


def _dataset(rows: int):
    """A synthetic panel of ``rows`` rows with 60 features and labels."""
    import pandas as pd

    from alphaforge.data.synthetic import SyntheticParams, make_synthetic
    from alphaforge.features import FeatureParams, compute_features, compute_labels

    n_symbols = 500
    bars, _ = make_synthetic(SyntheticParams(n_symbols=n_symbols, n_bars=max(rows // n_symbols, 300)))
    params = FeatureParams(
        return_horizons=(1, 2, 3, 5, 10, 20, 40, 60), ma_windows=(5, 10, 20, 50, 100, 200),
        volatility_windows=(5, 10, 20, 60),
        cross_sectional_ranks=("log_return_5", "log_return_20", "volatility_20", "log_return_60", "volatility_60",
                               "rsi", "bollinger_position", *EXTRA_RANKS),
    )
    features = compute_features(bars, params)
    labels = compute_labels(bars, horizon=5)
    return pd.concat([features, labels.drop(columns=["timestamp", "symbol"])], axis=1)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_lightgbm(rows: int) -> dict[str, object]:
    from alphaforge.config import load_params
    from alphaforge.features import feature_columns
    from alphaforge.splits import WalkForward, WalkForwardParams
    from alphaforge.train import model_factory, walk_forward_train

    dataset = _dataset(rows)
    hyperparameters = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train.models["lightgbm"]
    splitter = WalkForward(WalkForwardParams(n_splits=5, min_train_size=500, embargo=5), purge=5)
    started = time.perf_counter()
    result = walk_forward_train(
        dataset, splitter, model_factory("lightgbm", task="regression", hyperparameters=hyperparameters),
        fit_final_model=False,
    )
    seconds = time.perf_counter() - started
    return {
        "rows": int(len(dataset)), "features": len(feature_columns(dataset)), "folds": len(result.folds),
        "seconds": round(seconds, 2), "peak_rss_mb": round(_peak_mb(), 1),
        "mean_fold_rank_ic": result.metrics()["mean_fold_rank_ic"], "hyperparameters": hyperparameters,
    }


def measure_epoch(family: str, windows: int, lookback: int) -> dict[str, object]:
    import numpy as np

    from alphaforge.models.registry import make_forecaster

    n_symbols = 500
    rows = windows + n_symbols * (lookback - 1)
    dataset = _dataset(rows)
    model = make_forecaster(family, task="regression", params={
        "lookback": lookback, "hidden_size": 32, "max_epochs": 1, "patience": 1, "batch_size": 1024,
        "validation_fraction": 0.05,
    })
    fit_mask = np.isfinite(dataset["forward_return"].to_numpy())
    started = time.perf_counter()
    model.fit(dataset, dataset["forward_return"], fit_mask=fit_mask)
    seconds = time.perf_counter() - started
    return {"family": family, "rows": int(len(dataset)), "windows": int(fit_mask.sum()), "lookback": lookback,
            "epoch_seconds": round(seconds, 2), "peak_rss_mb": round(_peak_mb(), 1)}


def _child(kind: str, args: argparse.Namespace) -> dict[str, object]:
    """Run one measurement in a fresh interpreter and read its JSON line."""
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(args.rows), "--windows", str(args.windows),
           "--lookback", str(args.lookback)]
    print(f"benchmark: {kind} ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"benchmark: {kind}: {result}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"), help="JSON to write")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the LightGBM walk-forward")
    parser.add_argument("--windows", type=int, default=1_000_000, help="training windows per torch epoch")
    parser.add_argument("--lookback", type=int, default=20, help="bars per window")
    parser.add_argument("--families", nargs="*", default=list(SEQUENCE_FAMILIES), help="torch families to time")
    parser.add_argument("--skip-lightgbm", action="store_true", help="time only the torch epochs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "lightgbm":
            result = measure_lightgbm(args.rows)
        else:
            result = measure_epoch(args.child, args.windows, args.lookback)
        print(json.dumps(result))
        return
    results: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if not args.skip_lightgbm:
        results["lightgbm_walk_forward"] = _child("lightgbm", args)
    results["torch_epochs"] = [_child(family, args) for family in args.families]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
