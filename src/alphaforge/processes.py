"""Processes by PID: whether one exists, and what a process started (read from /proc)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["descendants", "pid_alive"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), read from /proc; empty where there is none.

    BentoML's process manager starts each worker in a session of its own, so the worker and what it starts
    (the request-log writer) are outside the server's process group: stopping the group alone could leave them.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
