"""Runs inside the Airflow virtualenv (the tests call it by subprocess; it never imports alphaforge).

    python airflow_driver.py dagbag DAGS_FOLDER           -> JSON: import errors, and per DAG its tags, owners,
                                                              tasks in topological order with retries/timeouts
    python airflow_driver.py test DAGS_FOLDER LOGICAL_DATE [CONF_JSON]
                                                          -> dag.test() of nightly_retrain; JSON: run and task states
    python airflow_driver.py gate DAGS_FOLDER             -> JSON: the task id nightly_retrain's gate picks

AIRFLOW_HOME and the metadata database come from the environment the test sets.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path


def _bag(dags_folder: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=dags_folder, bundle_path=Path(dags_folder), bundle_name="dags-folder")


def dagbag(dags_folder: str) -> dict:
    bag = _bag(dags_folder)
    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = []
        for t in dag.topological_sort():
            tasks.append({
                "task_id": t.task_id, "owner": t.owner, "retries": t.retries,
                "retry_exponential_backoff": bool(t.retry_exponential_backoff),
                "execution_timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "on_failure_callback": bool(t.on_failure_callback),
                "upstream": sorted(t.upstream_task_ids), "downstream": sorted(t.downstream_task_ids),
                "bash_command": getattr(t, "bash_command", None), "trigger_rule": str(t.trigger_rule),
            })
        dags[dag_id] = {"tags": sorted(dag.tags), "owner": dag.owner, "schedule": str(dag.schedule),
                        "params": sorted(dag.params.keys()), "max_active_runs": dag.max_active_runs,
                        "dagrun_timeout_s": dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
                        "tasks": tasks}
    return {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": dags}


def test(dags_folder: str, logical_date: str, conf: str = "{}") -> dict:
    bag = _bag(dags_folder)
    if bag.import_errors:
        return {"import_errors": {str(k): v for k, v in bag.import_errors.items()}}
    dag = bag.dags["nightly_retrain"]
    run = dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=json.loads(conf))
    from airflow.utils.session import create_session

    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
    return {"state": str(run.state), "run_id": run.run_id, "tasks": states}


def gate(dags_folder: str) -> dict:
    bag = _bag(dags_folder)
    task = bag.dags["nightly_retrain"].task_dict["gate"]
    return {"choice": task.python_callable()}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    result = {"dagbag": dagbag, "test": test, "gate": gate}[command](*args)
    print("AIRFLOW_DRIVER_RESULT " + json.dumps(result, default=str))
