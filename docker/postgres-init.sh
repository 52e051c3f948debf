#!/usr/bin/env bash
# Runs once, on an empty data volume: the MLflow and Optuna databases beside Airflow's (POSTGRES_DB).
set -euo pipefail
for database in ${ALPHAFORGE_EXTRA_DATABASES}; do
  echo "creating database ${database}"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE \"${database}\""
done
