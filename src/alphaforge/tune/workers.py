"""Worker processes: run one job in this process, or start N workers on the same studies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from alphaforge.tune.search import _check_inputs, _record_on_parent, summarize_study, tune_family
from alphaforge.tune.settings import STORAGE_ENV, TuneJob
from alphaforge.tune.storage import redact, storage_url
from alphaforge.tune.study import open_study

log = logging.getLogger("alphaforge.tune")


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
