"""Stage ``stack``: the families' out-of-fold predictions stacked (or voted) into one deployable ensemble.

Checks the OOF predictions (no purge violation), fits the combiner on a meta walk-forward, replays the Hedge
weights, packages the ensemble as one MLflow pyfunc (models/ensemble/pyfunc), writes the stack's own OOF
predictions (data/predictions/stack_oof.parquet) and reports/stack/metrics.json; with tracking on, logs the model
to the pipeline's run and registers a version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.config import Params
from alphaforge.ensemble import EnsembleParams, StackResult, fit_stack
from alphaforge.io import write_json_atomic, write_parquet_atomic
from alphaforge.paths import Paths
from alphaforge.pyfunc import EnsemblePackage, build_ensemble_artifacts, package_ensemble, save_ensemble_model
from alphaforge.stages._common import read_run_reference
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Stack (or vote) the families' out-of-fold predictions into one deployable ensemble, logged and registered."""
    return run_stack(params.ensemble, experiment=params.tracking.experiment if params.tracking.enabled else None,
                     evaluation=params.evaluate, paths=Paths(root))


def run_stack(
    settings: EnsembleParams,
    *,
    experiment: str | None,
    evaluation: Any = None,
    paths: Paths | None = None,
) -> dict[str, Any]:
    """The stack stage: check the OOF predictions, fit and judge the ensemble, package it, log and register it.

    Reads ``paths.oof``, ``paths.train_metrics``, ``paths.trained_dir`` (spec + final models),
    ``paths.dataset`` (timestamps for the purge check, rows for the input example) and, with an
    ``experiment``, ``paths.run_reference`` (the pipeline's MLflow run). Writes
    ``models/ensemble/{meta,spec,hedge_seed}.json``, the pyfunc folder ``models/ensemble/pyfunc``,
    the stack's own OOF predictions ``data/predictions/stack_oof.parquet`` and
    ``reports/stack/metrics.json``; with an ``experiment`` also logs the model to the run (and a
    registered-model version under ``settings.registered_model_name``) and the ``stack.*`` metrics.
    ``evaluation`` (an :class:`alphaforge.evaluate.EvaluationParams`) adds the trading metrics of the
    ensemble and each family over the meta-test rows.
    """
    paths = paths or Paths()
    oof = pd.read_parquet(paths.oof)
    train_metrics = json.loads(paths.train_metrics.read_text())
    spec = json.loads((paths.trained_dir / "spec.json").read_text())
    dataset = pd.read_parquet(paths.dataset, columns=["timestamp", "symbol", *spec["features"]])
    result: StackResult = fit_stack(oof, train_metrics, calendar=dataset["timestamp"].unique(), spec=spec,
                                    params=settings)
    metrics = dict(result.metrics)
    if evaluation is not None and spec["target"] != "forward_volatility":
        metrics["trading"] = _trading_metrics(result, spec, evaluation, paths.validated_bars)
    artifacts = build_ensemble_artifacts(paths.trained_dir, result.combiner, paths.ensemble_dir,
                                         hedge_seed=result.hedge.to_dict(),
                                         extra_spec={"method": settings.method}, compile_trees=settings.compile_trees)
    package = package_ensemble(artifacts, dataset)
    save_ensemble_model(package, paths.ensemble_model_dir)
    write_parquet_atomic(result.evaluation.oof, paths.stack_oof)
    if experiment is not None:
        metrics["mlflow"] = _log_to_run(package, metrics, settings, experiment, paths)
    write_json_atomic(_json_safe(metrics), paths.stack_metrics)
    log.info("stack: %s over %s, weights %s; meta walk-forward rank IC %s; Hedge regret %.3f over %d updates",
             settings.method, ", ".join(result.families), {k: round(v, 4) for k, v in result.combiner.weights_.items()},
             metrics["meta_evaluation"]["rank_ic"], result.hedge.regret(), result.hedge.n_updates)
    return metrics


def _trading_metrics(result: StackResult, spec: Mapping[str, Any], evaluation: Any, bars_path: Path
                     ) -> dict[str, Any]:
    """evaluate_oof of the ensemble and every family on the meta-test rows (signals centred for classification),
    traded through the validated bars' market like the evaluate stage."""
    from alphaforge.evaluate import evaluate_oof, load_market_frame

    frame = result.evaluation.oof.copy()
    centre = 0.5 if spec.get("task") == "classification" else 0.0
    models = {}
    for name, column in [("ensemble", "prediction_ensemble"),
                         *[(f, f"prediction_{f}") for f in result.families]]:
        frame[f"signal_{name}"] = frame[column] - centre
        models[name] = f"signal_{name}"
    market = load_market_frame(pd.read_parquet(bars_path), evaluation)
    return evaluate_oof(frame, evaluation, models=models, market=market,
                        horizon=int(spec.get("horizon") or 1)).to_metrics_json()


def _log_to_run(package: EnsemblePackage, metrics: Mapping[str, Any], settings: EnsembleParams, experiment: str,
                paths: Paths) -> dict[str, Any]:
    from alphaforge import tracking

    reference = read_run_reference(paths)
    info = tracking.log_ensemble_model(
        run_id=reference.get("run_id"), experiment=experiment, artifacts=package.artifacts,
        python_model=package.python_model(), signature=package.signature, input_example=package.input_example,
        pip_requirements=package.pip_requirements, code_paths=package.code_paths,
        registered_model_name=settings.registered_model_name,
        metrics={"stack": {"meta_rank_ic": metrics["meta_evaluation"]["rank_ic"],
                           "weights": metrics["weights"], "hedge_regret": metrics["hedge"]["regret"]}},
    )
    return info


def _json_safe(value: Any) -> Any:
    """NaN/inf to None and numpy scalars to Python numbers, for a strict JSON report."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("stack", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
