"""The search loop of one family: optimise until exactly ``n_trials`` trials finished across every worker, then
summarise the study.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphaforge.evaluate import EvaluationParams
from alphaforge.splits import WalkForward
from alphaforge.tune.objective import _Objective, _OverBudget, _nan_to_none, _quiet_over_budget_warnings
from alphaforge.tune.settings import OVER_BUDGET_ATTR, WAIT_POLL_SECONDS, TuneParams
from alphaforge.tune.storage import redact
from alphaforge.tune.study import StudyHandle, open_study, state_counts

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("alphaforge.tune")


# ------------------------------------------------------------------------------------------------ the loop


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _progress(handle: StudyHandle, tune: TuneParams) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """The per-trial progress line: family, trial, state, value, best so far, budget, seconds."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(OVER_BUDGET_ATTR):
            log.debug("tune %s: trial %d not run, budget reached", handle.family, trial.number)
            return
        best = _best(study)
        counts = state_counts(study)
        value = "n/a" if trial.value is None else f"{trial.value:.4f}"
        best_text = "n/a" if best is None else f"{best.value:.4f} (trial {best.number})"
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        log.info("tune %s: trial %d %s %s=%s  best %s  finished %d/%d  %.1fs", handle.family, trial.number,
                 trial.state.name, tune.metric, value, best_text, counts.finished, tune.n_trials, seconds)

    return callback


def _optimize_until_budget(handle: StudyHandle, objective: _Objective, tune: TuneParams) -> None:
    """Run trials in this process until the study has ``n_trials`` finished ones or the timeout passes."""
    import optuna

    study = handle.study
    deadline = time.monotonic() + tune.timeout_seconds
    progress = _progress(handle, tune)
    _quiet_over_budget_warnings()
    while True:
        counts = state_counts(study)
        if counts.finished >= tune.n_trials:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("tune %s: timeout of %gs reached with %d/%d trials finished", handle.family,
                        tune.timeout_seconds, counts.finished, tune.n_trials)
            return
        if counts.waiting == 0 and counts.finished + counts.running >= tune.n_trials:
            # the rest of the budget is running elsewhere: wait for it, failing trials whose worker died
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(WAIT_POLL_SECONDS, left))
            continue
        study.optimize(objective, n_trials=1, catch=(_OverBudget,), callbacks=[progress])


def summarize_study(handle: StudyHandle, tune: TuneParams) -> dict[str, Any]:
    """Best parameters and value, trial counts, and where the study and its runs are."""
    counts = state_counts(handle.study)
    best = _best(handle.study)
    return {
        "family": handle.family,
        "study_name": handle.name,
        "storage": redact(handle.url),
        "metric": tune.metric,
        "direction": "maximize",
        "best_value": None if best is None else _nan_to_none(best.value),
        "best_params": {} if best is None else dict(best.params),
        "best_trial": None if best is None else best.number,
        "best_fold_values": [] if best is None else best.user_attrs.get("fold_values", []),
        "n_trials": counts.finished,
        "n_requested": tune.n_trials,
        "n_complete": counts.complete,
        "n_pruned": counts.pruned,
        "n_failed": counts.failed,
        "n_refused_over_budget": counts.over_budget,
        "n_running": counts.running,
        "budget_reached": counts.finished >= tune.n_trials,
        "mlflow_parent_run_id": handle.parent_run_id,
    }


def _record_on_parent(handle: StudyHandle, summary: Mapping[str, Any]) -> None:
    """Best value and counts on the parent run (at step = finished trials); end it once the budget is spent."""
    from alphaforge import tracking

    if handle.parent_run_id is None:
        return
    metrics = {key: summary[key] for key in ("n_trials", "n_complete", "n_pruned", "n_failed")}
    if summary["best_value"] is not None:
        metrics[f"best_{summary['metric']}"] = summary["best_value"]
    tracking.update_parent_run(
        handle.parent_run_id, metrics=metrics, step=int(summary["n_trials"]),
        tags={"best_params": json.dumps(summary["best_params"], sort_keys=True),
              "best_trial": summary["best_trial"]},
        status="FINISHED" if summary["budget_reached"] else None,
    )


def _check_inputs(dataset: pd.DataFrame, family: str, tune: TuneParams, target: str,
                  base_params: Mapping[str, Any]) -> None:
    """Fail before any trial on a setting no trial could survive, naming it."""
    from alphaforge.models.registry import make_forecaster
    from alphaforge.train import task_of

    task = task_of(target)
    if family not in tune.search_spaces or not tune.search_spaces[family]:
        raise ValueError(f"tune.search_spaces has no ranges for family {family!r}")
    if target not in dataset.columns:
        raise ValueError(f"the dataset has no label column {target!r}; rerun the features stage")
    if tune.metric != "rank_ic" and target == "forward_volatility":
        raise ValueError(f"tune.metric {tune.metric!r} needs a return or direction target, not {target!r}")
    if tune.metric == "sharpe" and "forward_return_1" not in dataset.columns:
        raise ValueError("tune.metric 'sharpe' needs the dataset column 'forward_return_1'; rerun the features stage")
    example = {**base_params, **{k: v.example() for k, v in tune.search_spaces[family].items()}}
    try:
        make_forecaster(family, task=task, params=example)
    except ValueError as err:
        raise ValueError(f"tune.search_spaces.{family} (with the family's fixed parameters): {err}") from err


def tune_family(
    dataset: pd.DataFrame,
    family: str,
    *,
    tune: TuneParams,
    splitter: WalkForward,
    target: str = "forward_return",
    base_params: Mapping[str, Any] | None = None,
    evaluation: EvaluationParams | None = None,
    experiment: str | None = None,
    worker_index: int = 0,
    trials_dir: str | Path | None = None,
    label_normalise: str = "none",
    feature_processing: str = "none",
) -> dict[str, Any]:
    """Run, resume or join the family's study in this process until its budget is spent; its summary.

    ``dataset`` is the features-stage frame (features and labels, sorted by symbol then time);
    ``base_params`` are the family's fixed hyperparameters, under the sampled ones; ``experiment``
    None switches MLflow off. Other processes may work on the same study at the same time.
    """
    base_params = dict(base_params or {})
    evaluation = evaluation or EvaluationParams()
    _check_inputs(dataset, family, tune, target, base_params)
    handle = open_study(dataset, family, tune=tune, splitter=splitter, target=target, base_params=base_params,
                        evaluation=evaluation, experiment=experiment, label_normalise=label_normalise,
                        feature_processing=feature_processing)
    counts = state_counts(handle.study)
    log.info("tune %s: study %s in %s, %d/%d trials finished, metric %s", family, handle.name, redact(handle.url),
             counts.finished, tune.n_trials, tune.metric)
    objective = _Objective(dataset, handle, tune=tune, splitter=splitter, target=target, base_params=base_params,
                           evaluation=evaluation, worker_index=worker_index, label_normalise=label_normalise,
                           feature_processing=feature_processing,
                           trials_dir=Path(trials_dir) if trials_dir is not None else None)
    started = time.perf_counter()
    _optimize_until_budget(handle, objective, tune)
    summary = summarize_study(handle, tune)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    _record_on_parent(handle, summary)
    log.info("tune %s: best %s=%s (trial %s) %s; %d complete, %d pruned, %d failed", family, tune.metric,
             summary["best_value"], summary["best_trial"], summary["best_params"], summary["n_complete"],
             summary["n_pruned"], summary["n_failed"])
    return summary
