"""nightly_retrain: the whole DVC pipeline, one task per stage in dvc.yaml's order, then packaging and reload.

prepare -> ingest -> validate -> regimes -> features -> ... -> risk -> gate -> package_bento -> reload_service
                                                                          \\-> skip_packaging

* ``prepare`` writes the run's settings into params.yaml (``python -m alphaforge.orchestration prepare``): the
  data interval's end as ``ingest.end``, and the run parameters chosen in the UI. Same interval, same params,
  so DVC skips every stage on a re-run: no new registry version, no new alert line.
* Each stage task runs ``dvc repro -s STAGE`` in the workspace, in the project's virtualenv. The tasks form one
  chain and the DAG allows one active run, so DVC's workspace lock is never contended.
* ``gate`` reads reports/promotion/decision.json: packaging (``airflow.bento_build_command``) only for a newly
  promoted version; then ``reload_service`` POSTs ``/admin/reload`` to the service (skipped with no URL).

Standard library and Airflow only; settings come from .alphaforge/airflow/settings.json (see _alphaforge.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException


DAGS_DIR = os.path.dirname(os.path.abspath(__file__))
if DAGS_DIR not in sys.path:  # the shared helper beside this file, whichever Airflow process parses it
    sys.path.insert(0, DAGS_DIR)

from _alphaforge import SERVICE_URL_ENV, TAGS, default_args, in_project_env, load_settings, start_date, workspace

SETTINGS = load_settings()
AIRFLOW = SETTINGS["airflow"]
PACKAGED_MARKER = ".alphaforge/airflow/packaged.json"

with DAG(
    dag_id="nightly_retrain",
    description="ingest -> validate -> ... -> promote (DVC stages), Bento packaging when the gate passed, reload",
    schedule=AIRFLOW["schedule"],
    start_date=start_date(SETTINGS),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=float(AIRFLOW["dagrun_timeout_hours"])),
    default_args=default_args(SETTINGS),
    tags=[*TAGS, "retrain"],
    doc_md=__doc__,
    params={
        "source": Param(None, type=["null", "string"], enum=[None, *SETTINGS["choices"]["source"]],
                        description=f"ingest.source; empty: params.yaml's ({SETTINGS['current']['source']})"),
        "start": Param(None, type=["null", "string"], format="date",
                       description="ingest.start (YYYY-MM-DD); empty: params.yaml's"),
        "end": Param(None, type=["null", "string"], format="date",
                     description="ingest.end (YYYY-MM-DD); empty: the data interval's end, else params.yaml's"),
        "families": Param(None, type=["null", "array"], items={"type": "string", "enum": SETTINGS["choices"]["families"]},
                          minItems=1, uniqueItems=True,
                          description=f"train.families and tune.families; empty: {SETTINGS['current']['families']}"),
        "n_trials": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                          description=f"tune.n_trials per family; empty: {SETTINGS['current']['n_trials']}"),
    },
) as dag:

    @task(task_id="prepare")
    def prepare() -> None:
        """Write this run's settings into params.yaml (only values that change) and re-export the DAG settings."""
        context = get_current_context()
        interval_end = context.get("data_interval_end")
        run_parameters = {name: context["params"].get(name) for name in ("source", "start", "end", "families", "n_trials")}
        command = [
            os.path.join(SETTINGS["venv_bin"], "python"), "-m", "alphaforge.orchestration", "prepare",
            "--run-parameters", json.dumps(run_parameters),
            "--interval-end", interval_end.isoformat() if interval_end else "",
        ]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, cwd=workspace(), check=True)

    previous = prepare()
    for stage in SETTINGS["stages"]:
        timeout = AIRFLOW["stage_timeouts_minutes"].get(stage, AIRFLOW["stage_timeout_minutes"])
        current = BashOperator(
            task_id=stage,
            bash_command=in_project_env(f"dvc repro --single-item {stage}"),
            cwd=str(workspace()),
            env={"ALPHAFORGE_DATA_INTERVAL_START": "{{ dag_run.data_interval_start or '' }}",
                 "ALPHAFORGE_DATA_INTERVAL_END": "{{ dag_run.data_interval_end or '' }}"},  # empty on a manual run
            append_env=True,
            skip_on_exit_code=None,
            execution_timeout=timedelta(minutes=float(timeout)),
            doc_md=f"`dvc repro --single-item {stage}` in the workspace (see dvc.yaml)",
        )
        previous >> current
        previous = current

    @task.branch(task_id="gate")
    def gate() -> str:
        """Package only a version the promote stage has just made champion (not one packaged already)."""
        decision_path = workspace() / SETTINGS["decision_path"]
        decision = json.loads(decision_path.read_text())
        marker = workspace() / PACKAGED_MARKER
        packaged = json.loads(marker.read_text()) if marker.exists() else {}
        key = {"model_name": decision.get("model_name"), "version": decision.get("version")}
        if decision.get("status") != "promoted":
            print(f"gate: promotion {decision.get('status')} for version {key['version']}; champion unchanged, "
                  "nothing to package", flush=True)
            return "skip_packaging"
        if {k: packaged.get(k) for k in key} == key:
            print(f"gate: {key} was packaged already (a re-run of this interval); nothing to do", flush=True)
            return "skip_packaging"
        print(f"gate: {key} promoted; packaging", flush=True)
        return "package_bento"

    @task(task_id="package_bento")
    def package_bento() -> None:
        """Build the Bento for the new champion, then record it so a re-run does not build it twice."""
        decision = json.loads((workspace() / SETTINGS["decision_path"]).read_text())
        command = in_project_env(AIRFLOW["bento_build_command"])
        print("running:", command, flush=True)
        subprocess.run(["bash", "-c", command], cwd=workspace(), check=True)
        marker = workspace() / PACKAGED_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"model_name": decision.get("model_name"), "version": decision.get("version"),
                                      "packaged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))

    @task(task_id="reload_service")
    def reload_service() -> dict:
        """POST {service_url}/admin/reload; no URL configured: skipped, and the log says so."""
        url = os.environ.get(SERVICE_URL_ENV) or AIRFLOW["service_url"]
        if not url:
            raise AirflowSkipException(f"no service URL ({SERVICE_URL_ENV} or airflow.service_url): reload skipped")
        headers = {"Content-Type": "application/json"}
        token = os.environ.get("ALPHAFORGE_ADMIN_TOKEN", "").strip()
        if token:  # a service bound beyond loopback requires it
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{url.rstrip('/')}/admin/reload", data=b"{}", method="POST",
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=float(AIRFLOW["reload_timeout_seconds"])) as response:
            body = json.loads(response.read() or b"{}")
            if response.status != 200:
                raise RuntimeError(f"{url}/admin/reload answered HTTP {response.status}: {body}")
        print(f"reload: {url} answered {body}", flush=True)
        return body

    branch = gate()
    previous >> branch
    branch >> package_bento() >> reload_service()
    branch >> EmptyOperator(task_id="skip_packaging")
