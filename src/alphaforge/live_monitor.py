"""``alphaforge monitor --follow``: the served signal's live figures, updated within a second of the logs.

The batch monitor (:mod:`alphaforge.monitor`) reads a day of traffic at once; this follower tails the same
sources every ``monitor.follow_poll_seconds`` (100 ms) and keeps rolling figures per variant:

* **sources**: the service's request log (:class:`~alphaforge.monitor.RequestLog`, new rows by SQLite rowid
  per file) and the bar log ``alphaforge stream`` appends every streamed bar to (``feature_store.bar_log``,
  the source that exists wherever the online store is fed);
* **maturity**, with the gate's conventions (:mod:`alphaforge.backtest.market`): a prediction for bar *t*
  trades at bar *t+1*'s execution price (its open, ``next_open``, else its close); its label is
  ``log(P[t+1+h] / P[t+1])`` (``labels.horizon`` = *h*), known once bar *t+1+h* of that symbol is logged.
  The online Hedge weights learn from ``log(P[t+2] / P[t+1])`` (the one-bar execution return the
  ``/admin/outcomes`` route expects), known once bar *t+2* is logged;
* **live figures** over the newest ``monitor.follow_window_bars`` matured bars: IC and rank IC (mean of the
  per-bar cross-sectional correlations, bars with at least ``drift.min_cross_section`` symbols), hit rate
  (sign of prediction - centre against the sign of the label), and the **net P&L** of the served signal,
  kept simple: each prediction opens a position of sign(prediction - centre) at *t+1* and closes it at
  *t+1+h*, earning ``exp(label) - 1`` less a round trip of ``2 x (evaluate.cost_bps + evaluate.
  fallback_spread_bps / 2) / 1e4``; a bar's P&L is the mean over its symbols (an equal-weight book per bar;
  overlapping tranches are not netted, so this is a per-trade figure, not the gate's portfolio);
* **feature shift**: per feature, (mean of the newest ``monitor.drift_window_rows`` served rows - reference
  mean) / reference std; a feature is shifted past ``monitor.drift_shift_threshold`` (a warning);
* **degradation** (blocking): the newest ``monitor.recent_bars`` matured bars against the earlier ones kept,
  per-bar rank IC and net P&L, a z-test with Newey-West standard errors (lags >= h - 1: overlapping labels)
  that fires at ``drift.performance_z`` standard errors, as the drift stage's performance check does.

Each update writes ``live.json`` and ``live.prom`` (Prometheus text) atomically under ``monitor.out_dir``.
Matured champion outcomes go to an :class:`OutcomeSink` (the service's ``/admin/outcomes``, or the weights
directly; what it refuses is kept and sent again, oldest bar first); a blocking alert on the champion triggers ``monitor.retrain_dag_id`` through Airflow's REST API at
most once per ``monitor.retrain_cooldown``, the last trigger kept in ``retrain_state.json`` so a restart
respects it. A restarted follower replays the logs received in the last ``monitor.lookback_hours``: the
figures come back the same, and the Hedge skips the bars it has already applied.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from alphaforge.drift import Alert, DriftParams, dispatch_alerts
from alphaforge.io import atomic_write, write_json_atomic
from alphaforge.monitor import _FILE, MonitorParams
from alphaforge.schema import DataError
from alphaforge.stats import newey_west

log = logging.getLogger(__name__)

__all__ = ["AirflowTrigger", "DirectOutcomes", "LiveMonitor", "ServiceOutcomes", "degradation_z", "follow"]

_RETRY_SECONDS = 60.0  # a failed retrain trigger is retried no sooner than this
_CHUNK_ROWS = 2000  # outcome rows per /admin/outcomes request (whole bars)
_OUTCOME_RETRY_SECONDS = 5.0  # outcomes the sink refused are sent again no sooner than this


# --------------------------------------------------------------------------------------------- the tails


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


# --------------------------------------------------------------------------------------------- outcomes


class OutcomeSink(Protocol):
    """Where matured champion outcomes go: rows of one or more bars, one Hedge step per bar."""

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]: ...


def _stamp(us: int) -> pd.Timestamp:
    return pd.Timestamp(int(us) * 1000, tz="UTC")


class ServiceOutcomes:
    """POST to the service's ``/admin/outcomes`` (the service owns the weights: its memory and Redis move together).

    ``token``: the service's ``ALPHAFORGE_ADMIN_TOKEN`` (needed when it listens beyond loopback)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_seconds: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_seconds = timeout_seconds

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]:
        rows = [{"symbol": s, "timestamp": _stamp(t).isoformat(), "features": dict(f), "realised": float(r)}
                for t, s, f, r in zip(timestamps_us, symbols, features, realised, strict=True)]
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        request = urllib.request.Request(f"{self.url}/admin/outcomes", data=json.dumps({"rows": rows}).encode(),
                                         method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{self.url}/admin/outcomes answered {err.code}: {err.read()[:500]!r}") from err


class DirectOutcomes:
    """The same update as ``/admin/outcomes`` in this process: the families' predictions of the logged features,
    then :meth:`OnlineWeights.update` (its state in Redis). For a follower that loads the model itself."""

    def __init__(self, online: Any, family_predictions: Callable[[np.ndarray], np.ndarray],
                 features: Sequence[str]) -> None:
        self.online = online
        self.family_predictions = family_predictions
        self.features = list(features)

    def send(self, timestamps_us: Sequence[int], symbols: Sequence[str], features: Sequence[Mapping[str, float]],
             realised: np.ndarray) -> dict[str, Any]:
        x = np.array([[row.get(name, math.nan) for name in self.features] for row in features], dtype=np.float64)
        stamps = pd.DatetimeIndex([_stamp(t) for t in timestamps_us])
        applied = self.online.update(stamps, self.family_predictions(x), np.asarray(realised, dtype=np.float64))
        return {"applied_steps": applied, **self.online.info()}


# --------------------------------------------------------------------------------------------- retrain trigger


class AirflowTrigger:
    """Triggers a DAG run through Airflow 3's REST API: a JWT from ``POST /auth/token``, then
    ``POST /api/v2/dags/{dag_id}/dagRuns`` with ``logical_date`` null (a manual run now)."""

    def __init__(self, url: str, *, username: str, password: str, dag_id: str, timeout_seconds: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.dag_id = dag_id
        self.timeout_seconds = timeout_seconds

    @classmethod
    def from_settings(cls, params: MonitorParams, environ: Mapping[str, str] = os.environ) -> AirflowTrigger | None:
        """``ALPHAFORGE_AIRFLOW_URL`` (else ``monitor.airflow_url``), ``ALPHAFORGE_AIRFLOW_USER`` (default admin)
        and ``ALPHAFORGE_AIRFLOW_PASSWORD``; None when no URL is set (alerts are recorded, nothing triggered)."""
        url = environ.get("ALPHAFORGE_AIRFLOW_URL") or params.airflow_url
        if not url:
            return None
        password = environ.get("ALPHAFORGE_AIRFLOW_PASSWORD")
        if not password:
            raise ValueError(f"Airflow at {url} is set (monitor.airflow_url / ALPHAFORGE_AIRFLOW_URL) but "
                             "ALPHAFORGE_AIRFLOW_PASSWORD is not: export the password of the Airflow user "
                             "(ALPHAFORGE_AIRFLOW_USER, default admin)")
        return cls(url, username=environ.get("ALPHAFORGE_AIRFLOW_USER", "admin"), password=password,
                   dag_id=params.retrain_dag_id)

    def _post(self, path: str, body: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"Airflow {self.url}{path} answered {err.code}: {err.read()[:500]!r}") from err

    def __call__(self, reason: str) -> str:
        """Trigger one run; its dag_run_id."""
        token = self._post("/auth/token", {"username": self.username, "password": self.password})["access_token"]
        run = self._post(f"/api/v2/dags/{self.dag_id}/dagRuns", {"logical_date": None, "note": reason[:1000],
                                                                   "conf": {}}, token)
        return str(run["dag_run_id"])


# --------------------------------------------------------------------------------------------- statistics


def _bar_figures(prediction: np.ndarray, label: np.ndarray, net: np.ndarray, centre: float,
                 min_cross_section: int) -> tuple[float, float, float, float, int]:
    """(ic, rank_ic, hit_rate, net_pnl, rows) of one bar's matured rows (NaN where undefined)."""
    usable = np.isfinite(prediction) & np.isfinite(label)
    p, y, pnl = prediction[usable], label[usable], net[usable]
    if p.size == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    ic = rank_ic = math.nan
    if p.size >= min_cross_section and p.std() > 0 and y.std() > 0:
        ic = float(np.corrcoef(p, y)[0, 1])
        rp, ry = pd.Series(p).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        rank_ic = float(np.corrcoef(rp, ry)[0, 1]) if rp.std() > 0 and ry.std() > 0 else math.nan
    side = np.sign(p - centre)
    traded = side != 0
    hit = float(np.mean(side[traded] == np.sign(y[traded]))) if traded.any() else math.nan
    return ic, rank_ic, hit, float(pnl.mean()), int(p.size)


def degradation_z(per_bar: Mapping[str, np.ndarray], *, recent_bars: int, min_earlier_bars: int, z_threshold: float,
                  lags: int) -> dict[str, Any]:
    """Earlier vs recent per-bar figures (oldest first) of each metric in ``per_bar``: a drop of
    ``z_threshold`` Newey-West standard errors or more fires. ``fired`` is None with too few bars."""
    n_bars = min(len(v) for v in per_bar.values()) if per_bar else 0
    if n_bars < recent_bars + min_earlier_bars:
        return {"fired": None, "detail": f"not checked: {n_bars} matured bars (< recent_bars + min_earlier_bars = "
                                         f"{recent_bars + min_earlier_bars})", "metrics": {}}
    metrics, drops = {}, []
    for name, values in per_bar.items():
        earlier, recent = newey_west(values[:-recent_bars], min_lags=lags), newey_west(values[-recent_bars:],
                                                                                       min_lags=lags)
        se = math.sqrt((earlier.std_error if math.isfinite(earlier.std_error) else 0.0) ** 2
                       + (recent.std_error if math.isfinite(recent.std_error) else 0.0) ** 2)
        drop = earlier.mean - recent.mean
        z = drop / se if se > 0 else (math.inf if drop > 0 else 0.0)
        metrics[name] = {"earlier": _finite(earlier.mean), "recent": _finite(recent.mean), "z": _finite(z)}
        if math.isfinite(drop) and z >= z_threshold:
            drops.append(f"{name} fell from {earlier.mean:.4f} (earlier {len(values) - recent_bars} bars) to "
                         f"{recent.mean:.4f} (last {recent_bars}), {z:.1f} standard errors >= {z_threshold:g}")
    detail = ("live degradation: " + "; ".join(drops)) if drops else "no degradation: " + ", ".join(
        f"{k} {_fmt(v['earlier'])} -> {_fmt(v['recent'])} (z {_fmt(v['z'])})" for k, v in metrics.items())
    return {"fired": bool(drops), "detail": detail, "metrics": metrics}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


# --------------------------------------------------------------------------------------------- the state


@dataclass
class _Pending:
    model_version: str
    features: dict[str, float]
    prediction: float
    hedge_done: bool = False


@dataclass
class _Variant:
    requests: int = 0
    matured_rows: int = 0
    unmatchable: int = 0  # predictions for a bar the bar log skipped: they can never mature
    matured: dict[int, list[tuple[str, float, float, float]]] = field(default_factory=dict)  # bar -> rows
    figures: dict[int, tuple[float, float, float, float, int]] = field(default_factory=dict)
    features: deque[dict[str, float]] = field(default_factory=deque)  # newest served feature rows (drift)
    alerting: bool = False


class LiveMonitor:
    """The follower's state: bars, pending predictions, matured figures per variant (no I/O but the sink)."""

    def __init__(self, params: MonitorParams, *, horizon: int, cost_rate: float, drift: DriftParams | None = None,
                 reference: pd.DataFrame | None = None, outcomes: OutcomeSink | None = None,
                 history_bars: int = 252) -> None:
        if horizon < 1:
            raise ValueError(f"LiveMonitor: horizon {horizon}; rule: >= 1 bar")
        self.params = params
        self.drift = drift or DriftParams()
        self.horizon = horizon
        self.cost_rate = cost_rate
        self.outcomes = outcomes
        self.history_bars = max(history_bars, params.recent_bars + params.min_earlier_bars, params.follow_window_bars)
        self.bar_index: dict[str, dict[int, int]] = {}
        self.prices: dict[str, list[float]] = {}
        self.last_bar: dict[str, int] = {}
        self.pending: dict[tuple[str, str, int], _Pending] = {}
        self.variants: dict[str, _Variant] = {}
        self.reference: dict[str, tuple[float, float]] | None = None
        self.reference_source = "first served rows"
        self._warm_up: list[dict[str, float]] = []
        if reference is not None:
            self.reference = {c: (float(reference[c].mean()), float(reference[c].std()))
                              for c in reference.columns if c not in ("timestamp", "symbol", "prediction")
                              and pd.api.types.is_numeric_dtype(reference[c])}
            self.reference_source = "reference data"
        self.hedge: dict[str, Any] = {"sent_rows": 0, "applied_steps": 0, "last": None, "error": None}
        self._undelivered: list[tuple[int, str, dict[str, float], float]] = []  # the sink failed on these
        self._retry_at = 0.0

    # ------------------------------------------------------------------------------------- input

    def add_bars(self, bars: Sequence[tuple[int, str, float]]) -> None:
        for bar_us, symbol, price in bars:
            index = self.bar_index.setdefault(symbol, {})
            if bar_us in index:
                continue
            if bar_us < self.last_bar.get(symbol, bar_us):
                raise DataError(f"bar log: {symbol} bar {_stamp(bar_us)} after {_stamp(self.last_bar[symbol])}; "
                                "rule: each symbol's bars in time order (as `alphaforge stream` logs them)")
            index[bar_us] = len(self.prices.setdefault(symbol, []))
            self.prices[symbol].append(price)
            self.last_bar[symbol] = bar_us

    def add_requests(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Request-log rows (see :meth:`RequestTail.poll`); the latest prediction of a (variant, symbol, bar) wins."""
        for variant, version, symbol, bar_us, features_json, prediction, _ in rows:
            state = self.variants.setdefault(variant, _Variant())
            state.requests += 1
            features = {k: (math.nan if v is None else float(v)) for k, v in json.loads(features_json).items()}
            state.features.append(features)
            while len(state.features) > self.params.drift_window_rows:
                state.features.popleft()
            if self.reference is None and variant == "champion":
                self._warm_up.append(features)
            if bar_us in state.matured and any(row[0] == symbol for row in state.matured[bar_us]):
                continue  # a repeated request for a bar already scored
            self.pending[(variant, symbol, int(bar_us))] = _Pending(
                str(version), features, math.nan if prediction is None else float(prediction))
        if self.reference is None and len(self._warm_up) >= self.params.drift_window_rows:
            # no reference data given: the champion's first drift_window_rows served rows are the reference
            frame = pd.DataFrame(self._warm_up[:self.params.drift_window_rows])
            self.reference = {c: (float(frame[c].mean()), float(frame[c].std())) for c in frame.columns}
            self._warm_up = []

    # ------------------------------------------------------------------------------------- maturing

    def mature(self) -> set[str]:
        """Score every pending prediction whose label is known, send the champion's one-bar outcomes; the variants
        whose figures changed."""
        touched: set[str] = set()
        hedge_rows: list[tuple[int, str, dict[str, float], float]] = []
        done = []
        for key, item in self.pending.items():
            variant, symbol, bar_us = key
            index = self.bar_index.get(symbol, {}).get(bar_us)
            prices = self.prices.get(symbol, [])
            if index is None:
                if prices and bar_us < self.last_bar[symbol]:
                    self.variants[variant].unmatchable += 1
                    done.append(key)
                continue
            if not item.hedge_done and index + 2 < len(prices):
                item.hedge_done = True
                if variant == "champion" and self.outcomes is not None:
                    one_bar = math.log(prices[index + 2] / prices[index + 1])
                    if math.isfinite(one_bar):
                        hedge_rows.append((bar_us, symbol, item.features, one_bar))
            if index + 1 + self.horizon < len(prices):
                label = math.log(prices[index + 1 + self.horizon] / prices[index + 1])
                side = float(np.sign(item.prediction - self.params.prediction_centre))
                net = side * math.expm1(label) - (2 * self.cost_rate if side != 0 else 0.0)
                state = self.variants[variant]
                state.matured.setdefault(bar_us, []).append((symbol, item.prediction, label, net))
                state.matured_rows += 1
                state.figures.pop(bar_us, None)
                touched.add(variant)
                done.append(key)
        for key in done:
            del self.pending[key]
        if self._undelivered and time.monotonic() >= self._retry_at:  # the sink failed before: again, in order
            hedge_rows, self._undelivered = self._undelivered + hedge_rows, []
        elif self._undelivered:
            self._undelivered += hedge_rows
            hedge_rows = []
        if hedge_rows:
            self._send_outcomes(hedge_rows)
        for variant in touched:
            self._trim(self.variants[variant])
        return touched

    def _send_outcomes(self, rows: list[tuple[int, str, dict[str, float], float]]) -> None:
        """Oldest bar first, in chunks of whole bars (a restart's replay can be long; the route caps a request)."""
        rows.sort(key=lambda row: row[0])
        chunks: list[list[tuple[int, str, dict[str, float], float]]] = [[]]
        for i, row in enumerate(rows):
            if len(chunks[-1]) >= _CHUNK_ROWS and row[0] != rows[i - 1][0]:
                chunks.append([])
            chunks[-1].append(row)
        for number, chunk in enumerate(chunks):
            try:
                answer = self.outcomes.send([r[0] for r in chunk], [r[1] for r in chunk],  # type: ignore[union-attr]
                                            [r[2] for r in chunk], np.array([r[3] for r in chunk]))
            except Exception as err:  # the follower keeps scoring; kept and retried, the failure in the figures
                self._undelivered = [row for rest in chunks[number:] for row in rest]
                self._retry_at = time.monotonic() + _OUTCOME_RETRY_SECONDS
                self.hedge["error"] = f"{type(err).__name__}: {err}"
                log.error("live monitor: %d outcomes not delivered to the online weights (retried in %g s): %s",
                          len(self._undelivered), _OUTCOME_RETRY_SECONDS, err)
                return
            self.hedge.update(sent_rows=self.hedge["sent_rows"] + len(chunk), error=None,
                              applied_steps=self.hedge["applied_steps"] + int(answer.get("applied_steps", 0)),
                              last={k: answer.get(k) for k in ("weights", "n_updates", "last_timestamp", "updated_at")})

    def _trim(self, state: _Variant) -> None:
        for bar_us in sorted(state.matured)[:-self.history_bars]:
            del state.matured[bar_us]
            state.figures.pop(bar_us, None)

    # ------------------------------------------------------------------------------------- figures

    def _per_bar(self, state: _Variant) -> tuple[list[int], np.ndarray]:
        bars = sorted(state.matured)
        for bar_us in bars:
            if bar_us not in state.figures:
                rows = state.matured[bar_us]
                state.figures[bar_us] = _bar_figures(
                    np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                    self.params.prediction_centre, self.drift.min_cross_section)
        return bars, np.array([state.figures[b] for b in bars], dtype=float).reshape(len(bars), 5)

    def _drift(self, state: _Variant) -> dict[str, Any]:
        if self.reference is None or not state.features:
            return {"reference": None, "rows": len(state.features), "max_shift": None, "shifted": []}
        frame = pd.DataFrame(list(state.features))
        shifts = {}
        for name, (mean, std) in self.reference.items():
            if name in frame.columns and std > 0 and frame[name].notna().any():
                shifts[name] = float((frame[name].mean() - mean) / std)
        shifted = sorted(n for n, s in shifts.items() if abs(s) > self.params.drift_shift_threshold)
        return {"reference": self.reference_source, "rows": len(frame), "shifted": shifted,
                "max_shift": max((abs(s) for s in shifts.values()), default=None),
                "shift": {n: round(s, 6) for n, s in shifts.items()}}

    def figures(self) -> dict[str, Any]:
        """Every variant's live figures, degradation test and feature shift."""
        out = {}
        for variant, state in sorted(self.variants.items()):
            bars, table = self._per_bar(state)
            window = table[-self.params.follow_window_bars:]
            degraded = degradation_z({"rank_ic": table[:, 1], "net_pnl": table[:, 3]},
                                     recent_bars=self.params.recent_bars,
                                     min_earlier_bars=self.params.min_earlier_bars,
                                     z_threshold=self.drift.performance_z, lags=self.horizon - 1)
            out[variant] = {
                "requests": state.requests, "pending": sum(1 for k in self.pending if k[0] == variant),
                "matured_rows": state.matured_rows, "unmatchable": state.unmatchable, "window_bars": len(window),
                "last_matured_bar": str(_stamp(bars[-1])) if bars else None,
                "ic": _nanmean(window[:, 0]), "rank_ic": _nanmean(window[:, 1]), "hit_rate": _nanmean(window[:, 2]),
                "net_pnl_per_bar": _nanmean(window[:, 3]),
                "net_pnl_sum": float(np.nansum(window[:, 3])) if len(window) else None,
                "degradation": degraded, "drift": self._drift(state)}
        return out


# --------------------------------------------------------------------------------------------- the loop


def _prometheus(document: Mapping[str, Any]) -> str:
    lines = []
    for metric in ("ic", "rank_ic", "hit_rate", "net_pnl_per_bar", "matured_rows", "requests", "pending"):
        lines.append(f"# TYPE alphaforge_live_{metric} gauge")
        for variant, figures in document["variants"].items():
            value = figures.get(metric)
            lines.append(f'alphaforge_live_{metric}{{variant="{variant}"}} {"NaN" if value is None else value}')
    lines.append("# TYPE alphaforge_live_alert_blocking gauge")
    lines.append(f"alphaforge_live_alert_blocking {int(document['alert']['blocking'])}")
    lines.append("# TYPE alphaforge_live_retrain_triggers counter")
    lines.append(f"alphaforge_live_retrain_triggers {document['retrain']['triggers']}")
    return "\n".join(lines) + "\n"


@dataclass
class FollowResult:
    """What a follower run did: its last figures, the retrain runs it triggered, the lags it measured."""

    figures: dict[str, Any]
    triggered: list[str]
    polls: int


def follow(params: MonitorParams, *, log_dir: str | Path, bar_log: str | Path, horizon: int, cost_rate: float,
           price_column: str = "open", out_dir: str | Path | None = None, drift: DriftParams | None = None,
           reference: pd.DataFrame | None = None, outcomes: OutcomeSink | None = None,
           retrain: Callable[[str], str] | None = None, stop: threading.Event | None = None,
           max_seconds: float | None = None, clock: Callable[[], float] = time.time) -> FollowResult:
    """Tail the request log and the bar log until ``stop`` is set (or ``max_seconds``), writing ``live.json`` and
    ``live.prom`` under ``out_dir`` after every poll that changed something (see the module docstring).

    ``retrain(reason) -> dag_run_id`` is called when the champion's degradation alert is on and the cooldown since
    the last trigger (``retrain_state.json``, kept across restarts) has passed: :class:`AirflowTrigger`."""
    try:
        cooldown = params.retrain_cooldown_seconds
    except ValueError as err:
        raise DataError(f"monitor.retrain_cooldown {params.retrain_cooldown!r}: not seconds or a duration such as "
                        f"6h or 30min ({err})") from err
    drift = drift or DriftParams()
    out = Path(out_dir or params.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "retrain_state.json"
    retrain_state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    retrain_state.setdefault("triggers", 0)
    since_us = int((clock() - params.lookback_hours * 3600) * 1e6)
    requests, bars = RequestTail(log_dir, since_us), BarTail(bar_log, price_column)
    monitor = LiveMonitor(params, horizon=horizon, cost_rate=cost_rate, drift=drift, reference=reference,
                          outcomes=outcomes)
    lags: deque[float] = deque(maxlen=2000)
    triggered: list[str] = []
    started, polls, last_failure = clock(), 0, -math.inf
    document: dict[str, Any] = {}
    stop = stop or threading.Event()
    try:
        while not stop.is_set() and (max_seconds is None or clock() - started < max_seconds):
            polls += 1
            new_requests, new_bars = requests.poll(), bars.poll()
            if not (new_requests or new_bars or polls == 1):
                stop.wait(params.follow_poll_seconds)
                continue
            monitor.add_bars(new_bars)
            monitor.add_requests(new_requests)
            monitor.mature()
            variants = monitor.figures()
            champion = variants.get("champion", {}).get("degradation", {})
            blocking = bool(champion.get("fired"))
            _dispatch(monitor, variants, drift)
            now = clock()
            last = retrain_state.get("last_trigger_at")
            if blocking and retrain is not None and (last is None or now - last >= cooldown) \
                    and now - last_failure >= _RETRY_SECONDS:
                try:
                    run_id = retrain(champion["detail"])
                except Exception as err:  # recorded, logged, retried after _RETRY_SECONDS
                    last_failure = now
                    retrain_state["error"] = f"{type(err).__name__}: {err}"
                    log.error("live monitor: could not trigger %s: %s", params.retrain_dag_id, err)
                else:
                    retrain_state.update(last_trigger_at=now, dag_run_id=run_id, reason=champion["detail"],
                                         triggers=retrain_state["triggers"] + 1, error=None)
                    write_json_atomic(retrain_state, state_path)
                    triggered.append(run_id)
                    log.warning("live monitor: triggered %s (run %s): %s", params.retrain_dag_id, run_id,
                                champion["detail"])
            written_at = clock()
            # rows committed while following (a restart's replay of older rows is no lag)
            lags.extend(written_at - row[6] / 1e6 for row in new_requests if row[6] / 1e6 >= started)
            document = {
                "updated_at": datetime.fromtimestamp(written_at, UTC).isoformat(), "horizon": horizon,
                "execution_price": price_column, "cost_rate_per_side": cost_rate, "variants": variants,
                "alert": {"blocking": blocking, "detail": champion.get("detail")},
                "retrain": {"dag_id": params.retrain_dag_id, "cooldown_seconds": cooldown,
                            "enabled": retrain is not None, **{k: retrain_state.get(k) for k in
                                                             ("last_trigger_at", "dag_run_id", "error")},
                            "triggers": retrain_state["triggers"]},
                "online_weights": {**monitor.hedge, "undelivered_rows": len(monitor._undelivered)},
                "lag_seconds": _quantiles(lags),
                "events": {"request_rows": len(new_requests), "bars": len(new_bars), "polls": polls},
            }
            write_json_atomic(document, out / "live.json")
            atomic_write(out / "live.prom", lambda tmp: Path(tmp).write_text(_prometheus(document)))
            stop.wait(params.follow_poll_seconds)
    finally:
        requests.close()
        bars.close()
    return FollowResult(figures=document, triggered=triggered, polls=polls)


def _dispatch(monitor: LiveMonitor, variants: Mapping[str, Any], drift: DriftParams) -> None:
    """An alert line (and webhook) when a variant's degradation test starts firing; blocking for the champion."""
    for variant, figures in variants.items():
        state = monitor.variants[variant]
        fired = bool(figures["degradation"]["fired"])
        if fired and not state.alerting:
            alert = Alert(created_at=datetime.now(UTC).isoformat(), source="monitor", rule="live_degradation",
                          blocking=variant == "champion", detail=f"{variant}: {figures['degradation']['detail']}")
            try:
                dispatch_alerts([alert], drift, context={"source": "monitor --follow", "variant": variant})
            except Exception as err:  # recorded in the alerts log before the webhook; the follower goes on
                log.error("live monitor: alert not delivered: %s", err)
        state.alerting = fired


def _quantiles(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "rows": 0}
    array = np.asarray(values, dtype=float)
    return {"p50": float(np.quantile(array, 0.5)), "p95": float(np.quantile(array, 0.95)), "max": float(array.max()),
            "rows": int(array.size)}


def follow_from_params(params: Any, *, log_dir: str | None = None, bar_log: str | Path | None = None,
                       service_url: str | None = None, max_seconds: float | None = None,
                       environ: Mapping[str, str] = os.environ) -> FollowResult:
    """``alphaforge monitor --follow``: :func:`follow` with the settings of a loaded params.yaml (``Params``).

    Horizon ``labels.horizon``; execution price and costs from ``evaluate`` (commission + half the fallback
    spread, per side); with ``serving.online_weights`` the champion's outcomes go to the service's
    ``/admin/outcomes`` (``service_url``, default 127.0.0.1 on ``serving.http_port``; the token from
    ``ALPHAFORGE_ADMIN_TOKEN``); the retrain trigger from :meth:`AirflowTrigger.from_settings`."""
    from alphaforge.backtest.market import resolve_execution

    settings: MonitorParams = params.monitor
    evaluation = params.evaluate
    execution = resolve_execution(list(params.feature_store.bar_columns), evaluation.execution)
    outcomes = None
    if params.serving.online_weights:
        outcomes = ServiceOutcomes(service_url or f"http://127.0.0.1:{params.serving.http_port}",
                                   token=environ.get("ALPHAFORGE_ADMIN_TOKEN"))
    retrain = AirflowTrigger.from_settings(settings, environ)
    log.info("live monitor: following %s and %s (horizon %d, %s); outcomes -> %s; retrain -> %s",
             log_dir or settings.log_dir, bar_log or params.feature_store.bar_log, params.labels.horizon, execution,
             outcomes.url if outcomes else "off (serving.online_weights false)",
             f"{retrain.url} {retrain.dag_id}" if retrain else "off (no Airflow URL)")
    return follow(settings, log_dir=log_dir or settings.log_dir, bar_log=bar_log or params.feature_store.bar_log,
                  horizon=params.labels.horizon,
                  cost_rate=evaluation.cost_bps / 1e4 + 0.5 * evaluation.fallback_spread_bps / 1e4,
                  price_column="open" if execution == "next_open" else "close", drift=params.drift,
                  outcomes=outcomes, retrain=retrain, max_seconds=max_seconds)
