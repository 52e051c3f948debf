"""Stage ``ingest``: read the configured source, apply the repairs ``ingest.repair`` allows, write canonical bars.

Sources: skfolio_sp500 (default), bokeh_stocks, arch_sp500, backtesting_goog, backtesting_eurusd, fastquant_pse, synthetic, or
file (your CSV/Parquet under data/external/). Writes data/raw/bars.parquet, the rows a repair dropped
(data/quarantine/duplicates.parquet) and reports/ingest/summary.json.
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


def describe(bars: pd.DataFrame) -> dict[str, Any]:
    """Rows, symbols, columns and the span of a bar frame."""
    return {
        "rows": int(len(bars)),
        "symbols": int(bars["symbol"].nunique()),
        "columns": list(bars.columns),
        "start": str(bars["timestamp"].min()),
        "end": str(bars["timestamp"].max()),
    }


def warn_if_untracked(path: str, paths: Paths) -> bool:
    """Whether DVC tracks ``path`` (it is under data/external/, a dependency of the ingest stage); warns if not."""
    inside = Path(path).resolve().is_relative_to(paths.external_dir.resolve())
    if not inside:
        log.warning("ingest: %s is outside %s/, which is the only folder dvc.yaml declares as the ingest stage's "
                    "data dependency: `dvc repro` will NOT rerun the pipeline when this file changes. Move it into "
                    "%s/ (and point ingest.path there), or run `dvc repro -f ingest` after editing it.",
                    path, Paths.external_dir, Paths.external_dir)
    return inside


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Read the configured source, apply the repairs ``ingest.repair`` allows, and write canonical bars."""
    from alphaforge.data.ingest import load_source, repair_bars

    paths = Paths(root)
    settings = params.ingest
    tracked = warn_if_untracked(settings.path, paths) if settings.source == "file" and settings.path else None
    loaded = load_source(settings)
    outcome = repair_bars(loaded, settings.repair) if {"symbol", "timestamp"} <= set(loaded.columns) else None
    bars = loaded if outcome is None else outcome.bars
    write_parquet_atomic(bars, paths.raw_bars)
    write_parquet_atomic(pd.DataFrame() if outcome is None else outcome.dropped, paths.ingest_dropped)
    summary = {"source": settings.source, **describe(bars)} if "timestamp" in bars else {
        "source": settings.source, "rows": int(len(bars)), "columns": list(bars.columns)}
    summary["rows_read"] = int(len(loaded))
    summary["repairs"] = {} if outcome is None else outcome.counts
    if tracked is not None:
        summary["path_tracked_by_dvc"] = tracked
    write_json_atomic(summary, paths.ingest_summary)
    log.info("ingest: %s rows of %s -> %s", len(bars), settings.source, paths.raw_bars)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("ingest", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
