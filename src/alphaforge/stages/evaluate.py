"""Stage ``evaluate``: every model and every naive baseline traded out of sample as it could have been.

Same strategy, execution (a signal from bar t trades at t+1), tradability and costs for all; the leaderboard per
strategy (gross/net return, Sharpe, IR, drawdown, turnover, costs, IC and rank IC with HAC t, deflated Sharpe,
PBO), reports/evaluate/metrics.json, plots, Alphalens-style tear sheets, model cards and an HTML report, logged
into the pipeline's MLflow run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.io import write_json_atomic, write_text_atomic
from alphaforge.paths import Paths
from alphaforge.stages._common import candidate_frame, load_market, read_run_reference, read_spec
from alphaforge.stages._main import stage_main
from alphaforge.stages._overfitting import overfitting_by_candidate

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Out-of-sample metrics of every model and the naive baselines, traded as they could have been; plots,
    tear sheets, leaderboard; into the same MLflow run."""
    from alphaforge import tracking
    from alphaforge.evaluate import evaluate_oof, leaderboard, write_plots
    from alphaforge.report import html_report
    from alphaforge.tearsheet import write_tear_sheets
    from alphaforge.train import coverage_of

    paths = Paths(root)
    spec = read_spec(paths)
    if spec["target"] == "forward_volatility":
        return _evaluate_volatility(params, pd.read_parquet(paths.oof), spec, paths)
    oof, models, centre = candidate_frame(spec, paths)
    candidates = list(models)
    market = load_market(params, paths)
    evaluation = evaluate_oof(oof, params.evaluate, models=models, market=market, horizon=params.labels.horizon)
    metrics = evaluation.to_metrics_json()
    train_metrics = json.loads(paths.train_metrics.read_text())
    overfitting = overfitting_by_candidate(params, oof, evaluation, candidates, centre, market, paths)
    for family in candidates:
        metrics["models"][family]["interval_coverage"] = coverage_of(
            oof[spec["target"]].to_numpy(dtype=float), oof[f"lower_{family}"].to_numpy(dtype=float),
            oof[f"upper_{family}"].to_numpy(dtype=float),
        ) if f"lower_{family}" in oof.columns else None
        metrics["models"][family]["overfitting"] = {
            "dsr": overfitting[family]["dsr"],
            "pbo": {k: v for k, v in overfitting[family]["pbo"].items() if k != "logits"},
            "n_trials": overfitting[family]["n_trials"],
        }
    table = leaderboard(evaluation, overfitting)
    write_json_atomic(metrics, paths.evaluate_metrics)
    write_text_atomic(table + "\n", paths.leaderboard)
    plots = write_plots(evaluation, paths.plots_dir)
    tear_sheets = write_tear_sheets(evaluation, paths.plots_dir)
    cards = _model_cards(params, oof, spec, metrics, overfitting, train_metrics, paths)
    page = html_report(
        "alphaforge: out-of-sample evaluation",
        [("Leaderboard", f"```\n{table}\n```"), *[(f"Model card: {f}", card) for f, card in cards.items()]],
        [plots["equity.png"], plots["ic_by_fold.png"], *tear_sheets.values(),
         *[paths.plots_dir / f"pbo_{f}.png" for f in candidates]],
    )
    write_text_atomic(page, paths.report_html)
    reference = read_run_reference(paths)
    if params.tracking.enabled and reference.get("run_id"):
        with tracking.start_run(params.tracking.experiment, run_id=reference["run_id"]) as run:
            run.log_metrics({"oos": {k: v for k, v in metrics.items() if k in ("models", "baselines")}})
            for path in (paths.evaluate_metrics, paths.leaderboard, paths.report_html):
                run.log_artifact(path, artifact_path="evaluate")
            run.log_artifact(paths.cards_dir, artifact_path="evaluate/model_cards")
            run.log_artifact(paths.plots_dir, artifact_path="evaluate/plots")
    log.info("evaluate: out-of-sample results (report: %s)\n%s", paths.report_html, table)
    return metrics


def _model_cards(
    params: Params, oof: pd.DataFrame, spec: dict[str, Any], metrics: dict[str, Any],
    overfitting: dict[str, dict[str, Any]], train_metrics: dict[str, Any], paths: Paths,
) -> dict[str, str]:
    """A markdown model card per candidate, written under reports/evaluate/model_cards/."""
    from alphaforge.report import model_card

    ingest_summary = json.loads(paths.ingest_summary.read_text()) if paths.ingest_summary.exists() else {}
    data_summary = {**ingest_summary, "oos_start": str(oof["timestamp"].min()), "oos_end": str(oof["timestamp"].max())}
    paths.cards_dir.mkdir(parents=True, exist_ok=True)
    cards = {}
    for family in metrics["models"]:
        if family == "ensemble":
            meta = json.loads((paths.ensemble_dir / "meta.json").read_text()) if (paths.ensemble_dir / "meta.json").exists() else {}
            hyperparameters = {"method": params.ensemble.method, "meta_learner": params.ensemble.meta_learner,
                               "weights": meta.get("weights_", meta.get("weights"))}
        else:
            hyperparameters = train_metrics["families"][family]["hyperparameters"]
        card = model_card(family, spec=spec, data_summary=data_summary, params=hyperparameters, metrics=metrics,
                          overfitting=overfitting[family])
        write_text_atomic(card, paths.cards_dir / f"{family}.md")
        cards[family] = card
    return cards


def _evaluate_volatility(params: Params, oof: pd.DataFrame, spec: dict[str, Any], paths: Paths) -> dict[str, Any]:
    """Volatility forecasts are scored (rank IC, MSE, QLIKE) against the trailing volatility, not traded."""
    from alphaforge.evaluate import evaluate_volatility

    metrics = evaluate_volatility(oof, {f: f"prediction_{f}" for f in spec["families"]})
    write_json_atomic(metrics, paths.evaluate_metrics)
    rows = [(name, block) for group in ("models", "baselines") for name, block in metrics[group].items()]
    lines = ["volatility forecasts, out of sample (QLIKE and MSE: lower is better)",
             f"{'forecast':22s} {'rank_ic':>8s} {'qlike':>8s} {'mse':>12s}"]
    lines += [f"{name:22s} {block['rank_ic'] or float('nan'):8.3f} {block['qlike'] or float('nan'):8.4f} "
              f"{block['mse'] or float('nan'):12.3e}" for name, block in rows]
    write_text_atomic("\n".join(lines) + "\n", paths.leaderboard)
    from alphaforge.report import html_report

    write_text_atomic(html_report("alphaforge: volatility forecasts", [("Out of sample", "```\n" + "\n".join(lines) + "\n```")]),
                      paths.report_html)
    paths.plots_dir.mkdir(parents=True, exist_ok=True)
    paths.cards_dir.mkdir(parents=True, exist_ok=True)
    log.info("evaluate:\n%s", "\n".join(lines))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("evaluate", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
