"""The live figures of the served signal, for ``/model_info``: what ``alphaforge monitor --follow`` last wrote.

The follower (:mod:`alphaforge.live_monitor`) keeps each variant's live IC, rank IC, hit rate and net P&L, the
degradation alert, the retrain trigger and its own lag in ``monitor.out_dir``/``live.json``; the service reads that
file (again only when it changed) and answers it under ``live``, with its age, so a client sees how the model it
calls is doing without a second endpoint. No follower running: ``live`` says so and how to start one.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

_KEPT = ("ic", "rank_ic", "hit_rate", "net_pnl_per_bar", "net_pnl_sum", "requests", "matured_rows", "pending",
         "window_bars", "last_matured_bar")


class LiveFigures:
    """``live.json`` read on demand, cached by modification time (a ``/model_info`` call costs one ``stat``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._figures: dict[str, Any] | None = None
        self._error: str | None = None

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._figures, self._error = None, None, None
            return
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:  # written atomically, so this is a foreign or broken file
            self._seen, self._figures, self._error = key, None, f"{self.path}: not readable as JSON ({err})"
            return
        self._seen, self._error = key, None
        self._figures = {
            "updated_at": document.get("updated_at"),
            "variants": {variant: {k: figures.get(k) for k in _KEPT}
                         | {"degradation_fired": bool((figures.get("degradation") or {}).get("fired"))}
                         for variant, figures in (document.get("variants") or {}).items()},
            "alert": document.get("alert"), "retrain": document.get("retrain"),
            "lag_seconds": document.get("lag_seconds"), "horizon": document.get("horizon"),
        }

    def info(self) -> dict[str, Any]:
        """The last figures with their age in seconds, or why there are none."""
        with self._lock:
            self._load()
            if self._error is not None:
                return {"available": False, "path": str(self.path), "reason": self._error}
            if self._figures is None:
                return {"available": False, "path": str(self.path),
                        "reason": "no live figures yet: run `alphaforge monitor --follow` beside the service"}
            age = time.time() - self._seen[0] / 1e9 if self._seen else None
            return {"available": True, "path": str(self.path), "age_seconds": round(age, 3), **self._figures}
