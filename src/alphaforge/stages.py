"""The DVC stages as functions: read inputs, call the library, write outputs atomically.

``pipelines/<stage>.py`` (what ``dvc.yaml`` runs) and the ``alphaforge`` command both
call these, so there is one code path per stage. Paths are the contract in
``dvc.yaml``; change them in both places.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params

log = logging.getLogger(__name__)


class Paths:
    """Every file a stage reads or writes, relative to the repository root."""

    raw_bars = Path("data/raw/bars.parquet")
    ingest_summary = Path("reports/ingest/summary.json")
    validated_bars = Path("data/validated/bars.parquet")
    validation_json = Path("reports/validation/result.json")
    validation_html = Path("reports/validation/index.html")
    validation_summary = Path("reports/validation/summary.json")
    dataset = Path("data/features/dataset.parquet")
    features_summary = Path("reports/features/summary.json")
    oof = Path("data/predictions/oof.parquet")
    models_dir = Path("models/lightgbm")
    run_reference = Path("models/run.json")
    train_metrics = Path("reports/train/metrics.json")
    importance_csv = Path("reports/train/feature_importance.csv")
    importance_png = Path("reports/train/feature_importance.png")
    evaluate_metrics = Path("reports/evaluate/metrics.json")
    leaderboard = Path("reports/evaluate/leaderboard.txt")
    plots_dir = Path("reports/evaluate/plots")


def write_json_atomic(payload: Any, path: Path) -> None:
    """JSON through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, default=str, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _describe(bars: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": int(len(bars)),
        "symbols": int(bars["symbol"].nunique()),
        "columns": list(bars.columns),
        "start": str(bars["timestamp"].min()),
        "end": str(bars["timestamp"].max()),
    }


def ingest(params: Params) -> dict[str, Any]:
    """Read the configured source and write canonical bars."""
    from alphaforge.data.ingest import load_source, write_parquet_atomic

    bars = load_source(params.ingest)
    write_parquet_atomic(bars, Paths.raw_bars)
    summary = {"source": params.ingest.source, **_describe(bars)} if "timestamp" in bars else {
        "source": params.ingest.source, "rows": int(len(bars)), "columns": list(bars.columns)}
    write_json_atomic(summary, Paths.ingest_summary)
    log.info("ingest: %s rows of %s -> %s", len(bars), params.ingest.source, Paths.raw_bars)
    return summary


def validate(params: Params) -> dict[str, Any]:
    """Run the expectation suite; on failure write the reports and raise, passing nothing downstream."""
    from alphaforge.data.ingest import write_parquet_atomic
    from alphaforge.validate import validate_bars, write_report

    Paths.validated_bars.unlink(missing_ok=True)
    bars = pd.read_parquet(Paths.raw_bars)
    source = params.ingest.path if params.ingest.source == "file" else params.ingest.source
    report = validate_bars(bars, params.validate_, source=str(source))
    write_report(report, Paths.validation_json, Paths.validation_html)
    summary = {
        "success": report.success,
        "rows": report.n_rows,
        "symbols": report.n_symbols,
        "failed_rules": [r.rule for r in report.failures],
        "warnings": [r.rule for r in report.warnings],
    }
    write_json_atomic(summary, Paths.validation_summary)
    report.raise_if_failed()
    for warning in report.warnings:
        log.warning("validate: warning %s on %s: %d rows", warning.rule, warning.column, warning.unexpected_count)
    write_parquet_atomic(bars, Paths.validated_bars)
    log.info("validate: %d rows passed %d rules; report %s", report.n_rows, len(report.results), Paths.validation_html)
    return summary


def features(params: Params) -> dict[str, Any]:
    """Indicators and labels for every validated bar."""
    from alphaforge.data.ingest import write_parquet_atomic
    from alphaforge.features import FEATURE_VERSION, compute_features, compute_labels, feature_columns

    bars = pd.read_parquet(Paths.validated_bars)
    feats = compute_features(bars, params.features)
    labels = compute_labels(bars, params.labels.horizon)
    label_cols = [c for c in labels.columns if c not in ("timestamp", "symbol")]
    dataset = pd.concat([feats, labels[label_cols]], axis=1)
    write_parquet_atomic(dataset, Paths.dataset)
    names = feature_columns(dataset)
    summary = {
        "feature_version": FEATURE_VERSION,
        "n_features": len(names),
        "features": names,
        "rows": int(len(dataset)),
        "rows_with_label": int(dataset["forward_return"].notna().sum()),
        "horizon": params.labels.horizon,
    }
    write_json_atomic(summary, Paths.features_summary)
    log.info("features: %d features x %d rows -> %s", len(names), len(dataset), Paths.dataset)
    return summary


def train(params: Params) -> dict[str, Any]:
    """Walk-forward LightGBM: fold models, out-of-fold predictions, final model, tracked in MLflow."""
    from alphaforge import tracking
    from alphaforge.data.ingest import write_parquet_atomic
    from alphaforge.features import FEATURE_VERSION
    from alphaforge.splits import WalkForward
    from alphaforge.train import plot_feature_importance, walk_forward_train

    dataset = pd.read_parquet(Paths.dataset)
    splitter = WalkForward(params.train.walk_forward, purge=params.labels.horizon)
    log.info(
        "train: %d folds (%s), purge %d + embargo %d bars between train and test",
        params.train.walk_forward.n_splits, params.train.walk_forward.mode, splitter.purge, params.train.walk_forward.embargo,
    )
    result = walk_forward_train(
        dataset, splitter, params.train.lightgbm.model_dump(), fit_final_model=params.train.fit_final_model
    )
    write_parquet_atomic(result.oof, Paths.oof)
    Paths.models_dir.mkdir(parents=True, exist_ok=True)
    for old in Paths.models_dir.glob("*.txt"):
        old.unlink()
    for fold, model in zip(result.folds, result.models, strict=True):
        model.save(Paths.models_dir / f"fold_{fold.fold}.txt")
    if result.final_model is not None:
        result.final_model.save(Paths.models_dir / "final.txt")
    write_json_atomic(
        {"feature_version": FEATURE_VERSION, "features": result.feature_names, "horizon": params.labels.horizon},
        Paths.models_dir / "spec.json",
    )
    Paths.importance_csv.parent.mkdir(parents=True, exist_ok=True)
    result.importance.to_csv(Paths.importance_csv, index_label="feature")
    plot_feature_importance(result.importance, Paths.importance_png)
    fold_ics = [f.ic for f in result.folds]
    metrics = {
        "n_folds": len(result.folds),
        "mean_fold_ic": float(pd.Series(fold_ics).mean()),
        "oof_rows": int(len(result.oof)),
        "seconds": round(sum(f.seconds for f in result.folds), 3),
        "folds": [vars(f) for f in result.folds],
    }
    run_id = None
    if params.tracking.enabled:
        with tracking.start_run(
            params.tracking.experiment, run_name=f"walk-forward {params.ingest.source}",
            tags={"stage": "train", "source": params.ingest.source, "feature_version": FEATURE_VERSION},
        ) as run:
            run.log_params(params.model_dump(by_alias=True, mode="json"))
            for fold in result.folds:
                run.log_metrics({"fold_ic": fold.ic, "fold_seconds": fold.seconds, "fold_n_train": fold.n_train}, step=fold.fold)
            run.log_metrics({"mean_fold_ic": metrics["mean_fold_ic"]})
            run.log_artifact(Paths.models_dir, artifact_path="models")
            run.log_artifact(Paths.importance_png, artifact_path="train")
            run.log_artifact(Paths.importance_csv, artifact_path="train")
            run_id = run.run_id
    write_json_atomic({"run_id": run_id, "experiment": params.tracking.experiment}, Paths.run_reference)
    write_json_atomic(metrics, Paths.train_metrics)
    return metrics


def evaluate(params: Params) -> dict[str, Any]:
    """Out-of-sample metrics of the model and the naive baselines, plots, leaderboard; into the same MLflow run."""
    from alphaforge import tracking
    from alphaforge.evaluate import evaluate_oof, leaderboard, write_plots

    oof = pd.read_parquet(Paths.oof)
    evaluation = evaluate_oof(oof, params.evaluate)
    metrics = evaluation.to_metrics_json()
    write_json_atomic(metrics, Paths.evaluate_metrics)
    table = leaderboard(evaluation)
    write_text_atomic(table + "\n", Paths.leaderboard)
    plots = write_plots(evaluation, Paths.plots_dir)
    reference = json.loads(Paths.run_reference.read_text())
    if params.tracking.enabled and reference.get("run_id"):
        with tracking.start_run(params.tracking.experiment, run_id=reference["run_id"]) as run:
            run.log_metrics({"oos": metrics})
            run.log_artifact(Paths.evaluate_metrics, artifact_path="evaluate")
            run.log_artifact(Paths.leaderboard, artifact_path="evaluate")
            for path in plots.values():
                run.log_artifact(path, artifact_path="evaluate/plots")
    log.info("evaluate: out-of-sample results\n%s", table)
    return metrics


STAGES = {"ingest": ingest, "validate": validate, "features": features, "train": train, "evaluate": evaluate}


def run_stage(name: str, params: Params) -> dict[str, Any]:
    """Run one stage by name."""
    return STAGES[name](params)
