"""Stage ``risk``: GARCH vs LightGBM vs EWMA next-bar volatility per symbol, out of sample; VaR backtests (Kupiec).

Fitted on the first walk-forward training window; writes data/risk/forecasts.parquet and reports/risk/metrics.json.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.io import write_json_atomic, write_parquet_atomic
from alphaforge.paths import Paths
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """GARCH vs LightGBM vs EWMA next-bar volatility per symbol, out of sample; VaR backtests (Kupiec)."""
    from alphaforge.risk import compare_risk_panel
    from alphaforge.splits import first_training_end

    paths = Paths(root)
    bars = pd.read_parquet(paths.validated_bars)
    fit_end = first_training_end(params.train.walk_forward, params.labels.horizon, bars["timestamp"])
    metrics, forecasts = compare_risk_panel(bars, fit_end, params.risk)
    write_parquet_atomic(forecasts, paths.risk_forecasts)
    write_json_atomic({"fit_end": str(fit_end), **metrics}, paths.risk_metrics)
    log.info("risk: best by QLIKE %s; mean scores %s", metrics["best_by_qlike"], metrics["mean"])
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("risk", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
