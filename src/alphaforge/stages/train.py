"""Stage ``train``: walk-forward training of ``train.families`` with purge and embargo, from the tuned parameters.

Writes out-of-fold predictions with intervals (data/predictions/oof.parquet), fold and final models and their
spec under models/trained/, gain and permutation importance (and Transformer attention maps) under
reports/train/, reports/train_metrics.json, and one MLflow run (models/run.json names it for later stages).
"""

from __future__ import annotations

import json
import logging
import shutil
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
    """Walk-forward training of every configured family: fold models, OOF predictions, final models, MLflow."""
    from alphaforge import tracking
    from alphaforge.features import FEATURE_VERSION
    from alphaforge.splits import WalkForward
    from alphaforge.stages.regimes import regime_model_of
    from alphaforge.train import (
        mean_gain,
        model_factory,
        permutation_scorer,
        plot_attention,
        plot_importance_bars,
        task_of,
        walk_forward_train,
    )

    paths = Paths(root)
    dataset = pd.read_parquet(paths.dataset)
    target = params.labels.target
    task = task_of(target)
    splitter = WalkForward(params.train.walk_forward, purge=params.labels.horizon)
    log.info(
        "train: %s on %s (%s), %d folds (%s), purge %d + embargo %d bars between train and test",
        ", ".join(params.train.families), target, task, params.train.walk_forward.n_splits,
        params.train.walk_forward.mode, splitter.purge, params.train.walk_forward.embargo,
    )
    if paths.trained_dir.exists():
        shutil.rmtree(paths.trained_dir)
    paths.trained_dir.mkdir(parents=True)
    paths.train_reports.mkdir(parents=True, exist_ok=True)
    oof: pd.DataFrame | None = None
    metrics: dict[str, Any] = {"target": target, "task": task, "families": {}}
    importance = permutation_scorer(params.train.permutation_repeats, target)
    for family in params.train.families:
        hyperparameters = tuned_hyperparameters(params, family, paths)
        make_model = model_factory(
            family, task=task, hyperparameters=hyperparameters, uncertainty_method=params.train.uncertainty.method,
            alpha=params.train.uncertainty.alpha, calibration_fraction=params.train.uncertainty.calibration_fraction,
            purge=params.labels.horizon, feature_processing=params.features.processing,
        )
        result = walk_forward_train(
            dataset, splitter, make_model, target=target, fit_final_model=params.train.fit_final_model,
            importance=importance, label=family, label_normalise=params.labels.normalise,
        )
        family_dir = paths.trained_dir / family
        for fold, model in zip(result.folds, result.models, strict=True):
            model.save(family_dir / f"fold_{fold.fold}")
        if result.final_model is not None:
            result.final_model.save(family_dir / "final")
        renamed = result.oof.rename(columns={c: f"{c}_{family}" for c in ("prediction", "lower", "upper")})
        if oof is None:
            oof = renamed
        else:
            added = [c for c in renamed.columns if c.endswith(f"_{family}")]
            oof = oof.merge(renamed[["timestamp", "symbol", *added]], on=["timestamp", "symbol"], how="outer")
        family_metrics = result.metrics()
        family_metrics["hyperparameters"] = hyperparameters
        gain = mean_gain(result.models)
        if not gain.empty:
            gain.to_csv(paths.train_reports / f"gain_importance_{family}.csv", index_label="feature")
            plot_importance_bars(gain, paths.train_reports / f"gain_importance_{family}.png",
                                 f"{family}: gain importance (mean over folds)")
        if not result.importance.empty:
            result.importance.to_csv(paths.train_reports / f"permutation_importance_{family}.csv", index_label="feature")
            plot_importance_bars(result.importance["mean"], paths.train_reports / f"permutation_importance_{family}.png",
                                 f"{family}: permutation importance on out-of-fold test slices (drop in rank IC)")
        if family == "transformer" and result.final_model is not None:
            plot_attention(result.final_model, dataset, paths.train_reports / "attention_transformer.png")
        metrics["families"][family] = family_metrics
    assert oof is not None
    oof = oof.sort_values(["fold", "timestamp", "symbol"], kind="stable").reset_index(drop=True)
    write_parquet_atomic(oof, paths.oof)
    write_json_atomic(
        {"feature_version": FEATURE_VERSION, "features": result.feature_names, "horizon": params.labels.horizon,
         "target": target, "label_normalise": params.labels.normalise, "task": task,
         "families": list(params.train.families),
         "feature_params": params.features.model_dump(mode="json"),
         # where a series restarts (validate's split of a suspended symbol): the service splits bars the same way
         "suspensions": {"max_gap_bars": params.validate_.max_gap_bars,
                         "max_closure_days": params.validate_.max_closure_days},
         "regime_model": regime_model_of(result.feature_names, paths)},
        paths.trained_dir / "spec.json",
    )
    run_id = None
    if params.tracking.enabled:
        with tracking.start_run(
            params.tracking.experiment, run_name=f"walk-forward {params.ingest.source}",
            tags={"stage": "train", "source": params.ingest.source, "feature_version": FEATURE_VERSION,
                  "families": ",".join(params.train.families), "target": target},
        ) as run:
            run.log_params(params.model_dump(by_alias=True, mode="json"))
            for family, family_metrics in metrics["families"].items():
                for fold in family_metrics["folds"]:
                    run.log_metrics({f"{family}.fold_rank_ic": fold["rank_ic"], f"{family}.fold_seconds": fold["seconds"],
                                     f"{family}.fold_coverage": fold["coverage"]}, step=fold["fold"])
                run.log_metrics({f"{family}.mean_fold_rank_ic": family_metrics["mean_fold_rank_ic"],
                                 f"{family}.interval_coverage": family_metrics["interval_coverage"]})
            run.log_artifact(paths.trained_dir, artifact_path="models")
            run.log_artifact(paths.train_reports, artifact_path="train")
            run_id = run.run_id
    write_json_atomic({"run_id": run_id, "experiment": params.tracking.experiment}, paths.run_reference)
    write_json_atomic(metrics, paths.train_metrics)
    return metrics


def tuned_hyperparameters(params: Params, family: str, paths: Paths) -> dict[str, Any]:
    """params.yaml's hyperparameters for ``family``, overridden by the tune stage's best where it has them."""
    chosen = dict(params.train.models.get(family, {}))
    if params.train.use_tuned and paths.best_params.exists():
        best = json.loads(paths.best_params.read_text()).get(family)
        if best:
            chosen.update(best["params"])
            log.info("train: %s starts from tuned params %s", family, best["params"])
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("train", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
