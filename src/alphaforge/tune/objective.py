"""One trial: train the sampled parameters through the walk-forward, score each fold out of sample (rank IC, net Sharpe
or directional accuracy), report to the pruner, log the trial.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alphaforge.evaluate import EvaluationParams
from alphaforge.io import write_parquet_atomic as _write_parquet_atomic
from alphaforge.metrics import directional_accuracy, infer_periods_per_year, sharpe_ratio
from alphaforge.splits import WalkForward
from alphaforge.tune.settings import NO_SKILL, OVER_BUDGET_ATTR, TuneParams
from alphaforge.tune.study import StudyHandle

if TYPE_CHECKING:
    import optuna

    from alphaforge.models.base import Forecaster
    from alphaforge.train import FoldReport


# ------------------------------------------------------------------------------------------------ a trial


class _OverBudget(Exception):
    """Raised (and caught by the optimize loop) when a trial would exceed the study's budget."""


class _QuietOverBudget(logging.Filter):
    """Drops Optuna's two warning lines (one with a traceback) about a trial refused for the budget.

    The refusal is expected in a race between workers and is reported in our own debug line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._drop_next = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _OverBudget):
            self._drop_next = True  # Optuna follows with "Trial N failed with value None."
            return False
        if self._drop_next:
            self._drop_next = False
            return False
        return True


def _quiet_over_budget_warnings() -> None:
    optuna_logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietOverBudget) for f in optuna_logger.filters):
        optuna_logger.addFilter(_QuietOverBudget())


def _nan_to_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def objective_sharpe(frame: pd.DataFrame, evaluation: EvaluationParams, *, horizon: int, periods_per_year: float,
                     market: pd.DataFrame | None = None) -> float:
    """The ``sharpe`` objective of one fold: the net Sharpe of ``frame["signal"]`` traded through ``market``.

    The same strategy, costs and :func:`alphaforge.metrics.sharpe_ratio` as the evaluation leaderboard. Tune
    passes no ``market``: one is built from ``forward_return_1`` alone
    (:func:`alphaforge.evaluate.market_from_labels`).
    """
    from alphaforge.evaluate import market_from_labels, strategy_returns

    market = market_from_labels(frame, evaluation) if market is None else market
    returns = strategy_returns(frame, "signal", evaluation, market, horizon=horizon)
    return sharpe_ratio(returns["net_return"].to_numpy(dtype=float), periods_per_year)


class _Objective:
    """Train one trial's parameters through the walk-forward, report after each fold, log the trial."""

    def __init__(
        self, dataset: pd.DataFrame, handle: StudyHandle, *, tune: TuneParams, splitter: WalkForward, target: str,
        base_params: Mapping[str, Any], evaluation: EvaluationParams, worker_index: int,
        trials_dir: Path | None = None, label_normalise: str = "none", feature_processing: str = "none",
    ) -> None:
        from alphaforge.train import task_of

        self.trials_dir = trials_dir
        self.dataset = dataset
        self.handle = handle
        self.tune = tune
        self.splitter = splitter
        self.horizon = max(int(splitter.purge), 1)  # the purge is the label horizon
        self.target = target
        self.label_normalise = label_normalise
        self.feature_processing = feature_processing
        self.task = task_of(target)
        self.base_params = dict(base_params)
        self.space = tune.search_spaces[handle.family]
        self.evaluation = evaluation
        self.worker_index = worker_index
        self.folds = splitter.split(dataset["timestamp"])
        self.periods_per_year = 0.0
        if tune.metric == "sharpe":
            self.periods_per_year = evaluation.periods_per_year or infer_periods_per_year(dataset["timestamp"])

    def _admit(self, trial: optuna.Trial) -> None:
        """Refuse a trial that ``n_trials`` older trials (finished, running or queued) already cover."""
        from optuna.trial import TrialState

        holding = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        ahead = sum(1 for t in trial.study.get_trials(deepcopy=False, states=holding) if t.number < trial.number)
        if ahead >= self.tune.n_trials:
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            raise _OverBudget(f"{ahead} earlier trials already hold the budget of {self.tune.n_trials}")

    def _fold_value(self, report: FoldReport, model: Forecaster) -> float:
        """The configured metric on the fold's test rows."""
        if self.tune.metric == "rank_ic":
            return float(report.rank_ic)
        mask = np.zeros(len(self.dataset), dtype=bool)
        mask[self.folds[report.fold].test_rows] = True
        prediction = np.asarray(model.predict(self.dataset, predict_mask=mask), dtype=float)
        if self.tune.metric == "directional_accuracy":
            realised = self.dataset.loc[mask, self.target].to_numpy(dtype=float)
            if self.task == "classification":
                usable = np.isfinite(prediction) & np.isfinite(realised)
                hits = (prediction[usable] > 0.5) == (realised[usable] > 0.5)
                return float(hits.mean()) if hits.size else math.nan
            return directional_accuracy(prediction, realised)
        signal = prediction - 0.5 if self.task == "classification" else prediction
        frame = self.dataset.loc[mask, ["timestamp", "symbol", "forward_return_1"]].assign(signal=signal)
        return objective_sharpe(frame, self.evaluation, horizon=self.horizon, periods_per_year=self.periods_per_year)

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from alphaforge.models.normalise import with_fitted_processing
        from alphaforge.models.registry import make_forecaster
        from alphaforge.train import walk_forward_train

        self._admit(trial)
        trial.set_user_attr("worker", self.worker_index)
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
        sampled = {name: space.suggest(trial, name) for name, space in self.space.items()}
        params = {**self.base_params, **sampled}
        models: list[Forecaster] = []
        fold_values: list[float] = []
        fold_rank_ics: list[float] = []
        undefined_folds: list[int] = []
        last_fold = len(self.folds) - 1

        def make_model() -> Forecaster:
            model = with_fitted_processing(make_forecaster(self.handle.family, task=self.task, params=params),
                                           self.feature_processing)
            models[:] = [model]  # the fold's model, for metrics that need its predictions
            return model

        def on_fold(report: FoldReport) -> None:
            value = self._fold_value(report, models[-1])
            if not math.isfinite(value):
                undefined_folds.append(report.fold)
                value = NO_SKILL[self.tune.metric]
            fold_values.append(value)
            fold_rank_ics.append(float(report.rank_ic))
            trial.report(float(np.mean(fold_values)), step=report.fold)
            if report.fold < last_fold and trial.should_prune():
                raise optuna.TrialPruned(f"running mean {self.tune.metric} after fold {report.fold} is behind")

        started, started_ms = time.perf_counter(), int(time.time() * 1000)
        status, value, error = "FAILED", math.nan, None
        try:
            result = walk_forward_train(self.dataset, self.splitter, make_model, target=self.target,
                                        label_normalise=self.label_normalise,
                                        fit_final_model=False, on_fold=on_fold,
                                        label=f"{self.handle.family} trial {trial.number}")
            value = float(np.mean(fold_values))
            if self.trials_dir is not None:
                self._save_trial_predictions(trial.number, result.oof)
            status = "FINISHED"
            return value
        except optuna.TrialPruned:
            status = "KILLED"
            raise
        except Exception as err:
            error = repr(err)
            raise
        finally:
            seconds = time.perf_counter() - started
            trial.set_user_attr("fold_values", [_nan_to_none(v) for v in fold_values])
            trial.set_user_attr("seconds", round(seconds, 3))
            if undefined_folds:
                trial.set_user_attr("no_skill_folds", undefined_folds)
            if self.handle.parent_run_id is not None:
                self._log_child(trial, sampled, fold_values, fold_rank_ics, value, seconds, status, error,
                                started_ms)

    def _save_trial_predictions(self, number: int, oof: pd.DataFrame) -> None:
        """The complete trial's out-of-fold predictions, for the probability of backtest overfitting."""
        folder = trial_predictions_dir(self.trials_dir, self.handle.name)
        folder.mkdir(parents=True, exist_ok=True)
        _write_parquet_atomic(oof[["timestamp", "symbol", "fold", "prediction"]], folder / f"trial_{number:05d}.parquet")

    def _log_child(
        self, trial: optuna.Trial, sampled: Mapping[str, Any], fold_values: Sequence[float],
        fold_rank_ics: Sequence[float], value: float, seconds: float, status: str, error: str | None,
        started_ms: int,
    ) -> None:
        from alphaforge import tracking

        assert self.handle.parent_run_id is not None
        state = {"FINISHED": "COMPLETE", "KILLED": "PRUNED"}.get(status, "FAIL")
        step_metrics: dict[str, dict[int, float]] = {f"fold_{self.tune.metric}": dict(enumerate(fold_values))}
        if self.tune.metric != "rank_ic":
            step_metrics["fold_rank_ic"] = dict(enumerate(fold_rank_ics))
        tags = {"optuna.study": self.handle.name, "optuna.trial_number": trial.number, "optuna.state": state,
                "family": self.handle.family, "worker": self.worker_index}
        if error:
            tags["error"] = error
        tracking.log_child_run(
            self.handle.parent_run_id, run_name=f"{self.handle.family} trial {trial.number}",
            params={**sampled, "trial_number": trial.number},
            metrics={self.tune.metric: value, "duration_seconds": seconds, "folds_run": len(fold_values)},
            step_metrics=step_metrics, tags=tags, status=status, start_time_ms=started_ms,
            end_time_ms=int(time.time() * 1000),
        )


def trial_predictions_dir(trials_dir: str | Path, study_name: str) -> Path:
    """The folder holding a study's per-trial out-of-fold predictions."""
    return Path(trials_dir) / study_name
