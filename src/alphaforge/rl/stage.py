"""The rl stage: walk-forward train and evaluate agents against the baselines, write metrics and a leaderboard, log to
MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.rl.agents import train_agent
from alphaforge.rl.env import FeatureScaler, market_series
from alphaforge.rl.evaluation import _baseline_steps, _periods_per_year, _policy_metrics, evaluate_agent
from alphaforge.rl.params import RLParams
from alphaforge.schema import DataError

log = logging.getLogger("alphaforge.rl")


# ----------------------------------------------------------------------------------------------- the stage


def run_rl_stage(
    dataset: pd.DataFrame,
    bars: pd.DataFrame,
    splitter: Any,
    params: RLParams,
    *,
    signal: pd.DataFrame | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    reports_dir: str | Path = "reports/rl",
    models_dir: str | Path = "models/rl",
) -> dict[str, Any]:
    """Train the agents on walk-forward training slices, evaluate them and the baselines on the test slices.

    ``dataset``: the features stage's output (``timestamp``, ``symbol``, features, labels); ``bars``: the
    validated bars (their ``open``/``close`` set the fills); ``splitter``: the pipeline's
    :class:`alphaforge.splits.WalkForward`; ``signal``: a frame with ``timestamp``, ``symbol`` and
    ``params.signal_column``, a signal centred on 0 (e.g. ``signal_ensemble`` of the evaluate stage's
    ``candidate_frame``: the stacked ensemble's prediction, minus 0.5 for classifiers), or None to skip the
    ``signal`` baseline. Writes ``metrics.json`` and ``actions.parquet`` (per-bar actions with confidence) under
    ``reports_dir`` and each agent under ``models_dir/<algo>/fold_<k>/``. With ``experiment``, logs
    parameters, metrics and those files to a new MLflow run (nested under ``parent_run_id`` when given)
    through :mod:`alphaforge.tracking`. Returns the metrics.
    """
    import torch

    from alphaforge.features import feature_columns
    from alphaforge.io import write_json_atomic, write_parquet_atomic, write_text_atomic

    reports_dir, models_dir = Path(reports_dir), Path(models_dir)
    names = list(params.features) if params.features is not None else feature_columns(dataset)
    missing = [c for c in names if c not in dataset.columns]
    if missing:
        raise DataError(f"run_rl_stage: dataset lacks feature column(s) {missing} named in rl.features")
    price_columns = [c for c in ("open", "close") if c in bars.columns]
    if "close" not in price_columns:
        raise DataError("run_rl_stage: bars have no 'close' column; rule: canonical bars with closes")
    frame = dataset[["timestamp", "symbol", *names]].merge(
        bars[["timestamp", "symbol", *price_columns]], on=["timestamp", "symbol"], how="inner", validate="1:1")
    signal_column = None
    if signal is not None:
        if params.signal_column not in signal.columns:
            raise DataError(f"run_rl_stage: the signal frame has no column {params.signal_column!r} "
                            f"(rl.signal_column); columns: {list(signal.columns)}")
        frame = frame.merge(signal[["timestamp", "symbol", params.signal_column]].drop_duplicates(
            ["timestamp", "symbol"]), on=["timestamp", "symbol"], how="left")
        signal_column = params.signal_column
    if params.symbols is not None:
        absent = sorted(set(params.symbols) - set(frame["symbol"]))
        if absent:
            raise DataError(f"run_rl_stage: rl.symbols {absent} are not in the dataset")
        frame = frame[frame["symbol"].isin(params.symbols)]
    frame = frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    all_series = market_series(frame, names, signal_column=signal_column)
    folds = splitter.split(frame["timestamp"])
    chosen = folds[-1:] if params.folds == "last" else folds
    previous_threads = torch.get_num_threads()
    results: dict[str, list[pd.DataFrame]] = {}
    fold_metrics: list[dict[str, Any]] = []
    try:
        for fold in chosen:
            train = [s for s in (x.slice(fold.train_start, fold.train_end) for x in all_series) if s is not None]
            test = [s for s in (x.slice(fold.test_start, fold.test_end) for x in all_series) if s is not None]
            if not train or not test:
                raise DataError(f"run_rl_stage: fold {fold.number} has no symbol with two bars on both sides")
            scaler = FeatureScaler.fit(train)
            entry: dict[str, Any] = {"fold": fold.number, "train_start": str(fold.train_start),
                                     "train_end": str(fold.train_end), "test_start": str(fold.test_start),
                                     "test_end": str(fold.test_end)}
            for algo in params.algos:
                agent = train_agent(algo, train, params, scaler=scaler)
                agent.info.update({"fold": fold.number, "train_end": str(fold.train_end)})
                agent.save(models_dir / algo / f"fold_{fold.number}")
                evaluation = evaluate_agent(agent, test, confidence_bins=params.confidence_bins)
                results.setdefault(algo, []).append(evaluation.steps.assign(policy=algo, fold=fold.number))
                entry[algo] = evaluation.metrics
            baselines = ["buy_and_hold", *(["signal"] if signal_column else [])]
            for name in baselines:
                steps = _baseline_steps(name, test, params.env, scaler)
                results.setdefault(name, []).append(steps.assign(policy=name, fold=fold.number))
            for k in range(params.random_seeds):
                steps = _baseline_steps("random", test, params.env, scaler, seed=params.seed + 1000 * k)
                results.setdefault(f"random_{k}", []).append(steps.assign(policy="random", fold=fold.number))
            fold_metrics.append(entry)
    finally:
        torch.set_num_threads(previous_threads)
    combined = {name: pd.concat(frames, ignore_index=True) for name, frames in results.items()}
    ppy = _periods_per_year(next(iter(combined.values())))
    policies = {name: _policy_metrics(steps, ppy) for name, steps in combined.items() if not name.startswith("random")}
    random_runs = [_policy_metrics(steps, ppy) for name, steps in combined.items() if name.startswith("random")]
    policies["random"] = _mean_metrics(random_runs)
    for algo in params.algos:
        steps = combined[algo]
        policies[algo]["mean_confidence"] = float(steps["confidence"].mean())
    metrics = {
        "agents": {algo: policies[algo] for algo in params.algos},
        "baselines": {name: policies[name] for name in ("buy_and_hold", "signal", "random") if name in policies},
        "folds": fold_metrics,
        "fold_policy": params.folds,
        "periods_per_year": ppy,
        "execution": "next bar open" if "open" in price_columns else "next bar close",
        "cost_bps": params.env.cost_bps,
        "signal_column": signal_column,
        "n_symbols": len(all_series),
    }
    actions = pd.concat([combined[algo] for algo in params.algos], ignore_index=True)
    write_parquet_atomic(actions, reports_dir / "actions.parquet")
    write_json_atomic(metrics, reports_dir / "metrics.json")
    write_text_atomic(rl_leaderboard(metrics) + "\n", reports_dir / "leaderboard.txt")
    if experiment:
        _log_to_mlflow(experiment, parent_run_id, params, metrics, reports_dir, models_dir)
    log.info("rl: out-of-sample results\n%s", rl_leaderboard(metrics))
    return metrics


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of the numeric metrics of several runs (the random baseline's seeds)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]
        if key == "claims_edge":
            out[key] = float(np.mean([bool(r[key]) for r in runs]))
        elif values:
            out[key] = float(np.mean(values))
        else:
            out[key] = None
    out["n_seeds"] = len(runs)
    return out


def rl_leaderboard(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the agents and baselines (for the rl stage and the evaluate stage's report)."""
    lines = [f"RL agents vs baselines, out of sample ({metrics['execution']} fills, {metrics['cost_bps']} bps)",
             f"{'policy':16s} {'sharpe':>8s} {'ann_ret':>8s} {'max_dd':>8s} {'turnover':>9s} {'edge_p':>8s}"]

    def fmt(value: Any, width: int, spec: str) -> str:
        return f"{value:{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}s}"

    for group in ("agents", "baselines"):
        for name, row in metrics[group].items():
            lines.append(f"{name:16s} {fmt(row['sharpe'], 8, '.3f')} {fmt(row['annual_return'], 8, '.3f')} "
                         f"{fmt(row['max_drawdown'], 8, '.3f')} {fmt(row['turnover'], 9, '.4f')} "
                         f"{fmt(row['edge_pvalue'], 8, '.3f')}")
    return "\n".join(lines)


def _log_to_mlflow(experiment: str, parent_run_id: str | None, params: RLParams, metrics: dict[str, Any],
                   reports_dir: Path, models_dir: Path) -> None:
    from alphaforge import tracking

    tags = {"stage": "rl", "algos": ",".join(params.algos)}
    if parent_run_id:
        tags[tracking.PARENT_RUN_TAG] = parent_run_id
    with tracking.start_run(experiment, run_name="rl " + "+".join(params.algos), tags=tags) as run:
        run.log_params(params.model_dump(mode="json"))
        run.log_metrics({"oos": {**metrics["agents"], **metrics["baselines"]}})
        run.log_artifact(reports_dir, artifact_path="rl")
        run.log_artifact(models_dir, artifact_path="models/rl")
