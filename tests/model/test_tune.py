"""The tune stage: exact trial budgets, seeded search, pruning, shared studies across worker processes,
resuming after a killed worker, and one MLflow child run per trial under the study's parent run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
from optuna.trial import TrialState

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.features import FeatureParams, compute_features, compute_labels
from alphaforge.splits import WalkForward, WalkForwardParams
from alphaforge.tune import (
    SearchParam,
    TuneJob,
    TuneParams,
    open_study,
    run_workers,
    tune_family,
    tune_stage,
    worker_command,
    write_best_params,
)

HORIZON = 5
WALK_FORWARD = WalkForwardParams(n_splits=3, min_train_size=200, embargo=2)
N_FOLDS = WALK_FORWARD.n_splits
RIDGE_BASE = {"n_jobs": 1}
# low alphas overfit the noise, high ones shrink towards the planted signal: clearly better and worse trials
RIDGE_SPACE = {"ridge": {"alpha": {"type": "float", "low": 1e-3, "high": 1e5, "log": True}}}
LIGHTGBM_BASE = {"num_threads": 1, "max_bin": 31, "min_child_samples": 50}
LIGHTGBM_SPACE = {"lightgbm": {"n_estimators": {"type": "int", "low": 5, "high": 40},
                               "num_leaves": {"type": "int", "low": 2, "high": 16},
                               "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True}}}
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    """15 synthetic symbols x 500 bars with a planted mean-reversion signal: features and labels."""
    bars, _ = make_synthetic(SyntheticParams(n_symbols=15, n_bars=500, seed=3))
    labels = compute_labels(bars, HORIZON)
    return pd.concat([compute_features(bars, FeatureParams()), labels.drop(columns=["timestamp", "symbol"])], axis=1)


@pytest.fixture(scope="module")
def dataset_path(dataset: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune-data") / "dataset.parquet"
    dataset.to_parquet(path)
    return path


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the repository's .alphaforge folder or a storage set in the environment."""
    monkeypatch.setenv("ALPHAFORGE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("ALPHAFORGE_OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards."""
    name = f"alphaforge_tune_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def splitter() -> WalkForward:
    return WalkForward(WALK_FORWARD, purge=HORIZON)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def trials_of(url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_study_spends_exactly_the_budget_and_seeded_search_repeats(dataset: pd.DataFrame, tmp_path: Path) -> None:
    results = []
    for attempt in ("first", "second"):
        tune = TuneParams(families=("lightgbm",), storage=sqlite_url(tmp_path / f"{attempt}.db"), n_trials=6,
                          n_startup_trials=3, seed=7, search_spaces=LIGHTGBM_SPACE)
        results.append(tune_family(dataset, "lightgbm", tune=tune, splitter=splitter(), base_params=LIGHTGBM_BASE))
    first, second = results
    assert first["n_trials"] == 6 and first["budget_reached"]
    assert len(finished(trials_of(sqlite_url(tmp_path / "first.db"), first["study_name"]))) == 6
    # a fresh study with the same seed samples the same parameters and finds the same best trial
    assert first["best_params"] == second["best_params"]
    assert first["best_value"] == pytest.approx(second["best_value"], abs=1e-12)
    assert first["best_trial"] == second["best_trial"]

    path = tmp_path / "models" / "tuned" / "best_params.json"
    write_best_params({"lightgbm": first}, path)
    written = json.loads(path.read_text())["lightgbm"]
    space = TuneParams(search_spaces=LIGHTGBM_SPACE).search_spaces["lightgbm"]
    assert set(written["params"]) == set(space)
    assert all(space[name].contains(value) for name, value in written["params"].items()), written["params"]
    assert written["n_trials"] == 6 and written["value"] == pytest.approx(first["best_value"])

    # running again with the same data and settings resumes the finished study: no new trials, same answer
    first_tune = tune.model_copy(update={"storage": sqlite_url(tmp_path / "first.db")})
    again = tune_family(dataset, "lightgbm", tune=first_tune, splitter=splitter(), base_params=LIGHTGBM_BASE)
    assert again["study_name"] == first["study_name"] and again["best_params"] == first["best_params"]
    assert len(trials_of(sqlite_url(tmp_path / "first.db"), first["study_name"])) == 6


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruner_stops_trials_that_fall_behind(dataset: pd.DataFrame, tmp_path: Path, pruner: str) -> None:
    tune = TuneParams(families=("ridge",), storage=sqlite_url(tmp_path / "prune.db"), n_trials=6,
                      n_startup_trials=2, pruner=pruner, search_spaces=RIDGE_SPACE)
    summary = tune_family(dataset, "ridge", tune=tune, splitter=splitter(), base_params=RIDGE_BASE)
    trials = trials_of(tune.storage, summary["study_name"])
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state.name) for t in trials]
    # a pruned trial stopped before its last fold; a complete one reported every fold
    assert all(max(t.intermediate_values) < N_FOLDS - 1 for t in pruned)
    assert all(sorted(t.intermediate_values) == list(range(N_FOLDS))
               for t in trials if t.state == TrialState.COMPLETE)
    assert len(finished(trials)) == 6 == summary["n_complete"] + summary["n_pruned"]
    assert summary["n_pruned"] == len(pruned)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_no_trial_starts_while_the_rest_of_the_budget_runs_elsewhere(dataset: pd.DataFrame, tmp_path: Path) -> None:
    tune = TuneParams(families=("ridge",), storage=sqlite_url(tmp_path / "busy.db"), n_trials=3,
                      timeout_seconds=1.5, search_spaces=RIDGE_SPACE)
    handle = open_study(dataset, "ridge", tune=tune, splitter=splitter(), target="forward_return",
                        base_params=RIDGE_BASE, evaluation=None, experiment=None)
    elsewhere = [handle.study.ask() for _ in range(3)]  # three trials running in other workers
    summary = tune_family(dataset, "ridge", tune=tune, splitter=splitter(), base_params=RIDGE_BASE)
    assert summary["n_trials"] == 0 and not summary["budget_reached"]
    assert len(trials_of(tune.storage, handle.name)) == 3
    for number, trial in enumerate(elsewhere):
        handle.study.tell(trial, 0.01 * number)
    summary = tune_family(dataset, "ridge", tune=tune, splitter=splitter(), base_params=RIDGE_BASE)
    assert summary["budget_reached"] and summary["best_trial"] == 2
    assert len(trials_of(tune.storage, handle.name)) == 3


def test_two_worker_processes_share_one_postgres_study(dataset_path: Path, postgres_url: str) -> None:
    job = TuneJob(dataset_path=str(dataset_path), walk_forward=WALK_FORWARD, purge=HORIZON,
                  base_params={"ridge": RIDGE_BASE},
                  tune=TuneParams(families=("ridge",), storage=postgres_url, n_trials=10, timeout_seconds=120,
                                  search_spaces=RIDGE_SPACE))
    results = run_workers(2, job)
    summary = results["ridge"]
    trials = trials_of(postgres_url, summary["study_name"])
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no duplicate and no missing trial numbers
    assert len(finished(trials)) == 10 == summary["n_trials"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the only trials that did not finish are ones refused for the budget in a race, with no work done
    assert all(t.user_attrs.get("over_budget") for t in trials if t.state == TrialState.FAIL)
    # both processes worked on the same study
    assert {t.user_attrs["worker"] for t in finished(trials)} == {0, 1}


def test_killed_worker_is_resumed_and_its_trial_retried(dataset_path: Path, tmp_path: Path, workdir: Path) -> None:
    url = sqlite_url(tmp_path / "resume.db")
    job = TuneJob(dataset_path=str(dataset_path), walk_forward=WALK_FORWARD, purge=HORIZON,
                  base_params={"lightgbm": {**LIGHTGBM_BASE, "num_leaves": 16}},
                  tune=TuneParams(families=("lightgbm",), storage=url, n_trials=5, timeout_seconds=120,
                                  pruner="none", heartbeat_seconds=1, grace_period_seconds=2,
                                  search_spaces={"lightgbm": {"n_estimators": {"type": "int", "low": 120,
                                                                               "high": 200}}}))
    job_path = tmp_path / "job.json"
    job_path.write_text(job.model_dump_json())
    command, env = worker_command(job_path, 0)
    # as run_workers does: the study exists before any worker starts
    study = open_study(pd.read_parquet(dataset_path), "lightgbm", tune=job.tune, splitter=job.splitter(),
                       base_params=job.base_params["lightgbm"]).study

    worker = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_number, deadline = None, time.monotonic() + 60
    while killed_number is None and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        # kill mid-trial: two trials done, and the running one old enough to have sent its first heartbeat
        if len(finished(trials)) >= 2 and running and time.time() - running[0].datetime_start.timestamp() > 0.3:
            killed_number = running[0].number
            os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert killed_number is not None, "the worker finished or stalled before it could be killed mid-trial"
    study_name = study.study_name
    left = {t.number: t.state for t in trials_of(url, study_name)}
    assert left[killed_number] == TrialState.RUNNING  # nobody is left to finish it
    assert len([s for s in left.values() if s in (TrialState.COMPLETE, TrialState.PRUNED)]) < 5

    restarted = subprocess.run(command, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=90)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    trials = trials_of(url, study_name)
    states = {t.number: t.state for t in trials}
    assert states[killed_number] == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    by_number = {t.number: t for t in trials}
    assert retried[0].params == by_number[killed_number].params
    assert len(finished(trials)) == 5
    assert TrialState.RUNNING not in states.values() and TrialState.WAITING not in states.values()


def test_every_trial_is_a_child_run_of_the_study_run(dataset: pd.DataFrame, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    tracking = sqlite_url(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    tune = TuneParams(families=("ridge",), storage=sqlite_url(tmp_path / "tracked.db"), n_trials=4,
                      n_startup_trials=2, search_spaces=RIDGE_SPACE)
    summary = tune_family(dataset, "ridge", tune=tune, splitter=splitter(), base_params=RIDGE_BASE,
                          experiment="tune-test")

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == summary["mlflow_parent_run_id"]
    assert parent.data.tags["optuna.study"] == summary["study_name"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_rank_ic"] == pytest.approx(summary["best_value"])
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    study_trials = {t.number: t for t in trials_of(tune.storage, summary["study_name"])}
    for child in children:
        trial = study_trials[int(child.data.tags["optuna.trial_number"])]
        assert float(child.data.params["alpha"]) == pytest.approx(trial.params["alpha"])
        history = client.get_metric_history(child.info.run_id, "fold_rank_ic")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == sorted(trial.intermediate_values)
        assert child.data.metrics["duration_seconds"] > 0
        assert child.data.tags["optuna.state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert child.data.metrics["rank_ic"] == pytest.approx(trial.value)


@pytest.mark.parametrize("metric", ["sharpe", "directional_accuracy"])
def test_tune_stage_writes_best_params_and_summary(dataset_path: Path, tmp_path: Path, metric: str) -> None:
    job = TuneJob(dataset_path=str(dataset_path), walk_forward=WALK_FORWARD, purge=HORIZON,
                  base_params={"ridge": RIDGE_BASE},
                  tune=TuneParams(families=("ridge",), storage=sqlite_url(tmp_path / "stage.db"), n_trials=3,
                                  metric=metric, pruner="none", search_spaces=RIDGE_SPACE))
    best_path, summary_path = tmp_path / "models/tuned/best_params.json", tmp_path / "reports/tune/summary.json"
    summary = tune_stage(job, workers=1, best_params_path=best_path, summary_path=summary_path)
    assert json.loads(summary_path.read_text()) == json.loads(json.dumps(summary))
    ridge = json.loads(best_path.read_text())["ridge"]
    assert ridge["metric"] == metric and ridge["n_trials"] == 3
    assert 1e-3 <= ridge["params"]["alpha"] <= 1e5
    folds = summary["families"]["ridge"]["best_fold_values"]
    assert len(folds) == N_FOLDS and ridge["value"] == pytest.approx(sum(folds) / N_FOLDS)
    if metric == "directional_accuracy":
        # the planted signal is found: better than a coin, never above 1
        assert all(0.5 < value <= 1.0 for value in folds), folds
    else:
        # an annualised Sharpe: the planted signal makes money net of 5 bps
        assert ridge["value"] > 0.5, folds


def test_search_space_and_settings_are_checked_up_front(dataset: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="low > 0"):
        SearchParam(type="float", low=0.0, high=1.0, log=True)
    with pytest.raises(ValueError, match="choices"):
        SearchParam(type="categorical")
    with pytest.raises(ValueError, match="unknown"):
        TuneParams(families=("catboost",))
    # a family named in params.yaml replaces its default ranges; the others keep theirs
    assert set(TuneParams(search_spaces=RIDGE_SPACE).search_spaces["lightgbm"]) >= {"num_leaves", "learning_rate"}
    tune = TuneParams(families=("ridge",), storage=sqlite_url(tmp_path / "bad.db"),
                      search_spaces={"ridge": {"alhpa": {"type": "float", "low": 1.0, "high": 2.0}}})
    with pytest.raises(ValueError, match="alhpa"):
        tune_family(dataset, "ridge", tune=tune, splitter=splitter(), base_params=RIDGE_BASE)
