"""The DVC stages as functions: read inputs, call the library, write outputs atomically.

``pipelines/<stage>.py`` (what ``dvc.yaml`` runs) and the ``alphaforge`` command both
call these, so there is one code path per stage. Paths are the contract in
``dvc.yaml``; change them in both places.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alphaforge.config import Params
from alphaforge.io import write_json_atomic, write_parquet_atomic, write_text_atomic
from alphaforge.schema import DataError

if TYPE_CHECKING:
    from alphaforge.regimes import RegimeModel

log = logging.getLogger(__name__)


class Paths:
    """Every file a stage reads or writes, relative to the repository root."""

    raw_bars = Path("data/raw/bars.parquet")
    external_dir = Path("data/external")
    ingest_dropped = Path("data/quarantine/duplicates.parquet")
    quarantine = Path("data/quarantine/rows.parquet")
    ingest_summary = Path("reports/ingest/summary.json")
    validated_bars = Path("data/validated/bars.parquet")
    validation_json = Path("reports/validation/result.json")
    validation_html = Path("reports/validation/index.html")
    validation_summary = Path("reports/validation/summary.json")
    dataset = Path("data/features/dataset.parquet")
    features_summary = Path("reports/features/summary.json")
    oof = Path("data/predictions/oof.parquet")
    stack_oof = Path("data/predictions/stack_oof.parquet")
    ensemble_dir = Path("models/ensemble")
    trained_dir = Path("models/trained")
    best_params = Path("models/tuned/best_params.json")
    tune_summary = Path("reports/tune/summary.json")
    run_reference = Path("models/run.json")
    train_reports = Path("reports/train")
    train_metrics = Path("reports/train_metrics.json")
    evaluate_metrics = Path("reports/evaluate/metrics.json")
    leaderboard = Path("reports/evaluate/leaderboard.txt")
    plots_dir = Path("reports/evaluate/plots")
    cards_dir = Path("reports/evaluate/model_cards")
    stack_metrics = Path("reports/stack/metrics.json")
    drift_alert = Path("reports/drift/alert.json")
    decision = Path("reports/promotion/decision.json")
    regime_model = Path("models/regimes/model.json")
    regime_features = Path("data/regimes/features.parquet")
    regime_summary = Path("reports/regimes/summary.json")
    regime_plot = Path("reports/regimes/regimes.png")
    risk_forecasts = Path("data/risk/forecasts.parquet")
    risk_metrics = Path("reports/risk/metrics.json")
    rl_reports = Path("reports/rl")
    rl_metrics = Path("reports/rl/metrics.json")
    rl_models = Path("models/rl")
    drift_dir = Path("reports/drift")
    monitor_dir = Path("reports/monitor")
    report_html = Path("reports/evaluate/report.html")


def _describe(bars: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": int(len(bars)),
        "symbols": int(bars["symbol"].nunique()),
        "columns": list(bars.columns),
        "start": str(bars["timestamp"].min()),
        "end": str(bars["timestamp"].max()),
    }


def _warn_if_untracked(path: str) -> bool:
    """Whether DVC tracks ``path`` (it is under data/external/, a dependency of the ingest stage); warns if not."""
    inside = Path(path).resolve().is_relative_to(Paths.external_dir.resolve())
    if not inside:
        log.warning("ingest: %s is outside %s/, which is the only folder dvc.yaml declares as the ingest stage's "
                    "data dependency: `dvc repro` will NOT rerun the pipeline when this file changes. Move it into "
                    "%s/ (and point ingest.path there), or run `dvc repro -f ingest` after editing it.",
                    path, Paths.external_dir, Paths.external_dir)
    return inside


def ingest(params: Params) -> dict[str, Any]:
    """Read the configured source, apply the repairs ``ingest.repair`` allows, and write canonical bars."""
    from alphaforge.data.ingest import load_source, repair_bars

    tracked = _warn_if_untracked(params.ingest.path) if params.ingest.source == "file" and params.ingest.path else None
    loaded = load_source(params.ingest)
    outcome = repair_bars(loaded, params.ingest.repair) if {"symbol", "timestamp"} <= set(loaded.columns) else None
    bars = loaded if outcome is None else outcome.bars
    write_parquet_atomic(bars, Paths.raw_bars)
    write_parquet_atomic(pd.DataFrame() if outcome is None else outcome.dropped, Paths.ingest_dropped)
    summary = {"source": params.ingest.source, **_describe(bars)} if "timestamp" in bars else {
        "source": params.ingest.source, "rows": int(len(bars)), "columns": list(bars.columns)}
    summary["rows_read"] = int(len(loaded))
    summary["repairs"] = {} if outcome is None else outcome.counts
    if tracked is not None:
        summary["path_tracked_by_dvc"] = tracked
    write_json_atomic(summary, Paths.ingest_summary)
    log.info("ingest: %s rows of %s -> %s", len(bars), params.ingest.source, Paths.raw_bars)
    return summary


def validate(params: Params) -> dict[str, Any]:
    """Run the expectation suite; quarantine bad rows if the policy allows, else fail passing nothing downstream.

    With ``validate.policy: quarantine`` the rows that break a row-level rule go to data/quarantine/rows.parquet
    (with their rules), the rest is validated again and continues, unless the quarantined share is over
    ``validate.max_quarantine_share`` overall or for a symbol. Validated bars carry ``segment``: a symbol's
    series restarts after a suspension or a market closure (:func:`alphaforge.validate.assign_segments`).
    """
    from alphaforge.validate import (
        ROW_LEVEL_RULES,
        ValidationFailed,
        assign_segments,
        quarantine_rows,
        validate_bars,
        write_report,
    )

    settings = params.validate_
    Paths.validated_bars.unlink(missing_ok=True)
    bars = pd.read_parquet(Paths.raw_bars)
    source = str(params.ingest.path if params.ingest.source == "file" else params.ingest.source)
    report = validate_bars(bars, settings, source=source)
    row_faults = [r for r in report.failures if r.rule in ROW_LEVEL_RULES]
    kept, quarantine, verdict = bars, None, report
    if settings.policy == "quarantine":
        kept, quarantine = quarantine_rows(bars, report, settings.max_quarantine_share)
        report.quarantine = quarantine.to_json()
        if len(quarantine.rows):
            verdict = validate_bars(kept, settings, source=f"{source} (after quarantine)")
            report.after_quarantine = {"success": verdict.success, "rows": verdict.n_rows,
                                       "failed_rules": [r.label for r in verdict.failures]}
            log.warning("validate: %s -> %s", quarantine.describe(), Paths.quarantine)
    quarantined = bars.iloc[:0].assign(input_row=pd.Series(dtype="int64"), rules=pd.Series(dtype=str)) \
        if quarantine is None else quarantine.rows
    write_parquet_atomic(quarantined, Paths.quarantine)
    write_report(report, Paths.validation_json, Paths.validation_html)
    over_limit = quarantine.over_limit if quarantine is not None else []
    success = verdict.success and not over_limit
    warnings = {r.label: r.unexpected_count for r in verdict.warnings}
    summary = {
        "success": success,
        "policy": settings.policy,
        "rows": report.n_rows,
        "rows_validated": verdict.n_rows,
        "symbols": report.n_symbols,
        "failed_rules": [r.rule for r in verdict.failures],
        "warnings": list(dict.fromkeys(r.rule for r in verdict.warnings)),
        "warning_rows": warnings,
        "quarantine": {"rows": 0, "share": 0.0, "by_rule": {}, "by_symbol": {}} if quarantine is None
        else quarantine.to_json(),
    }
    if not success:
        write_json_atomic(summary, Paths.validation_summary)
        if over_limit:
            raise DataError(f"validate: quarantine over validate.max_quarantine_share="
                            f"{settings.max_quarantine_share:g}: {'; '.join(over_limit)}\n{quarantine.describe()}\n"
                            f"the rows are in {Paths.quarantine}; fix the file or raise the limit knowingly")
        hint = ""
        if settings.policy == "fail" and row_faults:
            count = len({row for r in row_faults for row in r.rows})
            hint = (f"\n{count} row(s) break row-level rules ({', '.join(r.label for r in row_faults)}); with "
                    f"validate.policy: quarantine they would be set aside in {Paths.quarantine} and the rest would "
                    "continue")
        raise ValidationFailed(verdict) if not hint else DataError(verdict.summary() + hint)
    for warning in verdict.warnings:
        log.warning("validate: warning %s on %s: %d rows", warning.rule, warning.column, warning.unexpected_count)
    validated = kept.assign(segment=assign_segments(kept, settings).to_numpy())
    splits = validated.groupby("symbol")["segment"].max()
    summary["segments"] = {"series": int((splits + 1).sum()), "symbols_split": int((splits > 0).sum())}
    if (splits > 0).any():
        log.warning("validate: %d symbol(s) split into %d series at suspensions/market closures (features restart, "
                    "no position is carried across): %s", int((splits > 0).sum()), int((splits + 1).sum()),
                    {str(k): int(v) + 1 for k, v in splits[splits > 0].items()})
    write_json_atomic(summary, Paths.validation_summary)
    write_parquet_atomic(validated, Paths.validated_bars)
    log.info("validate: %d rows passed %d rules; report %s", verdict.n_rows, len(verdict.results),
             Paths.validation_html)
    return summary


def features(params: Params) -> dict[str, Any]:
    """Indicators and labels for every validated bar."""
    from alphaforge.features import FEATURE_VERSION, compute_features, compute_labels, feature_columns
    from alphaforge.validate import as_series

    bars = pd.read_parquet(Paths.validated_bars)
    series = as_series(bars)  # a suspended symbol's series restart: no indicator or label reaches across
    regime_model = load_regime_model() if params.features.regimes else None
    feats = compute_features(series.drop(columns="segment", errors="ignore"), params.features,
                             regime_model=regime_model)
    labels = compute_labels(series.drop(columns="segment", errors="ignore"), params.labels.horizon,
                            params.evaluate.execution)
    label_cols = [c for c in labels.columns if c not in ("timestamp", "symbol")]
    dataset = pd.concat([feats, labels[label_cols]], axis=1)
    dataset["symbol"] = bars["symbol"].to_numpy()
    write_parquet_atomic(dataset, Paths.dataset)
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
    write_json_atomic(summary, Paths.features_summary)
    log.info("features: %d features x %d rows -> %s", len(names), len(dataset), Paths.dataset)
    return summary


def load_regime_model() -> RegimeModel:
    """The regimes stage's fitted model (``features.regimes`` on); a clear error when that stage has not run."""
    from alphaforge.regimes import RegimeModel

    if not Paths.regime_model.is_file():
        raise FileNotFoundError(f"{Paths.regime_model} is missing and features.regimes is on: run the regimes stage "
                                "first (dvc repro regimes), or set features.regimes: false")
    return RegimeModel.load(Paths.regime_model)


def tune(params: Params, workers: int = 1) -> dict[str, Any]:
    """Walk-forward Optuna search per family; best parameters to models/tuned/best_params.json.

    Complete trials' out-of-fold predictions are kept beside the study (``.alphaforge/tune_trials/<study>/``)
    for the evaluate stage's probability of backtest overfitting.
    """
    from alphaforge import tracking
    from alphaforge.tune import TuneJob, tune_stage

    job = TuneJob(
        dataset_path=str(Paths.dataset),
        tune=params.tune,
        walk_forward=params.train.walk_forward,
        purge=params.labels.horizon,
        target=params.labels.target,
        label_normalise=params.labels.normalise, feature_processing=params.features.processing,
        base_params={family: dict(params.train.models.get(family, {})) for family in params.tune.families},
        evaluation=params.evaluate,
        experiment=params.tracking.experiment if params.tracking.enabled else None,
        trials_dir=str(tracking.state_dir() / "tune_trials"),
    )
    return tune_stage(job, workers=workers, best_params_path=Paths.best_params, summary_path=Paths.tune_summary)


def tuned_hyperparameters(params: Params, family: str) -> dict[str, Any]:
    """params.yaml's hyperparameters for ``family``, overridden by the tune stage's best where it has them."""
    chosen = dict(params.train.models.get(family, {}))
    if params.train.use_tuned and Paths.best_params.exists():
        best = json.loads(Paths.best_params.read_text()).get(family)
        if best:
            chosen.update(best["params"])
            log.info("train: %s starts from tuned params %s", family, best["params"])
    return chosen


def train(params: Params) -> dict[str, Any]:
    """Walk-forward training of every configured family: fold models, OOF predictions, final models, MLflow."""
    from alphaforge import tracking
    from alphaforge.features import FEATURE_VERSION
    from alphaforge.splits import WalkForward
    from alphaforge.train import model_factory, plot_importance_bars, task_of, walk_forward_train

    dataset = pd.read_parquet(Paths.dataset)
    target = params.labels.target
    task = task_of(target)
    splitter = WalkForward(params.train.walk_forward, purge=params.labels.horizon)
    log.info(
        "train: %s on %s (%s), %d folds (%s), purge %d + embargo %d bars between train and test",
        ", ".join(params.train.families), target, task, params.train.walk_forward.n_splits,
        params.train.walk_forward.mode, splitter.purge, params.train.walk_forward.embargo,
    )
    if Paths.trained_dir.exists():
        shutil.rmtree(Paths.trained_dir)
    Paths.trained_dir.mkdir(parents=True)
    Paths.train_reports.mkdir(parents=True, exist_ok=True)
    oof: pd.DataFrame | None = None
    metrics: dict[str, Any] = {"target": target, "task": task, "families": {}}
    importance = _permutation_scorer(params.train.permutation_repeats, target)
    for family in params.train.families:
        hyperparameters = tuned_hyperparameters(params, family)
        make_model = model_factory(
            family, task=task, hyperparameters=hyperparameters, uncertainty_method=params.train.uncertainty.method,
            alpha=params.train.uncertainty.alpha, calibration_fraction=params.train.uncertainty.calibration_fraction,
            purge=params.labels.horizon, feature_processing=params.features.processing,
        )
        result = walk_forward_train(
            dataset, splitter, make_model, target=target, fit_final_model=params.train.fit_final_model,
            importance=importance, label=family, label_normalise=params.labels.normalise,
        )
        family_dir = Paths.trained_dir / family
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
        gain = _mean_gain(result.models)
        if not gain.empty:
            gain.to_csv(Paths.train_reports / f"gain_importance_{family}.csv", index_label="feature")
            plot_importance_bars(gain, Paths.train_reports / f"gain_importance_{family}.png",
                                 f"{family}: gain importance (mean over folds)")
        if not result.importance.empty:
            result.importance.to_csv(Paths.train_reports / f"permutation_importance_{family}.csv", index_label="feature")
            plot_importance_bars(result.importance["mean"], Paths.train_reports / f"permutation_importance_{family}.png",
                                 f"{family}: permutation importance on out-of-fold test slices (drop in rank IC)")
        if family == "transformer" and result.final_model is not None:
            _plot_attention(result.final_model, dataset, Paths.train_reports / "attention_transformer.png")
        metrics["families"][family] = family_metrics
    assert oof is not None
    oof = oof.sort_values(["fold", "timestamp", "symbol"], kind="stable").reset_index(drop=True)
    write_parquet_atomic(oof, Paths.oof)
    write_json_atomic(
        {"feature_version": FEATURE_VERSION, "features": result.feature_names, "horizon": params.labels.horizon,
         "target": target, "label_normalise": params.labels.normalise, "task": task,
         "families": list(params.train.families),
         "feature_params": params.features.model_dump(mode="json"),
         # where a series restarts (validate's split of a suspended symbol): the service splits bars the same way
         "suspensions": {"max_gap_bars": params.validate_.max_gap_bars,
                         "max_closure_days": params.validate_.max_closure_days},
         "regime_model": regime_model_of(result.feature_names)},
        Paths.trained_dir / "spec.json",
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
            run.log_artifact(Paths.trained_dir, artifact_path="models")
            run.log_artifact(Paths.train_reports, artifact_path="train")
            run_id = run.run_id
    write_json_atomic({"run_id": run_id, "experiment": params.tracking.experiment}, Paths.run_reference)
    write_json_atomic(metrics, Paths.train_metrics)
    return metrics


def regime_model_of(feature_names: list[str]) -> dict[str, Any] | None:
    """The regime model's JSON for the trained model's spec when its features include regime probabilities,
    so a served model computes them from raw bars without the repository's files (None otherwise)."""
    if not any(name.startswith("regime_prob_") for name in feature_names):
        return None
    model = load_regime_model()
    expected = [f"regime_prob_{k}" for k in range(model.params.n_regimes)]
    used = [name for name in feature_names if name.startswith("regime_prob_")]
    if used != expected:
        raise ValueError(f"train: the dataset's regime columns {used} do not match {Paths.regime_model} "
                         f"({model.params.n_regimes} regimes); rerun the features stage (dvc repro features)")
    return model.to_json()


def stack(params: Params) -> dict[str, Any]:
    """Stack (or vote) the families' out-of-fold predictions into one deployable ensemble, logged and registered."""
    from alphaforge.pyfunc import run_stack

    return run_stack(
        params.ensemble,
        experiment=params.tracking.experiment if params.tracking.enabled else None,
        evaluation=params.evaluate,
    )


def _permutation_scorer(repeats: int, target: str) -> Any:
    """Permutation importance of a fold model on its test slice (None when turned off)."""
    if repeats <= 0:
        return None
    from alphaforge.models.importance import permutation_importance

    def score(model: Any, frame: pd.DataFrame, mask: Any) -> pd.Series:
        from alphaforge.models.importance import rank_ic

        baseline = rank_ic(model.predict(frame, predict_mask=mask), frame[target].to_numpy(dtype=float)[mask],
                           frame["timestamp"].to_numpy()[mask])
        if not np.isfinite(baseline):  # e.g. a model that could not split its (short, early) training window
            log.warning("train: permutation importance skipped on a fold: the fold model's rank IC on its test rows "
                        "is undefined (constant predictions or too few rows), so there is nothing to compare with")
            return pd.Series(dtype=float)
        table = permutation_importance(model, frame, frame[target], predict_mask=mask, n_repeats=repeats)
        return table.set_index("feature")["importance_mean"]

    return score


def _mean_gain(models: list[Any]) -> pd.Series:
    """Mean of the fold models' own importance (gain, impurity or |coef|); empty when the family has none."""
    series = [m.feature_importance() for m in models if hasattr(m, "feature_importance")]
    series = [s for s in series if s is not None and len(s)]
    if not series:
        return pd.Series(dtype=float)
    return pd.concat(series, axis=1).mean(axis=1).sort_values(ascending=False).rename("gain")


def _plot_attention(model: Any, dataset: pd.DataFrame, path: Path) -> None:
    """Attention of the final Transformer on the last bar of each symbol, per layer and head."""
    from alphaforge.models.sequence import plot_attention

    last = dataset.groupby("symbol", sort=False).tail(1).index
    mask = dataset.index.isin(last)
    plot_attention(model.attention_weights(dataset, predict_mask=mask), path)


def candidate_frame(spec: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str], float]:
    """The out-of-sample frame every candidate is judged on, its signal columns, and the signal centre.

    With an ensemble, every candidate is judged on the rows the ensemble has out-of-sample predictions for
    (the meta walk-forward's test windows), so the table compares like with like. Classifiers' P(up) is
    centred on 0.5 to make a signal.
    """
    from alphaforge.train import task_of

    oof = pd.read_parquet(Paths.stack_oof if Paths.stack_oof.exists() else Paths.oof)
    centre = 0.5 if task_of(spec["target"]) == "classification" else 0.0
    names = [*spec["families"], *(["ensemble"] if "prediction_ensemble" in oof.columns else [])]
    for name in names:
        oof[f"signal_{name}"] = oof[f"prediction_{name}"] - centre
    return oof, {name: f"signal_{name}" for name in names}, centre


def load_market(params: Params) -> pd.DataFrame:
    """The market frame of the validated bars: execution returns, tradability, costs, baseline signals.

    Computed per series (a suspension splits a symbol): a position is closed at the last price before a
    suspension, never carried across it."""
    from alphaforge.evaluate import load_market_frame

    return load_market_frame(pd.read_parquet(Paths.validated_bars), params.evaluate)


def evaluate(params: Params) -> dict[str, Any]:
    """Out-of-sample metrics of every model and the naive baselines, traded as they could have been; plots,
    tear sheets, leaderboard; into the same MLflow run."""
    from alphaforge import tracking
    from alphaforge.evaluate import evaluate_oof, leaderboard, write_plots
    from alphaforge.report import html_report
    from alphaforge.tearsheet import write_tear_sheets
    from alphaforge.train import coverage_of

    spec = json.loads((Paths.trained_dir / "spec.json").read_text())
    if spec["target"] == "forward_volatility":
        return _evaluate_volatility(params, pd.read_parquet(Paths.oof), spec)
    oof, models, centre = candidate_frame(spec)
    candidates = list(models)
    market = load_market(params)
    evaluation = evaluate_oof(oof, params.evaluate, models=models, market=market, horizon=params.labels.horizon)
    metrics = evaluation.to_metrics_json()
    train_metrics = json.loads(Paths.train_metrics.read_text())
    overfitting = _overfitting(params, oof, evaluation, candidates, centre, market)
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
    if Paths.rl_metrics.exists():  # the optional rl stage's agents, beside the supervised models
        from alphaforge.rl import rl_leaderboard

        rl_metrics = json.loads(Paths.rl_metrics.read_text())
        metrics["rl"] = {"agents": rl_metrics["agents"], "baselines": rl_metrics["baselines"]}
        table += "\n\n" + rl_leaderboard(rl_metrics)
    write_json_atomic(metrics, Paths.evaluate_metrics)
    write_text_atomic(table + "\n", Paths.leaderboard)
    plots = write_plots(evaluation, Paths.plots_dir)
    tear_sheets = write_tear_sheets(evaluation, Paths.plots_dir)
    cards = _model_cards(params, oof, spec, metrics, overfitting, train_metrics)
    page = html_report(
        "alphaforge: out-of-sample evaluation",
        [("Leaderboard", f"```\n{table}\n```"), *[(f"Model card: {f}", card) for f, card in cards.items()]],
        [plots["equity.png"], plots["ic_by_fold.png"], *tear_sheets.values(),
         *[Paths.plots_dir / f"pbo_{f}.png" for f in candidates]],
    )
    write_text_atomic(page, Paths.report_html)
    reference = json.loads(Paths.run_reference.read_text())
    if params.tracking.enabled and reference.get("run_id"):
        with tracking.start_run(params.tracking.experiment, run_id=reference["run_id"]) as run:
            run.log_metrics({"oos": {k: v for k, v in metrics.items() if k in ("models", "baselines")}})
            for path in (Paths.evaluate_metrics, Paths.leaderboard, Paths.report_html):
                run.log_artifact(path, artifact_path="evaluate")
            run.log_artifact(Paths.cards_dir, artifact_path="evaluate/model_cards")
            run.log_artifact(Paths.plots_dir, artifact_path="evaluate/plots")
    log.info("evaluate: out-of-sample results (report: %s)\n%s", Paths.report_html, table)
    return metrics


def _overfitting(
    params: Params, oof: pd.DataFrame, evaluation: Any, families: list[str], centre: float, market: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """Deflated Sharpe over the trials tried, and PBO by CSCV over complete trials' OOS returns, per candidate.

    Every trial is traded like the candidate (the gate's strategy, execution, tradability, costs). A family's
    trials are its tuning study's; the ensemble counts the trials of every family it combines.
    """
    from alphaforge import tracking
    from alphaforge.evaluate import strategy_returns
    from alphaforge.overfitting import overfitting_summary, trial_return_matrix
    from alphaforge.promotion import gate_strategy
    from alphaforge.report import plot_pbo_logits
    from alphaforge.tune import trial_predictions_dir

    tuned = json.loads(Paths.tune_summary.read_text())["families"] if Paths.tune_summary.exists() else {}
    Paths.plots_dir.mkdir(parents=True, exist_ok=True)
    strategy = gate_strategy(evaluation, params.promote)
    keys = oof[["timestamp", "symbol", "fold"]]
    trial_returns: dict[str, dict[str, pd.Series]] = {}
    trial_counts: dict[str, int] = {}
    for family in [f for f in families if f != "ensemble"]:
        study = tuned.get(family)
        trial_returns[family], trial_counts[family] = {}, 1
        if not study:
            continue
        trial_counts[family] = max(int(study["n_trials"]), 1)
        folder = trial_predictions_dir(tracking.state_dir() / "tune_trials", study["study_name"])
        for path in sorted(folder.glob("trial_*.parquet")):
            trial = pd.read_parquet(path).merge(keys, on=["timestamp", "symbol"], how="inner")
            if trial.empty:
                continue
            trial["signal"] = trial["prediction"] - centre
            returns = strategy_returns(trial, "signal", params.evaluate, market, horizon=params.labels.horizon,
                                       strategy=strategy)
            trial_returns[family][path.stem] = returns.set_index("timestamp")["net_return"]
    out: dict[str, dict[str, Any]] = {}
    for family in families:
        members = [f for f in families if f != "ensemble"] if family == "ensemble" else [family]
        trials = {f"{m}/{k}": v for m in members for k, v in trial_returns.get(m, {}).items()}
        n_trials = sum(trial_counts.get(m, 1) for m in members)
        candidate = evaluation.returns[(family, strategy)].set_index("timestamp")["net_return"]
        matrix = trial_return_matrix(trials) if len(trials) >= 2 else None
        n_trials = max(n_trials, 0 if matrix is None else matrix.shape[1])
        # an untuned candidate is one trial: its deflated Sharpe is the probabilistic Sharpe (E[max] of one is 0)
        summary = overfitting_summary(candidate, matrix, periods_per_year=evaluation.periods_per_year,
                                      n_trials=n_trials, trial_sharpes_variance=0.0 if n_trials == 1 else None)
        summary["n_trials"] = int(n_trials)
        plot_pbo_logits(summary["pbo"], Paths.plots_dir / f"pbo_{family}.png",
                        title=f"{family}: CSCV logits over {len(trials)} tuning trials ({strategy})")
        out[family] = summary
        log.info("evaluate: %s deflated Sharpe %s, PBO %s (%d trials, %s)", family, summary["dsr"].get("dsr"),
                 summary["pbo"].get("pbo"), n_trials, strategy)
    return out


def _model_cards(
    params: Params, oof: pd.DataFrame, spec: dict[str, Any], metrics: dict[str, Any],
    overfitting: dict[str, dict[str, Any]], train_metrics: dict[str, Any],
) -> dict[str, str]:
    """A markdown model card per candidate, written under reports/evaluate/model_cards/."""
    from alphaforge.report import model_card

    ingest_summary = json.loads(Paths.ingest_summary.read_text()) if Paths.ingest_summary.exists() else {}
    data_summary = {**ingest_summary, "oos_start": str(oof["timestamp"].min()), "oos_end": str(oof["timestamp"].max())}
    Paths.cards_dir.mkdir(parents=True, exist_ok=True)
    cards = {}
    for family in metrics["models"]:
        if family == "ensemble":
            meta = json.loads((Paths.ensemble_dir / "meta.json").read_text()) if (Paths.ensemble_dir / "meta.json").exists() else {}
            hyperparameters = {"method": params.ensemble.method, "meta_learner": params.ensemble.meta_learner,
                               "weights": meta.get("weights_", meta.get("weights"))}
        else:
            hyperparameters = train_metrics["families"][family]["hyperparameters"]
        card = model_card(family, spec=spec, data_summary=data_summary, params=hyperparameters, metrics=metrics,
                          overfitting=overfitting[family])
        write_text_atomic(card, Paths.cards_dir / f"{family}.md")
        cards[family] = card
    return cards


def _evaluate_volatility(params: Params, oof: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
    """Volatility forecasts are scored (rank IC, MSE, QLIKE) against the trailing volatility, not traded."""
    from alphaforge.evaluate import evaluate_volatility

    metrics = evaluate_volatility(oof, {f: f"prediction_{f}" for f in spec["families"]})
    write_json_atomic(metrics, Paths.evaluate_metrics)
    rows = [(name, block) for group in ("models", "baselines") for name, block in metrics[group].items()]
    lines = ["volatility forecasts, out of sample (QLIKE and MSE: lower is better)",
             f"{'forecast':22s} {'rank_ic':>8s} {'qlike':>8s} {'mse':>12s}"]
    lines += [f"{name:22s} {block['rank_ic'] or float('nan'):8.3f} {block['qlike'] or float('nan'):8.4f} "
              f"{block['mse'] or float('nan'):12.3e}" for name, block in rows]
    write_text_atomic("\n".join(lines) + "\n", Paths.leaderboard)
    from alphaforge.report import html_report

    write_text_atomic(html_report("alphaforge: volatility forecasts", [("Out of sample", "```\n" + "\n".join(lines) + "\n```")]),
                      Paths.report_html)
    Paths.plots_dir.mkdir(parents=True, exist_ok=True)
    Paths.cards_dir.mkdir(parents=True, exist_ok=True)
    log.info("evaluate:\n%s", "\n".join(lines))
    return metrics


def promote(params: Params) -> dict[str, Any]:
    """Register the ensemble as the challenger; move ``champion`` to it only if it passes every rule.

    Rules (``promote:``, see :mod:`alphaforge.promotion`): over the whole out-of-sample span a significant rank
    IC, a net edge over every naive baseline (same strategy, execution and costs) that survives the count of
    trials, a PBO within bounds and a plausible P&L; on the latest window, beat the champion; data validation
    passed; no drift alert that concerns this model. The decision, every rule with its figure, threshold and
    verdict, goes to reports/promotion/decision.json, the version's tags and the run's tags. The alias switch
    is the last step: any failure before it leaves the champion as it was, and the stage says so.
    """
    from alphaforge import tracking
    from alphaforge.evaluate import evaluate_oof
    from alphaforge.promotion import PromotionError, gate_evidence, gate_strategy, window_scorecards
    from alphaforge.promotion import promote as promote_model

    spec = json.loads((Paths.trained_dir / "spec.json").read_text())
    stack_metrics = json.loads(Paths.stack_metrics.read_text()) if Paths.stack_metrics.exists() else {}
    model_uri = (stack_metrics.get("mlflow") or {}).get("model_uri")
    if not model_uri:
        raise PromotionError("promote: the stack stage logged no model (is tracking.enabled false?); champion unchanged")
    oof, models, centre = candidate_frame(spec)
    candidate_name = "ensemble" if "ensemble" in models else spec["families"][0]
    market = load_market(params)
    horizon = params.labels.horizon
    evaluation = evaluate_oof(oof, params.evaluate, models=models, market=market, horizon=horizon)
    evaluated = json.loads(Paths.evaluate_metrics.read_text()) if Paths.evaluate_metrics.exists() else {}
    overfitting = ((evaluated.get("models") or {}).get(candidate_name) or {}).get("overfitting") or {}
    pbo = overfitting.get("pbo") or {}
    evidence = gate_evidence(
        evaluation, candidate_name, params.promote, n_trials=int(overfitting.get("n_trials") or 1),
        pbo=pbo.get("pbo"), pbo_trials=int(pbo.get("n_trials") or 0), dsr=(overfitting.get("dsr") or {}).get("dsr"),
        pbo_detail=f"CSCV over {pbo.get('n_trials')} tuning trials" if pbo.get("pbo") is not None
        else pbo.get("reason"))
    strategy = gate_strategy(evaluation, params.promote)
    card = window_scorecards(evaluation, oof, candidate_name, strategy=strategy)
    validation = json.loads(Paths.validation_summary.read_text())
    drift = json.loads(Paths.drift_alert.read_text()) if Paths.drift_alert.exists() else None
    reference = json.loads(Paths.run_reference.read_text())

    def rescore_champion(champion: Any, window: Any) -> dict[str, Any]:
        """The champion scored on the challenger's window, on the bars it has not been trained on."""
        trained_until = pd.Timestamp(champion.stored.window.end) if champion.stored else None
        start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
        rows = oof[(oof["timestamp"] >= start) & (oof["timestamp"] <= end)]
        if trained_until is not None:
            rows = rows[rows["timestamp"] > trained_until + pd.Timedelta(0)]
        if rows["timestamp"].nunique() < params.promote.min_unseen_bars:
            raise PromotionError(
                f"promote: champion v{champion.version} was trained on data up to {trained_until}; the window "
                f"{window} leaves {rows['timestamp'].nunique()} unseen bars (< {params.promote.min_unseen_bars}) to "
                "compare it fairly; champion unchanged")
        from alphaforge.pyfunc import predict_frame

        dataset = pd.read_parquet(Paths.dataset, columns=["timestamp", "symbol", *spec["features"]])
        dataset = dataset[dataset["timestamp"] <= end]
        predicted = predict_frame(tracking.load_pyfunc_model(champion.model_uri), dataset, spec["feature_version"])
        predicted["timestamp"] = pd.to_datetime(predicted["timestamp"], utc=True)
        scored = rows.merge(predicted[["timestamp", "symbol", "prediction"]].rename(columns={"prediction": "champ"}),
                            on=["timestamp", "symbol"], how="inner")
        scored["signal_champion"] = scored["champ"] - centre
        scored["fold"] = 0
        champion_eval = evaluate_oof(scored, params.evaluate, models={"champion": "signal_champion"}, market=market,
                                     horizon=horizon)
        return window_scorecards(champion_eval, scored, "champion", strategy=strategy).metrics

    outcome = promote_model(
        model_uri, card, evidence,
        validation_passed=bool(validation.get("success")),
        drift_rules=list((drift or {}).get("rules") or []),
        drift_detail=(drift or {}).get("detail", "no drift report in this pipeline yet"),
        params=params.promote, run_id=reference.get("run_id"), rescore_champion=rescore_champion,
        decision_path=Paths.decision,
    )
    result = outcome.model_dump(mode="json")
    log.info("promote: %s%s", result.get("status"),
             f" ({outcome.decision.diagnosis})" if outcome.decision.diagnosis else "")
    return result


def drift(params: Params) -> dict[str, Any]:
    """Drift, model performance and data quality of the newest bars against the champion's training window."""
    from alphaforge.drift import champion_reference_end, run_drift
    from alphaforge.train import task_of

    dataset = pd.read_parquet(Paths.dataset)
    spec = json.loads((Paths.trained_dir / "spec.json").read_text())
    source = Paths.stack_oof if Paths.stack_oof.exists() else Paths.oof
    predictions = pd.read_parquet(source) if source.exists() else None
    reference_end = None
    if params.tracking.enabled:
        reference_end = champion_reference_end(params.promote.model_name,
                                               http_max_retries=params.promote.http_max_retries,
                                               http_timeout_seconds=params.promote.http_timeout_seconds)
    centre = 0.5 if task_of(spec["target"]) == "classification" else 0.0
    result = run_drift(dataset, predictions, params.drift, Paths.drift_dir, features=spec["features"],
                       reference_end=reference_end, prediction_centre=centre, horizon=params.labels.horizon)
    return result.summary


def monitor(params: Params, hours: float | None = None, log_dir: str | None = None) -> dict[str, Any]:
    """Served traffic against the champion's reference data: drift, live IC and hit rate, degradation, lag."""
    from alphaforge.drift import champion_reference_end, pick_prediction_column, split_windows
    from alphaforge.monitor import run_monitor
    from alphaforge.train import task_of

    settings = params.monitor
    if hours is not None:
        settings = settings.model_copy(update={"lookback_hours": hours})
    dataset = pd.read_parquet(Paths.dataset)
    spec = json.loads((Paths.trained_dir / "spec.json").read_text())
    reference_end = None
    if params.tracking.enabled:
        reference_end = champion_reference_end(params.promote.model_name,
                                               http_max_retries=params.promote.http_max_retries,
                                               http_timeout_seconds=params.promote.http_timeout_seconds)
    reference = split_windows(dataset, params.drift, reference_end).reference
    reference = reference[["timestamp", "symbol", *spec["features"]]]
    source = Paths.stack_oof if Paths.stack_oof.exists() else Paths.oof
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
                         features=spec["features"], out_dir=Paths.monitor_dir)
    return result.summary


def first_training_end(params: Params, timestamps: pd.Series) -> pd.Timestamp:
    """End of the first walk-forward training window: regimes and risk models are fitted on data up to it."""
    from alphaforge.splits import WalkForward

    return WalkForward(params.train.walk_forward, purge=params.labels.horizon).split(timestamps)[0].train_end


def regimes(params: Params) -> dict[str, Any]:
    """Fit the market regime model on the first training window; causal regime features for every bar."""
    from alphaforge.regimes import current_regime, market_returns, plot_regimes, regime_features

    from alphaforge.validate import as_series

    bars = as_series(pd.read_parquet(Paths.validated_bars))  # no market return across a suspension
    fit_end = first_training_end(params, bars["timestamp"])
    model, frame = regime_features(bars, params.regimes, fit_end)
    frame["symbol"] = pd.read_parquet(Paths.validated_bars, columns=["symbol"])["symbol"].to_numpy()
    model.save(Paths.regime_model)
    write_parquet_atomic(frame, Paths.regime_features)
    plot_regimes(market_returns(bars), model, Paths.regime_plot)
    summary = {"fit_end": str(fit_end), "method": params.regimes.method, "n_regimes": params.regimes.n_regimes,
               "transmat": None if model.transmat_ is None else model.transmat_.tolist(),
               "share_by_regime": {str(int(k)): float(v) for k, v in
                                   frame["regime"].dropna().value_counts(normalize=True).sort_index().items()},
               "current": current_regime(model, market_returns(bars))}
    write_json_atomic(summary, Paths.regime_summary)
    return summary


def risk(params: Params) -> dict[str, Any]:
    """GARCH vs LightGBM vs EWMA next-bar volatility per symbol, out of sample; VaR backtests (Kupiec)."""
    from alphaforge.risk import compare_risk_panel

    bars = pd.read_parquet(Paths.validated_bars)
    fit_end = first_training_end(params, bars["timestamp"])
    metrics, forecasts = compare_risk_panel(bars, fit_end, params.risk)
    write_parquet_atomic(forecasts, Paths.risk_forecasts)
    write_json_atomic({"fit_end": str(fit_end), **metrics}, Paths.risk_metrics)
    log.info("risk: best by QLIKE %s; mean scores %s", metrics["best_by_qlike"], metrics["mean"])
    return metrics


def rl(params: Params) -> dict[str, Any]:
    """Optional: PPO/SAC on the walk-forward slices vs buy-and-hold and the ensemble's signal, in one environment."""
    from alphaforge.rl import run_rl_stage
    from alphaforge.splits import WalkForward

    dataset = pd.read_parquet(Paths.dataset)
    bars = pd.read_parquet(Paths.validated_bars)
    spec = json.loads((Paths.trained_dir / "spec.json").read_text())
    signal = None
    if spec["target"] != "forward_volatility":
        oof, models, _ = candidate_frame(spec)
        columns = [c for c in models.values() if c == params.rl.signal_column]
        if not columns:
            raise ValueError(f"rl.signal_column {params.rl.signal_column!r} is none of {sorted(models.values())}")
        signal = oof[["timestamp", "symbol", params.rl.signal_column]]
    if Paths.rl_models.exists():
        shutil.rmtree(Paths.rl_models)
    reference = json.loads(Paths.run_reference.read_text()) if Paths.run_reference.exists() else {}
    return run_rl_stage(
        dataset, bars, WalkForward(params.train.walk_forward, purge=params.labels.horizon), params.rl,
        signal=signal, experiment=params.tracking.experiment if params.tracking.enabled else None,
        parent_run_id=reference.get("run_id"), reports_dir=Paths.rl_reports, models_dir=Paths.rl_models,
    )


STAGES = {"ingest": ingest, "validate": validate, "features": features, "tune": tune, "train": train,
          "stack": stack, "evaluate": evaluate, "drift": drift, "promote": promote, "monitor": monitor,
          "regimes": regimes, "risk": risk, "rl": rl}


def run_stage(name: str, params: Params, **options: Any) -> dict[str, Any]:
    """Run one stage by name (``options`` go to stages that take them, e.g. tune's ``workers``)."""
    return STAGES[name](params, **options)
