#!/usr/bin/env bash
# Local Airflow for alphaforge (what `make airflow-setup`, `make airflow` and `make airflow-stop` run).
#
#   tools/airflow.sh venv     the Airflow virtualenv from requirements-airflow.lock (its own, not the project's)
#   tools/airflow.sh setup    venv + the DAG settings export (params.yaml -> JSON) + `airflow db migrate`
#   tools/airflow.sh start    `airflow standalone` on 127.0.0.1 in its own session; prints the UI address and
#                             login; Ctrl-C stops it and every process it started
#   tools/airflow.sh stop     stops a running one (from another terminal)
#   tools/airflow.sh env      prints the settings, as `export` lines
#
# Every setting is an environment variable with a default; set one to override it, e.g. the metadata database on
# this machine's PostgreSQL:  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://postgres@127.0.0.1:5432/airflow
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
AIRFLOW_VENV="${AIRFLOW_VENV:-$ROOT/.venv-airflow}"
PROJECT_BIN="${PROJECT_BIN:-$ROOT/.venv/bin}"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.alphaforge/airflow/home}"
export ALPHAFORGE_WORKSPACE="${ALPHAFORGE_WORKSPACE:-$ROOT}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$ROOT/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"            # a small machine
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-2}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-$AIRFLOW__API__BASE_URL/execution/}"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT:-8793}"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT:-8794}"
export AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="${AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL:-30}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"

export PATH="$AIRFLOW_VENV/bin:$PATH"   # standalone starts its components as `airflow ...` from PATH

PIDFILE="$AIRFLOW_HOME/standalone.pid"
LOGFILE="$AIRFLOW_HOME/standalone.log"
AIRFLOW="$AIRFLOW_VENV/bin/airflow"

venv() {
  local stamp="$AIRFLOW_VENV/.installed"
  if [[ -f "$stamp" && "$stamp" -nt "$ROOT/requirements-airflow.lock" ]]; then return; fi
  echo "installing Airflow into $AIRFLOW_VENV from requirements-airflow.lock (about a minute the first time)"
  [[ -x "$AIRFLOW_VENV/bin/python" ]] || "$PYTHON" -m venv "$AIRFLOW_VENV"
  "$AIRFLOW_VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
  "$AIRFLOW_VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-airflow.lock" 2>&1 \
    | { grep -v '^WARNING: Location' || true; }
  touch "$stamp"
}

setup() {
  venv
  mkdir -p "$AIRFLOW_HOME"
  (cd "$ALPHAFORGE_WORKSPACE" && "$PROJECT_BIN/python" -m alphaforge.orchestration export)
  "$AIRFLOW" db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
  echo "Airflow ready: AIRFLOW_HOME=$AIRFLOW_HOME, DAGs from $AIRFLOW__CORE__DAGS_FOLDER; \`make airflow\` starts it"
}

# Every process of the standalone's session, and every descendant of its leader (in case one left the session).
members() {
  local leader="$1"
  ps -e -o pid=,ppid=,sid= | awk -v leader="$leader" '
    { pid[NR] = $1; ppid[NR] = $2; sid[NR] = $3; n = NR }
    END {
      keep[leader] = 1
      for (i = 1; i <= n; i++) if (sid[i] == leader) keep[pid[i]] = 1
      do { grown = 0
           for (i = 1; i <= n; i++) if ((ppid[i] in keep) && !(pid[i] in keep)) { keep[pid[i]] = 1; grown = 1 } } while (grown)
      for (p in keep) print p
    }' | while read -r p; do [[ -e "/proc/$p" ]] && echo "$p"; done
}

stop() {
  [[ -f "$PIDFILE" ]] || { echo "no Airflow started from here ($PIDFILE missing)"; return 0; }
  local leader; leader="$(cat "$PIDFILE")"
  local pids; pids="$(members "$leader" | tr '\n' ' ')"
  if [[ -z "${pids// /}" ]]; then rm -f "$PIDFILE"; echo "Airflow (pid $leader) was not running"; return 0; fi
  echo "stopping Airflow standalone (pid $leader) and the processes it started: $pids"
  # SIGTERM to each at once: every component shuts down cleanly on it (a background job ignores SIGINT), then
  # SIGKILL for whatever is left after 30 s; only these processes, never by name.
  for sig in TERM KILL; do
    pids="$(echo $pids $(members "$leader") | tr ' ' '\n' | sort -u | tr '\n' ' ')"   # and any started since
    local alive=""; for p in $pids; do [[ -e "/proc/$p" ]] && alive+="$p "; done
    [[ -z "$alive" ]] && break
    kill "-$sig" $alive 2>/dev/null || true
    for _ in $(seq 1 60); do
      alive=""; for p in $pids; do [[ -e "/proc/$p" ]] && alive+="$p "; done
      [[ -z "$alive" ]] && break
      sleep 0.5
    done
  done
  rm -f "$PIDFILE"
  echo "Airflow stopped"
}

start() {
  mkdir -p "$AIRFLOW_HOME"
  if [[ -f "$PIDFILE" ]] && [[ -e "/proc/$(cat "$PIDFILE")" ]]; then
    echo "Airflow already running (pid $(cat "$PIDFILE")); \`make airflow-stop\` stops it" >&2; exit 1
  fi
  local url="http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT"
  setsid "$AIRFLOW" standalone >"$LOGFILE" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  trap 'echo; stop; exit 0' INT TERM
  echo "Airflow standalone starting (pid $(cat "$PIDFILE"), log $LOGFILE)"
  for _ in $(seq 1 240); do
    if curl -fsS "$url/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
    [[ -e "/proc/$(cat "$PIDFILE")" ]] || { tail -40 "$LOGFILE" >&2; rm -f "$PIDFILE"; exit 1; }
    sleep 1
  done
  local users="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
  echo
  echo "  Airflow UI:  $url    (health: $url/api/v2/monitor/health)"
  echo "  log in as:   ${users%%:*}, password in $passwords"
  [[ -f "$passwords" ]] && echo "               $(cat "$passwords")"
  echo "  DAGs:        nightly_retrain, drift_monitor (paused at creation: unpause in the UI, or Trigger with params)"
  echo "  stop:        Ctrl-C here, or \`make airflow-stop\` from another terminal"
  echo
  tail -n +1 -f --pid="$(cat "$PIDFILE")" "$LOGFILE" &
  wait "$(cat "$PIDFILE")" 2>/dev/null || true
}

case "${1:-}" in
  venv) venv ;;
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  env) env | grep -E '^(AIRFLOW_HOME|ALPHAFORGE_WORKSPACE|AIRFLOW__)' | sed 's/^/export /' ;;
  *) echo "usage: $0 venv|setup|start|stop|env" >&2; exit 2 ;;
esac
