"""Monitoring of served traffic: the request log the serving service writes, and ``alphaforge monitor``.

**The request log** (:class:`RequestLog`): one row per predicted row (a request for three symbols is three
rows), in SQLite files under one folder, one file per UTC day of ``received_at``
(``requests-YYYY-MM-DD.sqlite``), rotated to ``requests-YYYY-MM-DD.<n>.sqlite`` when a file passes
``max_file_bytes``. SQLite because several server workers append at once: each append is one transaction
(all rows or none), writers queue on SQLite's lock, and readers see only committed rows (WAL mode). Columns:

=================  =========================================================================================
``request_id``     the request (unique with ``variant``, ``symbol`` and ``timestamp``: in shadow mode the
                   champion and the challenger answer the same request)
``received_at``    when the service received the request (UTC, microseconds)
``logged_at``      when the row was committed to the log (UTC; set by :meth:`RequestLog.append`)
``model_name``     registered model name; ``model_version`` its version
``variant``        ``champion``, ``challenger`` or ``fallback`` (the served model raised; another answered)
``symbol``         the instrument; ``timestamp`` the bar the prediction is for (UTC)
``features``       the model's input row, a JSON object name -> number (null for NaN; 12 significant digits
                   when the service writes it)
``prediction``     the model's output (null when it produced none)
``latency_ms``     service time of the request
=================  =========================================================================================

**The monitor** (:func:`run_monitor`), over the requests received in a window:

* the same drift check as the pipeline (:func:`alphaforge.drift.check_drift` and its Evidently report) of
  the served features and predictions against the champion's reference data (restricted to the symbols
  served, calibrated on blocks as long as the served window);
* realised returns joined on (symbol, bar timestamp) as they arrive; live IC, rank IC and hit rate per
  ``period`` of bar timestamps (``live_performance.csv``);
* a **degradation alert** when the most recent ``recent_bars`` matured bars do worse than the earlier ones in
  the window: for each metric in ``degradation_metrics``, the recent value below ``degradation_factor`` times
  the earlier one, where the earlier one showed skill (at least ``degradation_min_edge``). The hit rate is
  compared by its edge over a coin flip (hit rate - 0.5), so a factor of 0.5 means "half the edge is gone";
* the **monitoring lag**: for rows this run sees for the first time (``logged_at`` after the previous run's
  watermark in ``state.json``), the time from ``received_at`` to the moment the monitor read them (p50, p95,
  max seconds), and the part of it spent before the row was committed (``logged_at - received_at``).

Alerts go through :func:`alphaforge.drift.dispatch_alerts` (the JSON-lines log and the webhook).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.drift import (
    Alert,
    DriftCheck,
    DriftParams,
    check_drift,
    dispatch_alerts,
    drift_columns,
    drift_report,
    performance_metrics,
)
from alphaforge.io import atomic_write, write_json_atomic
from alphaforge.schema import DataError

log = logging.getLogger(__name__)

__all__ = ["VARIANTS", "MonitorParams", "MonitorResult", "RequestLog", "degradation", "run_monitor"]

# fallback: another model answered because the served one raised (serving.request_fallback)
VARIANTS: tuple[str, ...] = ("champion", "challenger", "fallback")
CORE_COLUMNS: tuple[str, ...] = ("request_id", "received_at", "model_name", "model_version", "variant", "symbol",
                                 "timestamp", "prediction", "latency_ms")
_FILE = re.compile(r"^requests-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.sqlite$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    received_at_us INTEGER NOT NULL,
    logged_at_us INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    variant TEXT NOT NULL CHECK (variant IN ('champion', 'challenger', 'fallback')),
    symbol TEXT NOT NULL,
    bar_timestamp_us INTEGER NOT NULL,
    features TEXT NOT NULL,
    prediction REAL,
    latency_ms REAL NOT NULL,
    PRIMARY KEY (request_id, variant, symbol, bar_timestamp_us)
);
CREATE INDEX IF NOT EXISTS requests_by_received_at ON requests (received_at_us);
"""
_SELECT = ("SELECT request_id, received_at_us, logged_at_us, model_name, model_version, variant, symbol, "
           "bar_timestamp_us, features, prediction, latency_ms FROM requests "
           "WHERE received_at_us >= ? AND received_at_us < ? ORDER BY received_at_us")


def _stored_bytes(path: Path) -> int:
    """The database file's size plus its write-ahead log's (rows sit there until a checkpoint)."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _now() -> datetime:
    return datetime.now(UTC)


def _micros(stamp: Any, column: str, row: int) -> int:
    """UTC microseconds since the epoch; a naive or unparsable time raises naming the column and row."""
    try:
        value = pd.Timestamp(stamp)
    except (TypeError, ValueError) as err:
        raise DataError(f"request log: column {column!r} row {row}: {stamp!r} is not a time") from err
    if value is pd.NaT or value.tzinfo is None:
        raise DataError(f"request log: column {column!r} row {row}: {stamp!r}; rule: a timezone-aware time")
    return int(value.tz_convert("UTC").value // 1000)


def _from_micros(values: Sequence[int] | np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(values, dtype=np.int64), unit="us", utc=True))


class RequestLog:
    """The serving service's request log: SQLite files per UTC day under ``directory`` (see the module doc)."""

    def __init__(self, directory: str | Path, *, max_file_bytes: int = 64 << 20, busy_timeout_seconds: float = 30.0):
        if max_file_bytes <= 0:
            raise ValueError(f"RequestLog: max_file_bytes must be > 0, got {max_file_bytes}")
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.busy_timeout_seconds = busy_timeout_seconds
        self._writer: tuple[Path, sqlite3.Connection] | None = None
        self._write_lock = threading.Lock()

    # ----------------------------------------------------------------------------------- files

    def files(self, day: str | None = None) -> list[Path]:
        """The log's files (of one ``YYYY-MM-DD`` day, or all), oldest first."""
        if not self.directory.exists():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _FILE.match(path.name)
            if match and (day is None or match.group(1) == day):
                found.append((match.group(1), int(match.group(2) or 0), path))
        return [path for _, _, path in sorted(found)]

    def _file_for(self, day: str) -> Path:
        """The day's newest file while it is under ``max_file_bytes``, else the next one in the sequence."""
        existing = self.files(day)
        if existing and _stored_bytes(existing[-1]) < self.max_file_bytes:
            return existing[-1]
        sequence = 0 if not existing else int(_FILE.match(existing[-1].name).group(2) or 0) + 1  # type: ignore[union-attr]
        return self.directory / (f"requests-{day}.sqlite" if sequence == 0 else f"requests-{day}.{sequence}.sqlite")

    def _connect(self, path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=self.busy_timeout_seconds, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: no corruption, no fsync per commit
        connection.executescript(_SCHEMA)
        return connection

    # ----------------------------------------------------------------------------------- writing

    def append(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]], *, logged_at: datetime | None = None) -> int:
        """Write predicted rows; the number written. Each file's share of the rows is one transaction.

        A row holds the columns in the module table except ``logged_at`` (set here, ``logged_at`` or now) and
        ``features``, given either as a ``features`` mapping or, with a data frame, as every column that is
        not a core column. Bad rows raise :class:`DataError` naming column, row and rule, and nothing is written.
        """
        records = self._records(rows, logged_at or _now())
        by_day: dict[str, list[tuple[Any, ...]]] = {}
        for day, record in records:
            by_day.setdefault(day, []).append(record)
        self._insert(by_day)
        return len(records)

    def append_blocks(self, blocks: Sequence[Mapping[str, Any]]) -> int:
        """Several served requests (each the keyword arguments of :meth:`append_block`) in one transaction per file."""
        by_day: dict[str, list[tuple[Any, ...]]] = {}
        for block in blocks:
            day, records = self._block_records(**block)
            by_day.setdefault(day, []).extend(records)
        self._insert(by_day)
        return sum(len(records) for records in by_day.values())

    def append_block(self, **block: Any) -> int:
        """One served request's rows at once (what the service writes): arrays in, one transaction, rows written.

        Keywords: ``request_id``, ``received_at``, ``model_name``, ``model_version``, ``variant``, ``symbols``,
        ``timestamps_us`` (bar times, UTC microseconds), ``feature_names``, ``features`` (rows x names),
        ``predictions``, ``latency_ms`` and optionally ``logged_at``. The same table and rules as :meth:`append`,
        checked once per block rather than per row, so the service's background writer keeps up with batched
        traffic. NaN features and predictions become null. A block may hold the rows of several requests answered
        together (the service's micro-batches): ``request_id`` (and ``latency_ms``) then one per row.
        """
        return self.append_blocks([block])

    def _block_records(self, *, request_id: str | Sequence[str], received_at: datetime, model_name: str,
                       model_version: str, variant: str, symbols: Sequence[str], timestamps_us: np.ndarray,
                       feature_names: Sequence[str], features: np.ndarray, predictions: np.ndarray,
                       latency_ms: float | Sequence[float], logged_at: datetime | None = None
                       ) -> tuple[str, list[tuple[Any, ...]]]:
        if variant not in VARIANTS:
            raise DataError(f"request log: column 'variant': {variant!r}; rule: one of {VARIANTS}")
        n_rows = len(symbols)
        per_row = not isinstance(request_id, str)
        label = f"of {len(set(request_id))} requests" if per_row else str(request_id)
        if not (len(timestamps_us) == features.shape[0] == len(predictions) == n_rows):
            raise DataError(f"request log block {label}: {n_rows} symbols, {len(timestamps_us)} timestamps, "
                            f"{features.shape[0]} feature rows, {len(predictions)} predictions; rule: one each per row")
        if features.shape[1] != len(feature_names):
            raise DataError(f"request log block {label}: {features.shape[1]} feature columns for "
                            f"{len(feature_names)} names")
        request_ids = [str(r) for r in request_id] if per_row else [str(request_id)] * n_rows
        latencies = ([float(latency_ms)] * n_rows if isinstance(latency_ms, (int, float))
                     else [float(v) for v in latency_ms])
        if len(request_ids) != n_rows or len(latencies) != n_rows or not all(v >= 0 for v in latencies):
            raise DataError(f"request log block {label}: {len(request_ids)} request ids, latencies {latency_ms!r} "
                            f"for {n_rows} rows; rule: one each per row (or one for the block), latency_ms >= 0")
        received_us = _micros(received_at, "received_at", 0)
        logged_us = _micros(logged_at or _now(), "logged_at", 0)
        names = [str(name) for name in feature_names]
        if np.isfinite(features).all():
            # one format string per block: 12 significant digits, three times faster than json.dumps per row
            template = "{" + ",".join(json.dumps(name).replace("%", "%%") + ":%.12g" for name in names) + "}"
            encoded = [template % tuple(row) for row in features.tolist()]
        else:
            encoded = [json.dumps({k: (v if math.isfinite(v) else None) for k, v in zip(names, row)})
                       for row in features.tolist()]
        values = [(v if math.isfinite(v) else None) for v in np.asarray(predictions, dtype=np.float64).tolist()]
        day = datetime.fromtimestamp(received_us / 1e6, UTC).strftime("%Y-%m-%d")
        stamps = np.asarray(timestamps_us, dtype=np.int64).tolist()
        name, version = str(model_name), str(model_version)
        records = [(rid, received_us, logged_us, name, version, variant, str(symbol), stamp, text, value, latency)
                   for rid, symbol, stamp, text, value, latency in zip(request_ids, symbols, stamps, encoded, values,
                                                                      latencies, strict=True)]
        return day, records

    def _insert(self, by_day: Mapping[str, list[tuple[Any, ...]]]) -> None:
        """Each day's records into that day's current file, one transaction per file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            for day, day_records in sorted(by_day.items()):
                path = self._file_for(day)
                if self._writer is None or self._writer[0] != path:
                    self.close()
                    self._writer = (path, self._connect(path))
                connection = self._writer[1]
                try:
                    with connection:
                        connection.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                               day_records)
                except sqlite3.IntegrityError as err:
                    raise DataError(f"request log {path}: {err}; rule: (request_id, variant, symbol, timestamp) is unique; "
                                    f"none of these {len(day_records)} rows were written") from err

    def close(self) -> None:
        """Close the writing connection (kept open between appends: closing one checkpoints the WAL, which cost
        more than the insert itself)."""
        if self._writer is not None:
            self._writer[1].close()
            self._writer = None

    def _records(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]],
                 logged_at: datetime) -> list[tuple[str, tuple[Any, ...]]]:
        if isinstance(rows, pd.DataFrame):
            frame = rows
            feature_names = [c for c in frame.columns if c not in CORE_COLUMNS and c != "features"]
            dicts = frame.to_dict("records")
            if "features" not in frame.columns:  # every column that is not a core column is a feature
                for record in dicts:
                    record["features"] = {name: record.pop(name) for name in feature_names}
        else:
            dicts = [dict(r) for r in rows]
        logged_us = _micros(logged_at, "logged_at", 0)
        records = []
        for i, record in enumerate(dicts):
            missing = [c for c in (*CORE_COLUMNS, "features") if c not in record]
            unknown = [c for c in record if c not in (*CORE_COLUMNS, "features")]
            if missing or unknown:
                raise DataError(f"request log: row {i} lacks {missing} / has unknown {unknown}; rule: every row has "
                                f"exactly {[*CORE_COLUMNS, 'features']}")
            if record["variant"] not in VARIANTS:
                raise DataError(f"request log: column 'variant' row {i}: {record['variant']!r}; rule: one of {VARIANTS}")
            features = record["features"]
            if not isinstance(features, Mapping) or not features:
                raise DataError(f"request log: column 'features' row {i}: {type(features).__name__}; rule: a "
                                "non-empty mapping of feature name to number")
            received_us = _micros(record["received_at"], "received_at", i)
            latency = _number(record["latency_ms"], "latency_ms", i)
            if latency is None or latency < 0:
                raise DataError(f"request log: column 'latency_ms' row {i}: {record['latency_ms']!r}; rule: >= 0")
            encoded = json.dumps({str(k): _number(v, f"features.{k}", i) for k, v in features.items()}, allow_nan=False)
            day = pd.Timestamp(received_us * 1000, tz="UTC").strftime("%Y-%m-%d")
            records.append((day, (
                str(record["request_id"]), received_us, logged_us, str(record["model_name"]),
                str(record["model_version"]), record["variant"], str(record["symbol"]),
                _micros(record["timestamp"], "timestamp", i), encoded, _number(record["prediction"], "prediction", i),
                latency,
            )))
        return records

    # ----------------------------------------------------------------------------------- reading

    def read(self, window_start: Any, window_end: Any) -> pd.DataFrame:
        """Rows received in [window_start, window_end), oldest first, features expanded into columns.

        Columns: the core columns, ``logged_at``, then one column per feature name (NaN where a row lacks it).
        """
        start_us = _micros(window_start, "window_start", 0)
        end_us = _micros(window_end, "window_end", 0)
        if end_us <= start_us:
            raise ValueError(f"RequestLog.read: window_end {window_end} must be after window_start {window_start}")
        first_day = pd.Timestamp(start_us * 1000, tz="UTC").strftime("%Y-%m-%d")
        last_day = pd.Timestamp((end_us - 1) * 1000, tz="UTC").strftime("%Y-%m-%d")
        rows: list[tuple[Any, ...]] = []
        for path in self.files():
            day = _FILE.match(path.name).group(1)  # type: ignore[union-attr]
            if first_day <= day <= last_day:
                connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.busy_timeout_seconds)
                try:
                    rows += connection.execute(_SELECT, (start_us, end_us)).fetchall()
                finally:
                    connection.close()
        rows.sort(key=lambda row: row[1])
        names = ["request_id", "received_at", "logged_at", "model_name", "model_version", "variant", "symbol",
                 "timestamp", "features", "prediction", "latency_ms"]
        frame = pd.DataFrame.from_records(rows, columns=names)
        for column in ("received_at", "logged_at", "timestamp"):
            frame[column] = _from_micros(frame[column].to_numpy())
        frame["prediction"] = frame["prediction"].astype(float)
        frame["latency_ms"] = frame["latency_ms"].astype(float)
        decoded = [json.loads(text) for text in frame.pop("features")]
        features = pd.DataFrame.from_records(decoded, index=frame.index) if decoded else pd.DataFrame(index=frame.index)
        return pd.concat([frame, features.astype(float)], axis=1)


def _number(value: Any, column: str, row: int) -> float | None:
    """A float, or None for a missing value; anything that is not a number raises naming column and row."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"request log: column {column!r} row {row}: {value!r}; rule: a number") from err
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------- monitor


class MonitorParams(BaseModel):
    """The served-traffic monitor (``monitor:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_dir: str = Field("logs/requests", min_length=1, description="the service's request log")
    out_dir: str = Field("reports/monitor", min_length=1)
    lookback_hours: float = Field(24.0 * 92, gt=0, description="requests received this long before the run")
    variant: Literal["champion", "challenger", "all"] = "champion"
    return_column: str = Field("forward_return", description="realised return column joined on (symbol, timestamp)")
    prediction_centre: float = Field(0.0, description="0.5 for a classifier's P(up)")
    period: str = Field("W", min_length=1, description="pandas period of bar timestamps for the live table")
    recent_bars: int = Field(20, ge=2, description="newest matured bars that form the recent window")
    min_earlier_bars: int = Field(20, ge=2, description="matured bars before them needed for the comparison")
    degradation_factor: float = Field(0.5, gt=0, lt=1, description="alert when recent < factor x earlier")
    degradation_metrics: tuple[Literal["ic", "rank_ic", "hit_rate"], ...] = ("rank_ic", "hit_rate")
    degradation_min_edge: float = Field(0.02, ge=0, description="an earlier IC (or hit-rate edge) below this is "
                                        "noise, not skill: nothing to degrade")
    max_file_bytes: int = Field(64 << 20, gt=0, description="request log files rotate past this size")
    # `alphaforge monitor --follow` (alphaforge.live_monitor): the streaming follower
    follow_poll_seconds: float = Field(0.1, gt=0, le=5, description="how often the logs are polled")
    follow_window_bars: int = Field(63, ge=2, description="matured bars behind the rolling live figures")
    drift_window_rows: int = Field(500, ge=10, description="newest served rows behind the feature-shift figure")
    drift_shift_threshold: float = Field(0.5, gt=0, description="|served mean - reference mean| / reference std")
    retrain_cooldown: float | str = Field("6h", description="at most one retrain trigger per this long (seconds "
                                          "or a duration such as 6h)")
    retrain_dag_id: str = Field("nightly_retrain", min_length=1)
    airflow_url: str | None = Field(None, description="Airflow REST API base; null: ALPHAFORGE_AIRFLOW_URL, or no "
                                    "trigger (user/password: ALPHAFORGE_AIRFLOW_USER/_PASSWORD)")

    @property
    def retrain_cooldown_seconds(self) -> float:
        """``retrain_cooldown`` in seconds (a number, or a pandas duration string such as ``6h`` or ``30min``)."""
        try:
            seconds = float(self.retrain_cooldown)
        except ValueError:
            seconds = pd.Timedelta(str(self.retrain_cooldown)).total_seconds()
        if not seconds >= 0:
            raise ValueError(f"monitor.retrain_cooldown {self.retrain_cooldown!r}: must be >= 0")
        return seconds


def degradation(frame: pd.DataFrame, params: MonitorParams, *, min_cross_section: int = 3) -> dict[str, Any]:
    """Earlier vs recent live performance of matured rows (``prediction`` and ``realised`` columns).

    ``fired`` is None when there are not ``recent_bars + min_earlier_bars`` matured bars, else whether any
    metric in ``degradation_metrics`` fell below ``degradation_factor`` times its earlier value (the hit
    rate as its edge over 0.5). A metric whose earlier value is below ``degradation_min_edge`` had no skill to
    lose (an IC of 0.005 halving is noise) and is skipped, with a line saying so.
    """
    stamps = pd.DatetimeIndex(frame["timestamp"].unique()).sort_values()
    needed = params.recent_bars + params.min_earlier_bars
    if len(stamps) < needed:
        return {"fired": None, "detail": f"degradation not checked: {len(stamps)} matured bars (< recent_bars + "
                                         f"min_earlier_bars = {needed})", "earlier": None, "recent": None}
    split = stamps[-params.recent_bars]
    parts = {
        name: performance_metrics(rows, "prediction", "realised", centre=params.prediction_centre,
                                  min_cross_section=min_cross_section)
        for name, rows in (("earlier", frame[frame["timestamp"] < split]), ("recent", frame[frame["timestamp"] >= split]))
    }
    for block in parts.values():
        block["hit_rate"] = block.pop("directional_accuracy")
    drops, held = [], []
    for metric in params.degradation_metrics:
        before, now = parts["earlier"][metric], parts["recent"][metric]
        if before is None or now is None:
            held.append(f"{metric} undefined")
            continue
        edge_before, edge_now = (before - 0.5, now - 0.5) if metric == "hit_rate" else (before, now)
        label = "hit-rate edge" if metric == "hit_rate" else metric
        if edge_before < max(params.degradation_min_edge, 1e-12):
            held.append(f"{label} was {edge_before:.4f} before (< degradation_min_edge "
                        f"{params.degradation_min_edge:g}): no skill to degrade")
        elif edge_now < params.degradation_factor * edge_before:
            drops.append(f"{label} fell from {edge_before:.4f} (earlier) to {edge_now:.4f} (last "
                         f"{params.recent_bars} bars) < {params.degradation_factor:g} x earlier")
        else:
            held.append(f"{label} {edge_before:.4f} -> {edge_now:.4f}")
    fired = bool(drops)
    detail = ("performance degradation on served traffic: " + "; ".join(drops)) if fired else (
        "no degradation: " + "; ".join(held))
    return {"fired": fired, "detail": detail, **parts}


def _live_table(matured: pd.DataFrame, params: MonitorParams, min_cross_section: int) -> pd.DataFrame:
    """Live IC, rank IC and hit rate per period of bar timestamps."""
    periods = matured["timestamp"].dt.tz_convert(None).dt.to_period(params.period)
    rows = []
    for period, part in matured.groupby(periods, sort=True):
        metrics = performance_metrics(part, "prediction", "realised", centre=params.prediction_centre,
                                      min_cross_section=min_cross_section)
        rows.append({"period": str(period), "start": str(part["timestamp"].min()), "rows": metrics["rows"],
                     "bars": metrics["bars"], "ic": metrics["ic"], "rank_ic": metrics["rank_ic"],
                     "hit_rate": metrics["directional_accuracy"]})
    return pd.DataFrame(rows, columns=["period", "start", "rows", "bars", "ic", "rank_ic", "hit_rate"])


@dataclass
class MonitorResult:
    """What one monitor run saw, found and wrote."""

    summary: dict[str, Any]
    alerts: list[Alert]
    live: pd.DataFrame
    check: DriftCheck | None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return bool(self.summary["degradation"]["fired"])


def _quantiles(seconds: pd.Series) -> dict[str, float | None]:
    if seconds.empty:
        return {"p50": None, "p95": None, "max": None, "rows": 0}
    return {"p50": float(seconds.quantile(0.5)), "p95": float(seconds.quantile(0.95)), "max": float(seconds.max()),
            "rows": len(seconds)}


def run_monitor(log_dir: str | Path, reference_frame: pd.DataFrame, realised_returns: pd.DataFrame | None,
                params: MonitorParams, *, drift_params: DriftParams | None = None,
                features: Sequence[str] | None = None, window_end: Any = None, out_dir: str | Path | None = None,
                write_html: bool = True, now: datetime | None = None) -> MonitorResult:
    """Read the requests received in the last ``lookback_hours`` before ``window_end`` (default now) and check them.

    ``reference_frame``: the champion's reference data (timestamp, symbol, the features, optionally
    ``prediction``: its out-of-sample predictions there); ``realised_returns``: timestamp, symbol and
    ``params.return_column`` for bars whose return is known (None: none yet); ``features``: the model's
    features (``drift_params.features`` wins). Writes ``report.html``, ``summary.json``,
    ``live_performance.csv``, ``alert.json`` and ``state.json`` under ``out_dir`` (default ``params.out_dir``),
    and dispatches alerts as the drift stage does.
    """
    drift_params = drift_params or DriftParams()
    out = Path(out_dir or params.out_dir)
    end = pd.Timestamp(window_end) if window_end is not None else pd.Timestamp(now or _now())
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    start = end - timedelta(hours=params.lookback_hours)
    requests = RequestLog(log_dir, max_file_bytes=params.max_file_bytes).read(start, end)
    read_at = pd.Timestamp(now or _now())
    read_at = read_at.tz_localize("UTC") if read_at.tzinfo is None else read_at.tz_convert("UTC")
    if params.variant != "all":
        requests = requests[requests["variant"] == params.variant]
    if requests.empty:
        raise DataError(f"monitor: no {params.variant} requests received in [{start}, {end}) under {log_dir}; "
                        "rule: the window must hold served traffic (is the service logging there?)")
    served_rows = len(requests)
    lag = _lag(requests, read_at, out / "state.json")
    last_logged_at = requests["logged_at"].max()
    # one prediction per (variant, symbol, bar): the latest, so a retried or repeated request counts once
    requests = (requests.sort_values("received_at", kind="stable")
                .drop_duplicates(["variant", "symbol", "timestamp"], keep="last").reset_index(drop=True))
    columns = [c for c in drift_columns(reference_frame, drift_params, features) if c != "prediction"]
    unlogged = [c for c in columns if c not in requests.columns]
    if unlogged:
        raise DataError(f"monitor: features {unlogged} are not in the request log; rule: the service logs every "
                        "model feature the drift check compares")
    served_symbols = set(requests["symbol"])
    reference = reference_frame[reference_frame["symbol"].isin(served_symbols)]
    if reference.empty:
        raise DataError(f"monitor: none of the served symbols {sorted(served_symbols)[:10]} is in the reference data")
    prediction_column = "prediction" if "prediction" in reference.columns else None
    check = check_drift(reference, requests, columns, drift_params, prediction_column=prediction_column)
    paths: dict[str, Path] = {}
    if write_html:
        snapshot, check = drift_report(reference, requests, check, drift_params)
        paths["report"] = atomic_write(out / "report.html", lambda tmp: snapshot.save_html(str(tmp)))

    matured = requests.iloc[0:0].assign(realised=pd.Series(dtype=float))
    if realised_returns is not None:
        missing = [c for c in ("timestamp", "symbol", params.return_column) if c not in realised_returns.columns]
        if missing:
            raise DataError(f"monitor: realised returns lack {missing}; rule: timestamp, symbol, {params.return_column}")
        realised = realised_returns[["timestamp", "symbol", params.return_column]].rename(
            columns={params.return_column: "realised"})
        realised = realised[np.isfinite(realised["realised"].astype(float))]
        matured = requests.merge(realised, on=["symbol", "timestamp"], how="inner", validate="many_to_one")
        matured = matured[np.isfinite(matured["prediction"].astype(float))]
    live = _live_table(matured, params, drift_params.min_cross_section)
    paths["live"] = atomic_write(out / "live_performance.csv", lambda tmp: live.to_csv(tmp, index=False))
    degraded = degradation(matured, params, min_cross_section=drift_params.min_cross_section)

    created = read_at.isoformat()
    report_path = str(paths["report"]) if "report" in paths else None
    fired: list[tuple[str, str]] = []
    if degraded["fired"]:
        fired.append(("degradation", degraded["detail"]))
    if check.dataset_drift:
        fired.append(("data_drift", (f"served data drift: {len(check.drifted)} of {len(check.features)} features "
                                    f"drifted (share {check.share:.2f} >= {drift_params.drift_share_threshold:g}): "
                                    f"{', '.join(check.drifted)}")))
    if check.prediction is not None and check.prediction.drifted:
        fired.append(("prediction_drift", (f"served prediction drift: score {check.prediction.score:.4f} >= "
                                          f"{check.prediction.threshold:.4f}")))
    alerts = [Alert(created_at=created, source="monitor", rule=rule, blocking=rule in drift_params.blocking_rules,
                    detail=detail, report=report_path) for rule, detail in fired]
    summary = {
        "window": {"start": str(start), "end": str(end), "variant": params.variant},
        "requests": {"rows": served_rows, "unique_rows": len(requests),
                     "requests": int(requests["request_id"].nunique()), "symbols": len(served_symbols),
                     "bars": int(requests["timestamp"].nunique()),
                     "latency_ms_p50": float(requests["latency_ms"].quantile(0.5)),
                     "latency_ms_p95": float(requests["latency_ms"].quantile(0.95))},
        "matured_rows": len(matured),
        "pending_rows": int(len(requests) - len(matured)),
        "lag_seconds": lag["read"],
        "log_write_seconds": lag["write"],
        "drift": {"share": check.share, "drifted_features": list(check.drifted), "n_features": len(check.features),
                  "prediction": check.prediction.as_dict() if check.prediction else None},
        "degradation": degraded,
        "alerts": [a.rule for a in alerts],
    }
    paths["summary"] = write_json_atomic(summary, out / "summary.json", default=_json_default)
    blocking = [a for a in alerts if a.blocking]
    paths["alert"] = write_json_atomic(
        {"blocking": bool(blocking), "detail": "; ".join(a.detail for a in alerts) or "no alert",
         "reasons": [f"{'BLOCKING' if a.blocking else 'WARNING'} {a.detail}" for a in alerts], "created_at": created,
         "rules": [a.rule for a in alerts]},
        out / "alert.json")
    paths["state"] = write_json_atomic({"last_logged_at": str(last_logged_at)}, out / "state.json")
    log.info("monitor: %d rows (%d matured), drift share %.2f, %s; lag p50 %s s", len(requests), len(matured),
             check.share, degraded["detail"], lag["read"]["p50"])
    dispatch_alerts(alerts, drift_params, context={"source": "monitor", "summary": str(paths["summary"])})
    return MonitorResult(summary=summary, alerts=alerts, live=live, check=check, paths=paths)


def _lag(requests: pd.DataFrame, read_at: pd.Timestamp, state_path: Path) -> dict[str, dict[str, Any]]:
    """Monitoring lag of the rows this run sees first: read time - received_at, and logged_at - received_at."""
    fresh = requests
    if state_path.exists():
        watermark = pd.Timestamp(json.loads(state_path.read_text())["last_logged_at"])
        fresh = requests[requests["logged_at"] > watermark]
    read = (read_at - fresh["received_at"]).dt.total_seconds()
    write = (fresh["logged_at"] - fresh["received_at"]).dt.total_seconds()
    return {"read": _quantiles(read), "write": _quantiles(write)}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        number = value.item()
        return None if isinstance(number, float) and not math.isfinite(number) else number
    return str(value)
