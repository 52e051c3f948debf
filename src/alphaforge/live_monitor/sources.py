"""The follower's two sources, tailed by SQLite rowid: the service's request log and ``alphaforge stream``'s bar log."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alphaforge.monitor import _FILE


class RequestTail:
    """Rows appended to the request log since the last poll (per file, by rowid; new day files are picked up)."""

    def __init__(self, directory: str | Path, since_us: int) -> None:
        self.directory = Path(directory)
        self.since_us = since_us
        self.since_day = datetime.fromtimestamp(since_us / 1e6, UTC).strftime("%Y-%m-%d")
        self._last_rowid: dict[Path, int] = {}
        self._connections: dict[Path, sqlite3.Connection] = {}

    def poll(self) -> list[tuple[Any, ...]]:
        """(variant, model_version, symbol, bar_us, features_json, prediction, logged_us), in rowid order per file."""
        if not self.directory.exists():
            return []
        rows: list[tuple[Any, ...]] = []
        for path in sorted(self.directory.iterdir()):
            match = _FILE.match(path.name)
            if match is None or match.group(1) < self.since_day:
                continue
            connection = self._connections.get(path)
            if connection is None:
                connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
                self._connections[path] = connection
            try:
                found = connection.execute(
                    "SELECT rowid, variant, model_version, symbol, bar_timestamp_us, features, prediction, "
                    "logged_at_us "
                    "FROM requests WHERE rowid > ? AND received_at_us >= ? ORDER BY rowid",
                    (self._last_rowid.get(path, 0), self.since_us)).fetchall()
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):  # created, schema not committed yet
                    continue
                raise
            if found:
                self._last_rowid[path] = found[-1][0]
                rows += [row[1:] for row in found]
        return rows

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


class BarTail:
    """Bars appended to ``alphaforge stream``'s bar log since the last poll: (bar_us, symbol, execution price)."""

    def __init__(self, path: str | Path, price_column: str) -> None:
        if price_column not in ("open", "close"):
            raise ValueError(f"BarTail: price_column {price_column!r}; rule: open (next_open) or close (next_close)")
        self.path = Path(path)
        self.price_column = price_column
        self._last_rowid = 0
        self._connection: sqlite3.Connection | None = None

    def poll(self) -> list[tuple[int, str, float]]:
        if self._connection is None:
            if not self.path.exists():
                return []
            self._connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                               check_same_thread=False)
        try:
            found = self._connection.execute(
                f"SELECT rowid, timestamp, symbol, {self.price_column} FROM bars WHERE rowid > ? ORDER BY rowid",
                (self._last_rowid,)).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise
        if not found:
            return []
        self._last_rowid = found[-1][0]
        return [(int(ts) // 1000, str(symbol), math.nan if price is None else float(price))
                for _, ts, symbol, price in found]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
