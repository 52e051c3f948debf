"""drift_monitor: daily ``alphaforge monitor`` over served traffic; a blocking alert triggers nightly_retrain.

has_traffic -> monitor -> blocking_alert -> trigger_retrain

* ``has_traffic`` stops the run (skipped, with a log line) when the service has logged no request yet.
* ``monitor`` runs ``alphaforge monitor`` in the workspace; it writes reports/monitor/alert.json and appends its
  alerts to the alerts log, as the drift stage does.
* ``blocking_alert`` reads that alert.json; only a blocking alert lets ``trigger_retrain`` start a
  ``nightly_retrain`` run, with a run id derived from this run's so a retry or re-run never starts two.

Standard library and Airflow only; settings come from .alphaforge/airflow/settings.json (see _alphaforge.py).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task


DAGS_DIR = os.path.dirname(os.path.abspath(__file__))
if DAGS_DIR not in sys.path:  # the shared helper beside this file, whichever Airflow process parses it
    sys.path.insert(0, DAGS_DIR)

from _alphaforge import TAGS, default_args, in_project_env, load_settings, start_date, workspace

SETTINGS = load_settings()
AIRFLOW = SETTINGS["airflow"]

with DAG(
    dag_id="drift_monitor",
    description="alphaforge monitor over served traffic; a blocking drift alert triggers nightly_retrain",
    schedule=AIRFLOW["monitor_schedule"],
    start_date=start_date(SETTINGS),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=default_args(SETTINGS),
    tags=[*TAGS, "monitoring"],
    doc_md=__doc__,
) as dag:

    @task.short_circuit(task_id="has_traffic")
    def has_traffic() -> bool:
        """True when the service's request log holds at least one file."""
        log_dir = workspace() / SETTINGS["monitor_log_dir"]
        files = [p for p in log_dir.rglob("*") if p.is_file()] if log_dir.is_dir() else []
        print(f"request log {log_dir}: {len(files)} file(s)" + ("" if files else "; nothing to monitor"), flush=True)
        return bool(files)

    hours = AIRFLOW.get("monitor_hours")
    monitor = BashOperator(
        task_id="monitor",
        bash_command=in_project_env("alphaforge monitor" + (f" --hours {float(hours)}" if hours else "")),
        cwd=str(workspace()),
        append_env=True,
        skip_on_exit_code=None,
        execution_timeout=timedelta(minutes=30),
    )

    @task.short_circuit(task_id="blocking_alert")
    def blocking_alert() -> bool:
        """True when the monitor raised a blocking alert (reports/monitor/alert.json)."""
        alert = json.loads((workspace() / SETTINGS["monitor_alert_path"]).read_text())
        print(f"monitor alert: blocking={alert.get('blocking')} {alert.get('detail')}", flush=True)
        return bool(alert.get("blocking"))

    trigger = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id="nightly_retrain",
        trigger_run_id="drift__{{ run_id }}",
        skip_when_already_exists=True,
        note="triggered by a blocking alert of drift_monitor",
        execution_timeout=timedelta(minutes=5),
    )

    has_traffic() >> monitor >> blocking_alert() >> trigger
