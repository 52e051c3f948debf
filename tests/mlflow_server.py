"""A pytest plugin: real ``mlflow server`` processes for registry tests.

``mlflow_server`` (session scope) runs one server with its backend store in a fresh, uniquely named
PostgreSQL database on this machine (127.0.0.1:5432, user postgres) and its artifacts in a temporary folder;
it is started once per test session, on first use, and at the end only its own process group is stopped
and the database dropped. ``disposable_mlflow_server`` (function scope) runs a throwaway server on a SQLite
file, for tests that kill the server mid-run: its ``backend_uri`` still reads the store after the kill.

Enable with ``pytest_plugins = ["mlflow_server"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSTGRES_DSN = os.environ.get("ALPHAFORGE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")
START_TIMEOUT_SECONDS = 180.0


@dataclass
class MlflowServer:
    """One running ``mlflow server``: ``uri`` for clients, ``backend_uri`` for reading its store directly."""

    uri: str
    backend_uri: str
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this server's process group (the server, its uvicorn worker and helpers), and only that."""
        if self.process.poll() is not None and not _group_alive(self.pid):
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.pid):
                self.process.poll()
                time.sleep(0.1)
            if not _group_alive(self.pid):
                break
        self.process.poll()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlflow_server(backend_uri: str, workdir: Path) -> MlflowServer:
    """Start ``mlflow server`` on a free local port in its own process group; return once /health answers."""
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = workdir / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes: faster start
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", backend_uri=backend_uri, pid=process.pid,
                          log_path=log_path, process=process)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before answering; "
                               f"log tail:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server did not answer /health within {START_TIMEOUT_SECONDS:.0f} s; "
                               f"log tail:\n{server.log_tail()}")
        time.sleep(0.25)


def _postgres_admin(statement: str) -> None:
    """Run one statement on the ``postgres`` maintenance database, outside a transaction."""
    import psycopg2

    dsn = POSTGRES_DSN.replace("postgresql+psycopg2://", "postgresql://") + "/postgres"
    connection = psycopg2.connect(dsn, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on a fresh PostgreSQL database, shared by the session."""
    database = f"alphaforge_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _postgres_admin(f'CREATE DATABASE "{database}"')
    server = None
    try:
        server = start_mlflow_server(f"{POSTGRES_DSN}/{database}", tmp_path_factory.mktemp("mlflow_server"))
        yield server
    finally:
        if server is not None:
            server.stop()
        _postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture()
def disposable_mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A throwaway MLflow server on a SQLite file; a test may stop it (``.stop()``) whenever it likes."""
    workdir = tmp_path / "disposable_mlflow"
    workdir.mkdir()
    server = start_mlflow_server(f"sqlite:///{workdir / 'mlflow.db'}", workdir)
    try:
        yield server
    finally:
        server.stop()
