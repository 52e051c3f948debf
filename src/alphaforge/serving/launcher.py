"""Start and stop the real service process (``bentoml serve``): the CLI, the tests and the benchmark.

The service runs in its own process group; :meth:`ServiceProcess.stop` signals that group only (the
BentoML supervisor, its worker and nothing else), first SIGTERM, then SIGKILL.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from alphaforge.processes import descendants, pid_alive

SERVICE = "bentos.service:AlphaforgeService"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ServiceProcess:
    """A running service: its HTTP base URL, gRPC target, PID (= process group) and log file."""

    url: str
    grpc_target: str | None
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop this service's process group and the processes it started, and only those.

        SIGTERM first (the server stops its workers, which stop their request-log writers), SIGKILL after
        ``timeout``; then any process this service started that is still there (a worker in a session of its
        own, see :func:`alphaforge.processes.descendants`) is killed by PID.
        """
        started = descendants(self.pid)
        try:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if self.process.poll() is not None and not _group_alive(self.pid):
                    return
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    return
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and (_group_alive(self.pid) or any(map(pid_alive, started))):
                    self.process.poll()
                    time.sleep(0.1)
        finally:
            for pid in reversed(started):
                if pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.process.poll()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def service_environment(project: str | Path, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``project`` (the folder holding ``bentos/service.py``) first on PYTHONPATH, so that
    ``bentoml serve`` and ``bentoml build`` find the service from any working directory."""
    path = [str(Path(project).resolve()), *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environ, "PYTHONPATH": os.pathsep.join(path)}


def start_service(*, cwd: str | Path, env: Mapping[str, str], log_path: str | Path, port: int | None = None,
                  grpc_port: int | None = None, ready_timeout: float = 120.0, wait_ready: bool = True,
                  host: str = "127.0.0.1", project: str | Path | None = None) -> ServiceProcess:
    """``bentoml serve`` the service of ``project`` (default ``cwd``, the repository root) in ``cwd``, on ``host``;
    return once ``/readyz`` is 200 (asked on 127.0.0.1).

    ``env`` is added to this process's environment (``MLFLOW_TRACKING_URI``, ``ALPHAFORGE_MODEL_NAME``, ...).
    Relative paths the service reads or writes (params.yaml, its cache and request log) resolve against ``cwd``.
    With ``wait_ready`` false, return once the HTTP server answers ``/livez`` (a service with no loadable model
    stays up but not ready).
    """
    port = port or free_port()
    grpc_port = free_port() if grpc_port is None else grpc_port
    environment = {**service_environment(project if project is not None else cwd, {**os.environ, **env}),
                   "ALPHAFORGE_GRPC_PORT": str(grpc_port), "PYTHONUNBUFFERED": "1",
                   "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", SERVICE, "--host", host, "--port", str(port)]
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    service = ServiceProcess(url=f"http://127.0.0.1:{port}", grpc_target=f"127.0.0.1:{grpc_port}" if grpc_port
                             else None, pid=process.pid, log_path=log_file, process=process)
    probe = "/readyz" if wait_ready else "/livez"
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            service.stop()
            raise RuntimeError(f"the service exited with code {process.returncode} before it was ready; "
                               f"log tail:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(service.url + probe, timeout=2) as response:
                if response.status == 200:
                    return service
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"the service did not answer {probe} within {ready_timeout:.0f} s; "
                               f"log tail:\n{service.log_tail()}")
        time.sleep(0.25)
