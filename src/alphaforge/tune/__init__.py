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

from alphaforge.tune.objective import objective_sharpe, trial_predictions_dir
from alphaforge.tune.search import summarize_study, tune_family
from alphaforge.tune.settings import (
    DEFAULT_BEST_PARAMS_PATH,
    DEFAULT_DATASET_PATH,
    DEFAULT_SUMMARY_PATH,
    NO_SKILL,
    OVER_BUDGET_ATTR,
    STORAGE_ENV,
    WAIT_POLL_SECONDS,
    Metric,
    TuneJob,
    TuneParams,
)
from alphaforge.tune.spaces import CategoricalChoice, SearchParam, default_search_spaces
from alphaforge.tune.stage import main, tune_stage, write_best_params
from alphaforge.tune.storage import open_storage, redact, storage_url
from alphaforge.tune.study import StateCounts, StudyHandle, open_study, state_counts, study_fingerprint
from alphaforge.tune.workers import run_workers, tune_job, worker_command

__all__ = [
    "CategoricalChoice",
    "DEFAULT_BEST_PARAMS_PATH",
    "DEFAULT_DATASET_PATH",
    "DEFAULT_SUMMARY_PATH",
    "Metric",
    "NO_SKILL",
    "OVER_BUDGET_ATTR",
    "STORAGE_ENV",
    "SearchParam",
    "StateCounts",
    "StudyHandle",
    "TuneJob",
    "TuneParams",
    "WAIT_POLL_SECONDS",
    "default_search_spaces",
    "main",
    "objective_sharpe",
    "open_storage",
    "open_study",
    "redact",
    "run_workers",
    "state_counts",
    "storage_url",
    "study_fingerprint",
    "summarize_study",
    "trial_predictions_dir",
    "tune_family",
    "tune_job",
    "tune_stage",
    "worker_command",
    "write_best_params",
]
