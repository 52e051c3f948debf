"""Walk-forward hyperparameter search with Optuna (the tune stage).

One Optuna study per model family. A trial samples hyperparameters from the family's search
space, trains the family through the same walk-forward loop as the train stage
(:func:`alphaforge.train.walk_forward_train`) and scores each fold out of sample; the trial's
value is the mean fold metric, maximised:

* ``rank_ic``: the fold's rank IC against the training target (what the train stage reports);
* ``sharpe``: the annualised Sharpe ratio of the fold's strategy, net of costs
  (:func:`alphaforge.evaluate.strategy_returns`; each fold starts flat);
* ``directional_accuracy``: share of rows where the forecast's direction is right
  (sign for a return target, P(up) > 0.5 for ``forward_direction``).

A fold whose metric is undefined (a model that predicts a constant) scores as no skill: 0 IC,
0 Sharpe, 0.5 accuracy; its fold numbers are kept in the trial's user attribute ``no_skill_folds``.
After each fold the running mean is reported at step = fold number, so the pruner (median or
successive halving) can stop a trial that is already behind; the last fold is never pruned
(its work is done).

**Storage and workers.** The study lives in an Optuna RDB storage named by a URL: by default the
SQLite file ``<state dir>/optuna.db`` (:func:`alphaforge.tracking.state_dir`), or
``TuneParams.storage``, or ``$ALPHAFORGE_OPTUNA_STORAGE`` (which wins). Any number of processes,
on any machines, started with the same data and settings share one study through it:
:func:`run_workers` starts N of them (``python -m alphaforge.tune``). PostgreSQL is the documented
storage for several workers; SQLite works but serialises every write through a file lock.

**Exactly ``n_trials``.** The budget is ``n_trials`` *finished* (COMPLETE or PRUNED) trials per
study across all workers. Optuna's ``MaxTrialsCallback`` only stops a worker after a trial, so two
workers that finish at the same moment can both start one more. Here each worker checks before
starting a trial (finished + running elsewhere < budget; otherwise it waits for them), and a trial
that still slips past the budget in a race (it sees ``n_trials`` older trials that are finished,
running or queued) ends at once as FAIL with the user attribute ``over_budget`` and no work done.
Trial numbers come from the storage under a row lock, so they never repeat.

**Resuming.** Trials send a heartbeat every ``heartbeat_seconds``; a trial whose worker was killed
stops beating and, ``grace_period_seconds`` later, the next worker to look marks it FAIL and queues
a retry with the same parameters (``max_retry`` times). Restarting a killed worker (or any worker)
loads the study and carries on until the budget is reached. A trial killed within milliseconds of
its creation, before its first heartbeat, cannot be detected by Optuna and stays RUNNING; workers
then wait for it until their ``timeout_seconds`` run out.

**Study identity.** The study name is ``<study_prefix>-<family>-<fingerprint>``, the fingerprint
hashing the dataset's contents, the target, the metric, the walk-forward shape, the family's fixed
parameters and its search space (and the cost model for ``sharpe``). Rerunning with the same
inputs finds the finished study and returns its result without new trials; changing any of them
starts a new study instead of mixing trials scored on different data.

**Reproducibility.** The sampler is TPE seeded from ``seed`` and the trial number (so workers
never draw the same random start-up points), which makes one worker on a fresh study sample the
same parameters and find the same best trial every time. With several workers the order in which
trials finish, and so what TPE has seen when it samples, depends on timing: results are not
reproducible, only the budget is.

**Tracking.** With an experiment, each study has one MLflow parent run (tagged with the study
name, its id kept in the study's user attributes) and every trial that runs becomes a child run
under it, from whichever process ran it: sampled parameters, the fold metric per fold
(step = fold), the mean, the duration and the Optuna state. MLflow calls live in
:mod:`alphaforge.tracking`. :func:`run_workers` opens the studies (and parent runs) before it
starts the workers; two processes started by hand that open a *new* study at the same instant may
each create a parent run and log their trials under their own.

**Outputs.** :func:`write_best_params` writes ``{family: {"params", "value", "n_trials", ...}}``
(only the sampled parameters: the train stage lays them over its own per-family settings);
:func:`tune_stage` also writes a summary for ``dvc metrics``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alphaforge.evaluate import EvaluationParams
from alphaforge.features import LabelNormalise
from alphaforge.io import write_json_atomic as _write_json_atomic
from alphaforge.io import write_parquet_atomic as _write_parquet_atomic
from alphaforge.models.registry import FAMILIES
from alphaforge.splits import WalkForward, WalkForwardParams

if TYPE_CHECKING:
    import optuna

    from alphaforge.models.base import Forecaster
    from alphaforge.train import FoldReport

log = logging.getLogger(__name__)

STORAGE_ENV = "ALPHAFORGE_OPTUNA_STORAGE"
Metric = Literal["rank_ic", "sharpe", "directional_accuracy"]
CategoricalChoice = bool | int | float | str | None
# A worker with nothing to start (the rest of the budget is running elsewhere) looks again this often.
WAIT_POLL_SECONDS = 0.5
OVER_BUDGET_ATTR = "over_budget"
# A fold whose metric is undefined (constant predictions: no ranks, a flat book, no direction) scores as
# no skill, so that the sampler learns to avoid the region instead of seeing a failed trial.
NO_SKILL: dict[str, float] = {"rank_ic": 0.0, "sharpe": 0.0, "directional_accuracy": 0.5}

DEFAULT_DATASET_PATH = Path("data/features/dataset.parquet")
DEFAULT_BEST_PARAMS_PATH = Path("models/tuned/best_params.json")
DEFAULT_SUMMARY_PATH = Path("reports/tune/summary.json")


# ------------------------------------------------------------------------------------------------ settings


class SearchParam(BaseModel):
    """One hyperparameter's range: ``int``/``float`` between ``low`` and ``high`` (``log`` scale), or ``choices``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: tuple[CategoricalChoice, ...] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes 'choices' only, not low/high/log")
            return self
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole-number bounds, got low={self.low}, high={self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask ``trial`` for a value of ``name`` from this range."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices or ()))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this range can produce."""
        if self.type == "categorical":
            return value in (self.choices or ())
        assert self.low is not None and self.high is not None
        if self.type == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            return False
        return isinstance(value, (int, float, np.number)) and self.low <= value <= self.high

    def example(self) -> Any:
        """A value inside the range (its lower end or first choice), to check the family accepts the name."""
        if self.type == "categorical":
            return (self.choices or (None,))[0]
        assert self.low is not None
        return int(self.low) if self.type == "int" else float(self.low)


def _space(**params: dict[str, Any]) -> dict[str, SearchParam]:
    return {name: SearchParam(**spec) for name, spec in params.items()}


def default_search_spaces() -> dict[str, dict[str, SearchParam]]:
    """Ranges around the regularised defaults of each family (noisy targets want small, shrunk models)."""
    trees = {"n_estimators": {"type": "int", "low": 50, "high": 400, "log": True},
             "subsample": {"type": "float", "low": 0.5, "high": 1.0},
             "colsample_bytree": {"type": "float", "low": 0.4, "high": 1.0},
             "learning_rate": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
             "reg_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}}
    forest = _space(n_estimators={"type": "int", "low": 50, "high": 300, "log": True},
                    min_samples_leaf={"type": "int", "low": 20, "high": 1000, "log": True},
                    max_features={"type": "float", "low": 0.1, "high": 1.0},
                    max_samples={"type": "float", "low": 0.2, "high": 1.0})
    recurrent = _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                       num_layers={"type": "int", "low": 1, "high": 2},
                       dropout={"type": "float", "low": 0.0, "high": 0.4},
                       learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                       lookback={"type": "categorical", "choices": [10, 20, 40]})
    return {
        "lightgbm": _space(**trees, num_leaves={"type": "int", "low": 4, "high": 64, "log": True},
                           min_child_samples={"type": "int", "low": 20, "high": 1000, "log": True}),
        "xgboost": _space(**trees, max_depth={"type": "int", "low": 2, "high": 8},
                          min_child_weight={"type": "float", "low": 1.0, "high": 500.0, "log": True}),
        "random_forest": forest,
        "extra_trees": forest,
        "ridge": _space(alpha={"type": "float", "low": 1e-2, "high": 1e4, "log": True}),
        "elastic_net": _space(alpha={"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                              l1_ratio={"type": "float", "low": 0.0, "high": 1.0}),
        "mlp": _space(alpha={"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                      learning_rate_init={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
        "lstm": recurrent,
        "gru": recurrent,
        "transformer": _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                              num_layers={"type": "int", "low": 1, "high": 3},
                              dropout={"type": "float", "low": 0.0, "high": 0.4},
                              learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
        "cnn": _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                      num_layers={"type": "int", "low": 1, "high": 4},
                      kernel_size={"type": "categorical", "choices": [2, 3, 5]},
                      dropout={"type": "float", "low": 0.0, "high": 0.4},
                      learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
    }


class TuneParams(BaseModel):
    """The ``tune`` section of params.yaml: which families, the objective, the budget, storage and pruning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: tuple[str, ...] = ("lightgbm",)
    storage: str | None = Field(None, description=f"Optuna RDB URL; None: sqlite:///<state dir>/optuna.db; "
                                                  f"${STORAGE_ENV} overrides both")
    study_prefix: str = Field("alphaforge", min_length=1)
    metric: Metric = "rank_ic"
    n_trials: int = Field(8, ge=1, description="finished (COMPLETE + PRUNED) trials per study, all workers together")
    timeout_seconds: float = Field(300.0, gt=0, description="wall clock per worker per study; a running trial ends")
    seed: int = 42
    pruner: Literal["median", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="random trials before TPE, and complete trials before pruning")
    heartbeat_seconds: int = Field(10, ge=1, description="how often a running trial proves its worker is alive")
    grace_period_seconds: int = Field(60, ge=1, description="silence after which a running trial is failed")
    max_retry: int = Field(1, ge=0, description="re-runs of a trial whose worker died")
    search_spaces: dict[str, dict[str, SearchParam]] = Field(
        default_factory=default_search_spaces,
        description="family -> hyperparameter -> range; a family given here replaces its default ranges whole")

    @field_validator("search_spaces", mode="before")
    @classmethod
    def _over_defaults(cls, given: Any) -> Any:
        """Families named in params.yaml replace their defaults; the other families keep theirs."""
        if not isinstance(given, Mapping):
            return given
        return {**default_search_spaces(), **given}

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        if not self.families:
            raise ValueError("families: name at least one model family to tune")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families: listed twice in {list(self.families)}")
        missing = [f for f in self.families if not self.search_spaces.get(f)]
        if missing:
            raise ValueError(f"search_spaces: no hyperparameter ranges for {missing}")
        if self.grace_period_seconds <= self.heartbeat_seconds:
            raise ValueError(f"grace_period_seconds={self.grace_period_seconds} must exceed "
                             f"heartbeat_seconds={self.heartbeat_seconds}, or live trials would be failed")
        return self


class TuneJob(BaseModel):
    """Everything a worker process needs, as one JSON file: where the data is and every setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_path: str = str(DEFAULT_DATASET_PATH)
    tune: TuneParams = TuneParams()
    walk_forward: WalkForwardParams = WalkForwardParams()
    purge: int = Field(5, ge=0, description="the label horizon in bars")
    target: str = "forward_return"
    label_normalise: LabelNormalise = Field("none", description="labels.normalise: the training label's per-timestamp "
                                            "transform (the metrics use the raw label)")
    feature_processing: str = Field("none", description="features.processing: a fitted kind (robust_zscore) puts each "
                                    "trial's model behind it, fitted per fold as in training")
    base_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="family -> fixed hyperparameters that sampled ones are laid over")
    evaluation: EvaluationParams = EvaluationParams()
    experiment: str | None = Field(None, description="MLflow experiment; None: no tracking")
    trials_dir: str | None = Field(
        None, description="where complete trials' OOF predictions go (<dir>/<study>/trial_N.parquet); None: kept nowhere")

    def splitter(self) -> WalkForward:
        return WalkForward(self.walk_forward, purge=self.purge)


# ------------------------------------------------------------------------------------------------ storage


def storage_url(tune: TuneParams) -> str:
    """``$ALPHAFORGE_OPTUNA_STORAGE``, else ``tune.storage``, else the SQLite file in the state folder."""
    from alphaforge.tracking import state_dir

    url = os.environ.get(STORAGE_ENV) or tune.storage
    if url:
        if "://" not in url:
            raise ValueError(f"tune.storage {url!r} is not a database URL (sqlite:///path.db, "
                             "postgresql://user@host/db); set it or ${STORAGE_ENV}")
        return url
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL with any password masked, for logs and reports."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not parseable as a database URL: show the scheme only
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, tune: TuneParams) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, and a retry of each trial whose worker died."""
    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # several processes on one file: wait for the write lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    import sqlalchemy.exc

    attempts = 4
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=tune.heartbeat_seconds,
                    grace_period=tune.grace_period_seconds,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=tune.max_retry),
                )
        except sqlalchemy.exc.DatabaseError as err:
            # Workers that start together on an empty database race to create Optuna's tables; the
            # loser sees "table already exists" or a duplicate key. The tables are there by now, so
            # connecting again works; any other database error repeats and is raised as it is.
            if attempt == attempts:
                raise
            log.info("tune: opening %s failed (%s); retrying, another process may be creating the tables",
                     redact(url), type(err.orig).__name__ if err.orig is not None else type(err).__name__)
            time.sleep(0.2 * attempt + random.random() * 0.3)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------ the study


def study_fingerprint(
    dataset: pd.DataFrame, family: str, *, tune: TuneParams, splitter: WalkForward, target: str,
    base_params: Mapping[str, Any], evaluation: EvaluationParams, label_normalise: str = "none",
    feature_processing: str = "none",
) -> str:
    """A short hash of everything that changes what a trial's value means (see the module docstring)."""
    data_hash = int(pd.util.hash_pandas_object(dataset, index=False).sum())
    identity = {
        "data": [data_hash, len(dataset), list(map(str, dataset.columns))],
        "family": family,
        "target": target if label_normalise == "none" else [target, label_normalise],
        "metric": tune.metric,
        "walk_forward": [splitter.params.model_dump(mode="json"), splitter.purge],
        "base_params": dict(base_params),
        "space": {k: v.model_dump(mode="json") for k, v in sorted(tune.search_spaces[family].items())},
        "evaluation": evaluation.model_dump(mode="json") if tune.metric == "sharpe" else None,
        **({"feature_processing": feature_processing} if feature_processing != "none" else {}),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@functools.cache
def _trial_seeded_tpe_class() -> type:
    """The sampler class, built on first use so that importing this module does not import Optuna."""
    import optuna

    class TrialSeededTPESampler(optuna.samplers.BaseSampler):
        """TPE whose random numbers for trial ``k`` come from a seed derived from (``seed``, ``k``).

        One seeded ``TPESampler`` per process would give every worker the same random start-up
        points (duplicate trials); seeding per trial number keeps a lone worker reproducible and
        gives each trial, whichever process runs it, its own stream. TPE keeps no other state: it
        reads the history from the storage for every trial.
        """

        def __init__(self, seed: int, n_startup_trials: int) -> None:
            self._seed = seed
            self._n_startup_trials = n_startup_trials
            self._inner = self._for_trial(0)

        def _for_trial(self, number: int) -> optuna.samplers.TPESampler:
            seed = int(np.random.SeedSequence([self._seed % 2**32, number]).generate_state(1)[0])
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._n_startup_trials)

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self._inner = self._for_trial(trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict) -> dict:
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                               param_distribution: optuna.distributions.BaseDistribution) -> Any:
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._inner.reseed_rng()

    return TrialSeededTPESampler


def _sampler(tune: TuneParams) -> optuna.samplers.BaseSampler:
    return _trial_seeded_tpe_class()(tune.seed, tune.n_startup_trials)


def _pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    import optuna

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.n_startup_trials, n_warmup_steps=0)
    if tune.pruner == "successive_halving":
        # steps are folds (a handful), so the smallest rung is one fold and each rung keeps half
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class StudyHandle:
    """An open study and what the workers need to know about it."""

    study: optuna.Study
    family: str
    name: str
    url: str
    parent_run_id: str | None


def open_study(
    dataset: pd.DataFrame, family: str, *, tune: TuneParams, splitter: WalkForward, target: str = "forward_return",
    base_params: Mapping[str, Any] | None = None, evaluation: EvaluationParams | None = None,
    experiment: str | None = None, label_normalise: str = "none", feature_processing: str = "none",
) -> StudyHandle:
    """Create or load the family's study, and its MLflow parent run when tracking (created once per study)."""
    import optuna

    from alphaforge import tracking

    base_params = dict(base_params or {})
    evaluation = evaluation or EvaluationParams()
    url = storage_url(tune)
    fingerprint = study_fingerprint(dataset, family, tune=tune, splitter=splitter, target=target,
                                    base_params=base_params, evaluation=evaluation, label_normalise=label_normalise,
                                    feature_processing=feature_processing)
    name = f"{tune.study_prefix}-{family}-{fingerprint}"
    study = optuna.create_study(
        storage=open_storage(url, tune), sampler=_sampler(tune), pruner=_pruner(tune),
        study_name=name, direction="maximize", load_if_exists=True,
    )
    attrs = study.user_attrs
    if "family" not in attrs:
        for key, value in {"family": family, "metric": tune.metric, "target": target,
                           "search_space": {k: v.model_dump(mode="json") for k, v in
                                            tune.search_spaces[family].items()},
                           "base_params": json.loads(json.dumps(dict(base_params), default=str))}.items():
            study.set_user_attr(key, value)
    parent_run_id = attrs.get("mlflow_parent_run_id") if experiment is not None else None
    if experiment is not None and parent_run_id is None:
        parent_run_id = tracking.create_parent_run(
            experiment, run_name=f"tune {name}",
            params={"family": family, "metric": tune.metric, "target": target, "n_trials": tune.n_trials,
                    "seed": tune.seed, "pruner": tune.pruner, "n_startup_trials": tune.n_startup_trials,
                    "walk_forward": splitter.params.model_dump(mode="json"), "purge": splitter.purge,
                    "search_space": {k: v.model_dump(mode="json", exclude_none=True)
                                     for k, v in tune.search_spaces[family].items()},
                    "base_params": dict(base_params)},
            tags={"stage": "tune", "optuna.study": name, "family": family, "optuna.storage": redact(url)},
        )
        study.set_user_attr("mlflow_parent_run_id", parent_run_id)
        study.set_user_attr("mlflow_experiment", experiment)
    return StudyHandle(study=study, family=family, name=name, url=url, parent_run_id=parent_run_id)


@dataclass(frozen=True)
class StateCounts:
    """How many trials of a study are in each state (over-budget refusals counted apart from failures)."""

    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int
    over_budget: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def state_counts(study: optuna.Study) -> StateCounts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    over = sum(1 for t in failed if t.user_attrs.get(OVER_BUDGET_ATTR))
    return StateCounts(
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        failed=len(failed) - over,
        over_budget=over,
    )


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


def _sharpe(net: np.ndarray, periods_per_year: float) -> float:
    """Annualised mean over standard deviation of per-period net returns; NaN without dispersion."""
    net = net[np.isfinite(net)]
    if net.size < 2:
        return math.nan
    std = float(net.std(ddof=1))
    if not std > 1e-15:
        return math.nan
    return float(net.mean() / std * math.sqrt(periods_per_year))


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
            from alphaforge.evaluate import infer_periods_per_year

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
            else:
                usable = np.isfinite(prediction) & np.isfinite(realised) & (prediction != 0)
                hits = np.sign(prediction[usable]) == np.sign(realised[usable])
            return float(hits.mean()) if hits.size else math.nan
        from alphaforge.evaluate import market_from_labels, strategy_returns

        signal = prediction - 0.5 if self.task == "classification" else prediction
        frame = self.dataset.loc[mask, ["timestamp", "symbol", "forward_return_1"]].assign(signal=signal)
        returns = strategy_returns(frame, "signal", self.evaluation, market_from_labels(frame, self.evaluation),
                                   horizon=self.horizon)
        return _sharpe(returns["net_return"].to_numpy(dtype=float), self.periods_per_year)

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


# ------------------------------------------------------------------------------------------------ workers


def tune_job(job: TuneJob, *, worker_index: int = 0, dataset: pd.DataFrame | None = None) -> dict[str, dict]:
    """Every family of ``job`` in turn, in this process: {family: summary}."""
    if dataset is None:
        dataset = pd.read_parquet(job.dataset_path)
    return {
        family: tune_family(dataset, family, tune=job.tune, splitter=job.splitter(), target=job.target,
                            base_params=job.base_params.get(family, {}), evaluation=job.evaluation,
                            experiment=job.experiment, worker_index=worker_index, trials_dir=job.trials_dir,
                            label_normalise=job.label_normalise, feature_processing=job.feature_processing)
        for family in job.tune.families
    }


def worker_command(job_path: str | Path, worker_index: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one worker process (this interpreter, this package on the path)."""
    import alphaforge

    package_root = str(Path(alphaforge.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "alphaforge.tune", "--job", str(job_path), "--worker-index", str(worker_index)]
    return command, env


def _pinned(job: TuneJob) -> TuneJob:
    """``job`` with its storage URL resolved here, so every worker opens the same database."""
    return job.model_copy(update={"tune": job.tune.model_copy(update={"storage": storage_url(job.tune)})})


def run_workers(n_workers: int, job: TuneJob, *, dataset: pd.DataFrame | None = None) -> dict[str, dict]:
    """Tune with ``n_workers`` OS processes sharing each family's study; {family: summary} once all exit.

    The studies (and their MLflow parent runs) are created here first, so the workers only join
    them. A worker that exits with an error does not stop the others; the error is raised after
    they finish, naming the worker.
    """
    if n_workers < 1:
        raise ValueError(f"--workers must be at least 1, got {n_workers}")
    job = _pinned(job)
    if dataset is None:
        dataset = pd.read_parquet(job.dataset_path)
    url = storage_url(job.tune)
    if n_workers > 1 and url.startswith("sqlite"):
        log.warning("tune: %d workers on SQLite (%s) serialise on its file lock; use PostgreSQL for real "
                    "parallel search (tune.storage or $%s)", n_workers, redact(url), STORAGE_ENV)
    handles = {}
    for family in job.tune.families:
        base = job.base_params.get(family, {})
        _check_inputs(dataset, family, job.tune, job.target, base)
        handles[family] = open_study(dataset, family, tune=job.tune, splitter=job.splitter(), target=job.target,
                                     base_params=base, evaluation=job.evaluation, experiment=job.experiment,
                                     label_normalise=job.label_normalise, feature_processing=job.feature_processing)
    with tempfile.TemporaryDirectory(prefix="alphaforge-tune-") as folder:
        job_path = Path(folder) / "job.json"
        job_path.write_text(job.model_dump_json())
        processes = []
        try:
            for index in range(n_workers):
                command, env = worker_command(job_path, index)
                processes.append(subprocess.Popen(command, env=env))
            log.info("tune: %d workers started (pids %s) on %s", n_workers, [p.pid for p in processes], redact(url))
            codes = [process.wait() for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    process.wait()
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    if failed:
        raise RuntimeError("tune: " + ", ".join(f"worker {i} exited with code {c}" for i, c in failed)
                           + "; its traceback is in the log above")
    results = {}
    for family, handle in handles.items():
        results[family] = summarize_study(handle, job.tune)
        _record_on_parent(handle, results[family])
    return results


# ------------------------------------------------------------------------------------------------ outputs


def write_best_params(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """``{family: {"params", "value", "n_trials", "metric", "study_name"}}``, written atomically.

    Raises when a family has no complete trial: there would be nothing for the train stage to use.
    """
    payload = {}
    for family, result in results.items():
        if result.get("best_trial") is None:
            raise RuntimeError(
                f"tune {family}: no trial completed ({result.get('n_pruned', 0)} pruned, "
                f"{result.get('n_failed', 0)} failed); raise tune.n_trials or tune.timeout_seconds")
        payload[family] = {"params": dict(result["best_params"]), "value": result["best_value"],
                           "n_trials": result["n_trials"], "metric": result["metric"],
                           "study_name": result["study_name"]}
    _write_json_atomic(payload, Path(path))


def trial_predictions_dir(trials_dir: str | Path, study_name: str) -> Path:
    """The folder holding a study's per-trial out-of-fold predictions."""
    return Path(trials_dir) / study_name


def tune_stage(
    job: TuneJob,
    *,
    workers: int = 1,
    best_params_path: str | Path = DEFAULT_BEST_PARAMS_PATH,
    summary_path: str | Path = DEFAULT_SUMMARY_PATH,
) -> dict[str, Any]:
    """The DVC stage: tune every family (in this process, or with ``workers`` processes), write the outputs.

    Returns the summary written to ``summary_path``.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress line replaces Optuna's own
    dataset = pd.read_parquet(job.dataset_path)
    if workers == 1:
        results = tune_job(_pinned(job), dataset=dataset)
    else:
        results = run_workers(workers, job, dataset=dataset)
    write_best_params(results, best_params_path)
    summary = {"workers": workers, "metric": job.tune.metric, "families": results}
    _write_json_atomic(summary, Path(summary_path))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: ``python -m alphaforge.tune --job job.json [--worker-index I]``."""
    import optuna

    parser = argparse.ArgumentParser(prog="python -m alphaforge.tune", description=main.__doc__)
    parser.add_argument("--job", required=True, type=Path, help="a TuneJob as JSON (run_workers writes one)")
    parser.add_argument("--worker-index", type=int, default=0, help="names the worker in logs and trial attributes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s worker {args.worker_index} pid {os.getpid()} %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job = TuneJob.model_validate_json(args.job.read_text())
    tune_job(job, worker_index=args.worker_index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
