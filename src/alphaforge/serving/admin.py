"""Who may change the service's state: a bearer token for the admin routes once the service leaves loopback.

``POST /admin/reload`` (and any route that changes what the service serves) is open while the service
listens on loopback only, as a developer runs it. Bound to any other address (``0.0.0.0`` in a container),
the routes require ``Authorization: Bearer <token>`` with the token in ``ALPHAFORGE_ADMIN_TOKEN``, and the
service refuses to start there without one. When a token is set, it is required on loopback too.

The address checked is the one the server really listens on: BentoML hands its worker the listening
socket (``--fd N`` on the worker's command line), and :func:`listening_hosts` asks that socket.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence

ADMIN_TOKEN_ENV = "ALPHAFORGE_ADMIN_TOKEN"

log = logging.getLogger(__name__)


class AdminTokenMissing(RuntimeError):
    """The service would listen beyond loopback with its admin routes open."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that resolves elsewhere, or nonsense: not loopback


def listening_hosts(argv: Sequence[str] | None = None) -> list[str]:
    """The addresses the BentoML worker's listening socket (``--fd N``) is bound to; empty outside a worker."""
    argv = sys.argv if argv is None else argv
    hosts = []
    for i, arg in enumerate(argv[:-1]):
        if arg == "--fd" and argv[i + 1].isdigit():
            try:
                sock = socket.socket(fileno=int(argv[i + 1]))
            except OSError:
                continue
            try:
                hosts.append(str(sock.getsockname()[0]))
            finally:
                sock.detach()  # the socket belongs to the server: never close it here
    return hosts


def admin_token(hosts: Iterable[str], environ: Mapping[str, str]) -> str | None:
    """The token the admin routes require (None: open); :class:`AdminTokenMissing` when the service listens
    on a non-loopback address and ``ALPHAFORGE_ADMIN_TOKEN`` is unset or empty."""
    token = environ.get(ADMIN_TOKEN_ENV, "").strip() or None
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed and token is None:
        raise AdminTokenMissing(
            f"the service listens on {', '.join(exposed)} (not loopback) and {ADMIN_TOKEN_ENV} is not set: "
            f"set {ADMIN_TOKEN_ENV} to a secret (POST /admin/reload then needs 'Authorization: Bearer <token>'), "
            "or bind 127.0.0.1")
    return token


def authorised(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (always, when no token is required)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def stop_the_server(reason: str) -> None:
    """Log ``reason`` and ask the ``bentoml serve`` process this worker runs under to stop: a worker that
    raises in start-up is respawned for ever, so refusing to start means stopping the supervisor too."""
    log.critical("serving: refusing to start: %s", reason)
    parent = os.getppid()
    try:
        command = open(f"/proc/{parent}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if "bentoml" in command and " serve" in command:
        os.kill(parent, signal.SIGTERM)
