"""Stage ``features``: indicators (``features.set``: basic or alpha158) from past bars only, and forward labels.

Labels are built on the execution price (``evaluate.execution``), per series (a suspension restarts every
indicator and label). Writes data/features/dataset.parquet and reports/features/summary.json.
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
    """Indicators and labels for every validated bar."""
    from alphaforge.features import FEATURE_VERSION, compute_features, compute_labels, feature_columns
    from alphaforge.stages.regimes import load_regime_model
    from alphaforge.validate import as_series

    paths = Paths(root)
    bars = pd.read_parquet(paths.validated_bars)
    series = as_series(bars)  # a suspended symbol's series restart: no indicator or label reaches across
    regime_model = load_regime_model(paths) if params.features.regimes else None
    feats = compute_features(series.drop(columns="segment", errors="ignore"), params.features,
                             regime_model=regime_model)
    labels = compute_labels(series.drop(columns="segment", errors="ignore"), params.labels.horizon,
                            params.evaluate.execution)
    label_cols = [c for c in labels.columns if c not in ("timestamp", "symbol")]
    dataset = pd.concat([feats, labels[label_cols]], axis=1)
    dataset["symbol"] = bars["symbol"].to_numpy()
    write_parquet_atomic(dataset, paths.dataset)
    names = feature_columns(dataset)
    summary = {
        "feature_version": FEATURE_VERSION,
        "n_features": len(names),
        "features": names,
        "feature_set": params.features.set,
        "processing": params.features.processing,
        "skipped": feats.attrs.get("skipped", []),
        "rows": int(len(dataset)),
        "rows_with_label": int(dataset["forward_return"].notna().sum()),
        "horizon": params.labels.horizon,
        "execution": labels.attrs["execution"],
        "regimes": None if regime_model is None else regime_model.describe(),
    }
    write_json_atomic(summary, paths.features_summary)
    log.info("features: %d features x %d rows -> %s", len(names), len(dataset), paths.dataset)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("features", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
