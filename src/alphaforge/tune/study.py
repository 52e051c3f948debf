"""A study's identity and shape: the fingerprint in its name, the trial-seeded TPE sampler, the pruner, opening or
resuming a study, and counting its trials by state.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alphaforge.evaluate import EvaluationParams
from alphaforge.splits import WalkForward
from alphaforge.tune.settings import OVER_BUDGET_ATTR, TuneParams
from alphaforge.tune.storage import open_storage, redact, storage_url

if TYPE_CHECKING:
    import optuna


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
