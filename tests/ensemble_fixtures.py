"""A small trained ensemble on a synthetic market, as the train stage leaves it, and its registration.

Shared by the ensemble, serving and benchmark code paths so that each builds the same thing the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.features import FEATURE_VERSION, FeatureParams, compute_features, compute_labels
from alphaforge.io import write_parquet_atomic
from alphaforge.regimes import RegimeParams, regime_features
from alphaforge.splits import WalkForward, WalkForwardParams
from alphaforge.train import model_factory, walk_forward_train

HORIZON = 5
FAMILIES: dict[str, dict[str, Any]] = {
    "ridge": {"alpha": 10.0},
    "lightgbm": {"n_estimators": 40, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 100,
                 "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "max_bin": 63},
}


def train_small_ensemble(trained_dir: Path, *, seed: int = 5, n_symbols: int = 12, n_bars: int = 700,
                         families: Mapping[str, Mapping[str, Any]] = FAMILIES, regimes: bool = False,
                         feature_params: FeatureParams | None = None) -> dict[str, Any]:
    """Walk-forward train ``families`` (conformal intervals) on a synthetic market; OOF, metrics, spec, models.

    ``regimes``: as the pipeline does with ``features.regimes``, fit a regime model on the first training
    window, add its probabilities to the features and record it in the spec (``regime_model``).
    ``feature_params``: the feature set (default: the basic one), e.g. ``FeatureParams(set="alpha158", ...)``.
    """
    bars, _ = make_synthetic(SyntheticParams(n_symbols=n_symbols, n_bars=n_bars, seed=seed))
    feature_params = feature_params or FeatureParams()
    splitter = WalkForward(WalkForwardParams(n_splits=3, min_train_size=250, embargo=2), purge=HORIZON)
    regime_model = None
    if regimes:
        fit_end = splitter.split(bars["timestamp"])[0].train_end
        regime_model, _ = regime_features(bars, RegimeParams(n_init=1, n_iter=100), fit_end)
    dataset = pd.concat([compute_features(bars, feature_params, regime_model=regime_model),
                         compute_labels(bars, HORIZON).drop(columns=["timestamp", "symbol"])], axis=1)
    oof, metrics, results = None, {"target": "forward_return", "families": {}}, {}
    for family, hyperparameters in families.items():
        make = model_factory(family, task="regression", hyperparameters=dict(hyperparameters),
                             uncertainty_method="conformal", purge=HORIZON)
        result = walk_forward_train(dataset, splitter, make, fit_final_model=True)
        result.final_model.save(trained_dir / family / "final")
        renamed = result.oof.rename(columns={c: f"{c}_{family}" for c in ("prediction", "lower", "upper")})
        oof = renamed if oof is None else oof.merge(
            renamed[["timestamp", "symbol", *[c for c in renamed.columns if c.endswith(f"_{family}")]]],
            on=["timestamp", "symbol"], how="outer")
        metrics["families"][family] = result.metrics()
        results[family] = result
    first = next(iter(results.values()))
    spec = {"feature_version": FEATURE_VERSION, "features": first.feature_names, "horizon": HORIZON,
            "target": "forward_return", "task": "regression", "families": list(families),
            "feature_params": feature_params.model_dump(mode="json"),
            "regime_model": None if regime_model is None else regime_model.to_json()}
    (trained_dir / "spec.json").write_text(json.dumps(spec))
    oof = oof.sort_values(["fold", "timestamp", "symbol"], kind="stable").reset_index(drop=True)
    return {"bars": bars, "dataset": dataset, "oof": oof, "metrics": metrics, "spec": spec, "results": results,
            "trained_dir": trained_dir, "splitter": splitter, "regime_model": regime_model}


def stack_and_register(trained: Mapping[str, Any], work: Path, *, model_name: str | None,
                       experiment: str = "serving-test") -> dict[str, Any]:
    """Run the stack stage on ``trained`` (in ``work``): the pyfunc folder, and a registered version if named."""
    from alphaforge import tracking
    from alphaforge.ensemble import EnsembleParams
    from alphaforge.paths import Paths
    from alphaforge.stages.stack import run_stack

    work.mkdir(parents=True, exist_ok=True)
    paths = Paths(work, trained_dir=trained["trained_dir"])
    write_parquet_atomic(trained["oof"], paths.oof)
    write_parquet_atomic(trained["dataset"], paths.dataset)
    for folder in (paths.train_metrics.parent, paths.run_reference.parent):
        folder.mkdir(parents=True, exist_ok=True)
    paths.train_metrics.write_text(json.dumps(trained["metrics"]))
    params = EnsembleParams(registered_model_name=model_name,
                            meta_walk_forward=WalkForwardParams(n_splits=2, min_train_size=60, embargo=0))
    if model_name is None:
        report = run_stack(params, experiment=None, paths=paths)
    else:
        with tracking.start_run(experiment, run_name="train") as run:
            run_id = run.run_id
        paths.run_reference.write_text(json.dumps({"run_id": run_id, "experiment": experiment}))
        report = run_stack(params, experiment=experiment, paths=paths)
    return {"report": report, "paths": paths, "model_dir": paths.ensemble_model_dir,
            "version": (report.get("mlflow") or {}).get("registered_model_version")}
