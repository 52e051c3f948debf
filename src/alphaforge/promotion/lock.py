"""The promotion lock: one promotion of a model at a time, stale locks detected and removable by hand."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping

from alphaforge import tracking
from alphaforge.errors import PromotionError
from alphaforge.processes import pid_alive
from alphaforge.promotion.params import PromotionParams

log = logging.getLogger("alphaforge.promotion")


# ---------------------------------------------------------------------------------------------- the lock


def lock_name(model_name: str) -> str:
    """The registered model that serves as the promotion lock of ``model_name``."""
    return f"{model_name}.promotion-lock"


def _lock_is_stale(holder: Mapping[str, str], stale_seconds: float) -> str | None:
    """Why the lock's holder is gone (a reason), or None while it may still be working."""
    try:
        pid = int(holder.get("pid", "-1"))
        acquired = float(holder.get("acquired_at", "nan"))
    except ValueError:
        return "its owner tags are unreadable"
    if holder.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid):
        return f"its process {pid} on this host is gone"
    if math.isfinite(acquired) and time.time() - acquired > stale_seconds:
        return f"it is older than lock_stale_seconds={stale_seconds:g}"
    return None


def _acquire_lock(params: PromotionParams) -> str:
    name = lock_name(params.model_name)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "acquired_at": repr(time.time()),
             "purpose": f"promotion of {params.model_name}"}
    deadline = time.monotonic() + params.lock_wait_seconds
    while True:
        if tracking.create_registered_model_if_absent(name, tags=owner):
            return name
        holder = tracking.get_registered_model_tags(name)
        if holder is None:
            continue  # released between our create and our read: try again at once
        stale = _lock_is_stale(holder, params.lock_stale_seconds)
        if stale:
            log.warning("promote: breaking the promotion lock %s held by %s: %s", name, holder, stale)
            tracking.delete_registered_model(name, missing_ok=True)
            continue
        if time.monotonic() > deadline:
            raise PromotionError(
                f"promote: another promotion of {params.model_name} holds the lock {name!r} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}) and did not finish within "
                f"lock_wait_seconds={params.lock_wait_seconds:g}; champion unchanged. If no promotion is running, "
                "remove the lock with `alphaforge registry unlock`."
            )
        time.sleep(0.2)


def force_unlock(model_name: str) -> bool:
    """Remove the promotion lock of ``model_name`` (left by a crashed promoter); False when there was none."""
    name = lock_name(model_name)
    if tracking.get_registered_model_tags(name) is None:
        return False
    tracking.delete_registered_model(name, missing_ok=True)
    return True
