# `make run` sets everything up on a fresh clone and runs the pipeline on bundled real data;
# `make test` runs the whole suite. Both create the project virtualenv first if needed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: serve rl run test test-fast bench bench-models venv lock clean-state help system-deps

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv with the pinned dependencies

$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependencies into $(VENV) (a few minutes the first time)"
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.lock 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -m pip install --quiet --no-deps -e . 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $@

run: venv  ## run the pipeline (dvc repro) on the bundled real data and print the leaderboard
	dvc repro promote risk regimes
	@echo
	@alphaforge leaderboard

system-deps:  ## Debian packages the tests use (headless Chromium for the report screenshot test)
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (headless report screenshots)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "run: sudo apt-get install chromium" >&2; exit 1; fi; }

test: venv airflow-venv system-deps  ## run the whole test suite (unit, data, model and end-to-end)
	$(BIN)/python -m pytest -q

test-fast: venv system-deps  ## the quick tests: no end-to-end run and no service (Redis, PostgreSQL, MLflow server, Airflow)
	$(BIN)/python -m pytest -q -m "not slow and not e2e and not redis and not postgres and not mlflow_server and not airflow"

bench: venv  ## run every benchmark; results land in benchmarks/results/ (the training one takes a while)
	$(BIN)/python benchmarks/features.py --out benchmarks/results/features.json
	$(BIN)/python benchmarks/features.py --feature-set alpha158 --repeats 3 --out benchmarks/results/features.json
	$(BIN)/python benchmarks/training.py --out benchmarks/results/training.json
	$(BIN)/python benchmarks/serving.py --out benchmarks/results/serving.json
	$(BIN)/python benchmarks/monitor.py --out benchmarks/results/monitor.json

bench-models: venv  ## every model family and the stack in Qlib's benchmark form (docs/benchmarks.md; ~20 min)
	$(BIN)/python benchmarks/models.py --out benchmarks/results/models.json

lock: venv  ## re-pin requirements.lock from the current environment (less what requirements-nodeps.lock pins)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^alphaforge' \
		| grep -v -i -F -f <(grep -v '^#' requirements-nodeps.lock | sed 's/==.*/==/') > requirements.lock

serve: venv  ## serve the registered champion over HTTP (:3000) and gRPC (:50051); Ctrl-C stops it
	alphaforge serve start

rl: venv  ## the optional reinforcement-learning stage (PPO and SAC vs buy-and-hold and the ensemble's signal)
	dvc repro rl

clean-state:  ## remove local MLflow runs and pipeline outputs (keeps .venv)
	rm -rf .alphaforge data/raw data/validated data/features data/predictions models/lightgbm models/run.json reports dvc.lock

# --- Airflow: its own virtualenv (.venv-airflow, pinned by requirements-airflow.lock), AIRFLOW_HOME under
# .alphaforge/airflow/home, DAGs from dags/; every setting is an environment variable (tools/airflow.sh env).
.PHONY: airflow-venv airflow-setup airflow airflow-stop compose-config

airflow-venv:  ## the Airflow virtualenv only (.venv-airflow, from requirements-airflow.lock)
	@tools/airflow.sh venv

airflow-setup: venv  ## Airflow venv, DAG settings exported from params.yaml, metadata DB migrated
	@PROJECT_BIN=$(CURDIR)/$(BIN) tools/airflow.sh setup

airflow: airflow-setup  ## start `airflow standalone` on 127.0.0.1:8080 (prints the login); Ctrl-C stops everything
	@PROJECT_BIN=$(CURDIR)/$(BIN) tools/airflow.sh start

airflow-stop:  ## stop the Airflow started by `make airflow`, and every process it started
	@tools/airflow.sh stop

compose-config:  ## validate docker/compose.yaml with `docker compose config` (no engine needed; validated, not run)
	@tools/compose-config.sh
