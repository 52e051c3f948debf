"""Runs inside the Airflow virtualenv (the tests call it by subprocess; it never imports alphaforge).

    python airflow_driver.py dagbag DAGS_FOLDER           -> JSON: import errors, and per DAG its tags, owners,
                                                              tasks in topological order with retries/timeouts
    python airflow_driver.py test DAGS_FOLDER LOGICAL_DATE [CONF_JSON]
                                                          -> dag.test() of nightly_retrain; JSON: run and task states
    python airflow_driver.py gate DAGS_FOLDER WORKSPACE... -> JSON: the task id nightly_retrain's gate picks in each
    python airflow_driver.py monitor_checks DAGS_FOLDER WORKSPACE... -> drift_monitor's short-circuit decisions
    python airflow_driver.py package_and_reload DAGS_FOLDER -> runs the packaging and reload tasks' code
    python airflow_driver.py params DAGS_FOLDER CONF_JSON... -> JSON: each manual run's params as validated, or the error

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


def gate(dags_folder: str, *workspaces: str) -> dict:
    """The gate's choice in each workspace (ALPHAFORGE_WORKSPACE is read when the task runs)."""
    import os

    tasks = _bag(dags_folder).dags["nightly_retrain"].task_dict
    choices = {}
    for workspace in workspaces:
        os.environ["ALPHAFORGE_WORKSPACE"] = workspace
        choices[workspace] = tasks["gate"].python_callable()
    return {"choices": choices}


def monitor_checks(dags_folder: str, *workspaces: str) -> dict:
    """drift_monitor's two short-circuits (traffic logged? blocking alert?) in each workspace."""
    import os

    tasks = _bag(dags_folder).dags["drift_monitor"].task_dict
    checks = {}
    for workspace in workspaces:
        os.environ["ALPHAFORGE_WORKSPACE"] = workspace
        traffic = tasks["has_traffic"].python_callable()
        checks[workspace] = {"has_traffic": traffic,
                             "blocking_alert": tasks["blocking_alert"].python_callable() if traffic else None}
    return {"checks": checks}


def package_and_reload(dags_folder: str) -> dict:
    """The packaging task, then the reload task, as the run would call them after a passed gate."""
    tasks = _bag(dags_folder).dags["nightly_retrain"].task_dict
    tasks["package_bento"].python_callable()
    return {"reload": tasks["reload_service"].python_callable()}


def params(dags_folder: str, *confs: str) -> dict:
    """What each manual run's conf resolves to under the DAG's Param schemas, or the validation error.

    The same check the API server makes when a run is triggered: on the serialized DAG's params.
    """
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(_bag(dags_folder).dags["nightly_retrain"]))
    results = []
    for conf in confs:
        try:
            results.append({"resolved": dag.params.deep_merge(json.loads(conf)).validate()})
        except Exception as err:  # the schema's refusal is the result here
            results.append({"error": f"{type(err).__name__}: {err}"})
    return {"results": results}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {"dagbag": dagbag, "test": test, "gate": gate, "package_and_reload": package_and_reload,
                "params": params, "monitor_checks": monitor_checks}
    result = commands[command](*args)
    print("AIRFLOW_DRIVER_RESULT " + json.dumps(result, default=str))
