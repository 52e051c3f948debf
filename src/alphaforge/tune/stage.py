"""The tune stage's outputs (best parameters, summary, trial predictions) and the worker's command-line entry point
:func:`main`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphaforge.io import write_json_atomic as _write_json_atomic
from alphaforge.tune.settings import DEFAULT_BEST_PARAMS_PATH, DEFAULT_SUMMARY_PATH, TuneJob
from alphaforge.tune.workers import _pinned, run_workers, tune_job

if TYPE_CHECKING:
    import optuna


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
