"""``alphaforge monitor``: served traffic (the request log) against the champion's reference data: drift, live IC
and hit rate, degradation, lag, and the A/B verdict when a challenger was served; reports/monitor/ (``index.html``
reads them all, ``report.html`` is Evidently's drift report, ``ab/report.json`` the A/B report). Not a DVC stage:
the daily ``monitor`` DAG runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages._common import read_spec
from alphaforge.stages._main import stage_main
from alphaforge.stages.drift import champion_reference_end

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".", hours: float | None = None, log_dir: str | None = None
        ) -> dict[str, Any]:
    """Served traffic against the champion's reference data: drift, live IC and hit rate, degradation, lag."""
    from alphaforge.drift import pick_prediction_column, split_windows
    from alphaforge.io import atomic_write
    from alphaforge.live_monitor.pages import monitor_page
    from alphaforge.monitor import run_monitor
    from alphaforge.train import task_of

    settings = params.monitor
    if hours is not None:
        settings = settings.model_copy(update={"lookback_hours": hours})
    paths = Paths(root)
    dataset = pd.read_parquet(paths.dataset)
    spec = read_spec(paths)
    reference_end = champion_reference_end(params)
    reference = split_windows(dataset, params.drift, reference_end).reference
    reference = reference[["timestamp", "symbol", *spec["features"]]]
    source = paths.stack_oof if paths.stack_oof.exists() else paths.oof
    if source.exists():
        oof = pd.read_parquet(source)
        column = pick_prediction_column(oof, params.drift)
        if column is not None:
            reference = reference.merge(oof[["timestamp", "symbol", column]].rename(columns={column: "prediction"}),
                                        on=["timestamp", "symbol"], how="left", validate="one_to_one")
    if task_of(spec["target"]) == "classification" and settings.prediction_centre != 0.5:
        settings = settings.model_copy(update={"prediction_centre": 0.5})
    realised = dataset[["timestamp", "symbol", settings.return_column]].dropna()
    result = run_monitor(log_dir or settings.log_dir, reference, realised, settings, drift_params=params.drift,
                         features=spec["features"], out_dir=paths.monitor_dir)
    ab, reason = _ab_verdict(params, dataset, log_dir or settings.log_dir, paths.monitor_dir / "ab")
    result.summary["ab"] = {"verdict": ab["verdict"], "compared_bars": ab["compared_bars"]} if ab else {"reason": reason}
    page = monitor_page(result.summary, result.live, ab, reason,
                        drift_report="report.html" if "report" in result.paths else None)
    atomic_write(paths.monitor_dir / "index.html", lambda tmp: Path(tmp).write_text(page))
    return result.summary


def _ab_verdict(params: Params, dataset: pd.DataFrame, log_dir: str, out_dir: Path
                ) -> tuple[dict[str, Any] | None, str | None]:
    """``alphaforge ab report`` over the same request log (``ab.*`` settings), or why there is no verdict."""
    from alphaforge.ab import run_ab_report
    from alphaforge.schema import DataError

    if "forward_return_1" not in dataset.columns:
        return None, "the dataset has no forward_return_1 (the next-bar execution return the A/B test scores)"
    try:
        report = run_ab_report(log_dir, dataset[["timestamp", "symbol", "forward_return_1"]], params.ab,
                               cost_bps=params.evaluate.cost_bps, out_dir=str(out_dir))
    except DataError as err:  # no challenger traffic is the usual case: said on the page, not a failure
        return None, str(err)
    log.info("monitor: A/B verdict %s over %d bars", report["verdict"], report["compared_bars"])
    return report, None


def _options(parser: Any) -> None:
    parser.add_argument("--hours", type=float, default=None, help="look back this many hours (monitor.lookback_hours)")
    parser.add_argument("--log-dir", dest="log_dir", default=None, help="the request log folder (monitor.log_dir)")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("monitor", run, argv, options=_options, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
