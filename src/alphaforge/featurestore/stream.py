"""``alphaforge stream``: bars in (a file replay or stdin lines), features updated incrementally, the store written.

Bars are validated one by one (a bad one raises :class:`BarError` naming the line and the rule,
or is skipped and counted, per ``on_bad_bar``), gathered into steps of one timestamp (every
symbol's bar of that timestamp: the cross-sectional ranks need them all), and each step is

1. run through the :class:`~alphaforge.featurestore.incremental.IncrementalEngine`,
2. written to the online store (the latest vector per symbol, pipelined),
3. appended to the bar log (SQLite, one transaction per step, with the engine's state every
   ``checkpoint_every`` steps in the same transaction).

A step is in the log only once its features are in the store, so after a crash (even SIGKILL)
a restart loads the last saved state, replays the logged bars after it (rewriting their
features, which is idempotent), skips input bars at or before the last logged timestamp, and
carries on: the store ends exactly as after an uninterrupted run. On stdin, bars must come in
time order, grouped by timestamp; the last step is written when the next timestamp (or the end
of input) arrives.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import pandas as pd

from alphaforge.features import FEATURE_VERSION, FeatureParams
from alphaforge.featurestore.config import FeatureStoreParams
from alphaforge.featurestore.incremental import IncrementalEngine, SuspensionRule, plan_for
from alphaforge.featurestore.online import OnlineStore
from alphaforge.regimes import RegimeModel, stored_feature_version
from alphaforge.schema import DataError

log = logging.getLogger(__name__)

NUMERIC = ("open", "high", "low", "close", "volume", "bid", "ask", "bid_size", "ask_size")
_PRICES = ("open", "high", "low", "close")
OnBadBar = Literal["stop", "skip"]


class BarError(DataError):
    """A streamed bar broke a rule; the message names the line, the column and the rule."""


@dataclass(frozen=True)
class Bar:
    line: int
    timestamp_ns: int
    symbol: str
    values: dict[str, float]


@dataclass
class StreamSummary:
    steps: int = 0
    bars: int = 0
    already_stored: int = 0
    bad_bars: int = 0
    replayed_steps: int = 0
    errors: list[str] = field(default_factory=list)
    last_timestamp: str | None = None


# --------------------------------------------------------------------------------------------
# Reading and validating bars
# --------------------------------------------------------------------------------------------


def _parse_timestamp(value: object, line: int, naive_timezone: str) -> int:
    if not isinstance(value, str) or not value.strip():
        raise BarError(f"line {line}: column 'timestamp': rule timestamp_iso8601: expected a date-time string such "
                       f"as 2024-01-31T15:30:00Z, got {value!r}")
    try:
        stamp = pd.Timestamp(value.strip())
    except (ValueError, TypeError) as err:
        raise BarError(f"line {line}: column 'timestamp': rule timestamp_iso8601: {value!r} is not a date-time "
                       f"({err})") from err
    if stamp is pd.NaT:
        raise BarError(f"line {line}: column 'timestamp': rule timestamp_iso8601: missing")
    stamp = stamp.tz_localize(naive_timezone) if stamp.tzinfo is None else stamp
    return int(stamp.tz_convert("UTC").as_unit("ns").value)


def validate_bar(record: dict[str, object], line: int, required: Iterable[str], naive_timezone: str = "UTC") -> Bar:
    """One raw bar (column -> value) checked against the rules the features rely on; a :class:`Bar`.

    Rules: required columns present; timestamp a date-time (naive ones in ``naive_timezone``);
    symbol non-empty; numbers finite; prices > 0; volume, quotes and sizes >= 0; high >= low,
    high >= open and close, low <= open and close.
    """
    lowered = {str(k).strip().lower(): None if isinstance(v, float) and math.isnan(v) else v
               for k, v in record.items()}
    missing = [c for c in ("timestamp", "symbol", *required) if lowered.get(c) in (None, "")]
    if missing:
        raise BarError(f"line {line}: rule required_columns: missing {missing} (the features need "
                       f"{['timestamp', 'symbol', *required]})")
    symbol = str(lowered["symbol"]).strip()
    if not symbol:
        raise BarError(f"line {line}: column 'symbol': rule non_empty_symbol")
    timestamp_ns = _parse_timestamp(lowered["timestamp"], line, naive_timezone)
    values: dict[str, float] = {}
    for column in NUMERIC:
        raw = lowered.get(column)
        if raw is None or raw == "":
            continue
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BarError(f"line {line}: column {column!r}: rule numeric: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise BarError(f"line {line}: column {column!r}: rule finite: {raw!r}")
        if column in _PRICES and value <= 0:
            raise BarError(f"line {line}: column {column!r}: rule positive_price: {value!r} must be > 0")
        if column not in _PRICES and value < 0:
            raise BarError(f"line {line}: column {column!r}: rule non_negative: {value!r} must be >= 0")
        values[column] = value
    high, low = values.get("high"), values.get("low")
    body = [values[c] for c in ("open", "close") if c in values]
    if high is not None and low is not None and high < low:
        raise BarError(f"line {line}: columns 'high', 'low': rule high_ge_low: high {high!r} < low {low!r}")
    if high is not None and body and high < max(body):
        raise BarError(f"line {line}: column 'high': rule high_ge_open_close: {high!r} < {max(body)!r}")
    if low is not None and body and low > min(body):
        raise BarError(f"line {line}: column 'low': rule low_le_open_close: {low!r} > {min(body)!r}")
    return Bar(line=line, timestamp_ns=timestamp_ns, symbol=symbol, values=values)


def lines_to_records(stream: TextIO, fmt: Literal["auto", "jsonl", "csv"] = "auto") -> Iterator[tuple[int, object]]:
    """(line number, column -> value dict, or an error message) for each non-empty line of ``stream``.

    JSON lines hold one object per line; CSV has a header line first. ``auto`` picks JSON when the
    first non-empty line starts with ``{``.
    """
    header: list[str] | None = None
    for number, text in enumerate(stream, start=1):
        text = text.strip()
        if not text:
            continue
        if fmt == "auto":
            fmt = "jsonl" if text.startswith("{") else "csv"
        if fmt == "jsonl":
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield number, f"line {number}: rule json_object: not valid JSON ({err.msg})"
                continue
            yield number, record if isinstance(record, dict) else f"line {number}: rule json_object: not an object"
            continue
        fields = next(csv.reader(io.StringIO(text)))
        if header is None:
            header = [f.strip().lower() for f in fields]
            continue
        if len(fields) != len(header):
            yield number, (f"line {number}: rule csv_fields: {len(fields)} fields, the header has {len(header)}")
            continue
        yield number, dict(zip(header, fields, strict=True))


def file_records(path: Path) -> Iterator[tuple[int, object]]:
    """The rows of a CSV (optionally gzipped) or Parquet file in the canonical schema, in time order.

    Line numbers are the file's (CSV: the header is line 1; Parquet: row + 1). Rows are replayed by
    timestamp (stable, so a file sorted by symbol then time works); an unparseable timestamp keeps
    its place at the end, where validation names it.
    """
    suffixes = "".join(path.suffixes).lower()
    if not path.exists():
        raise DataError(f"{path}: no such file to stream")
    if suffixes.endswith((".parquet", ".pq")):
        frame, first_line = pd.read_parquet(path), 1
    elif ".csv" in suffixes:
        frame, first_line = pd.read_csv(path, dtype={"timestamp": str, "symbol": str}, keep_default_na=False), 2
    else:
        raise DataError(f"{path}: unknown file type {suffixes!r}; expected .csv, .csv.gz or .parquet")
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    if "timestamp" not in frame.columns:
        raise DataError(f"{path}: rule required_columns: no 'timestamp' column")
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed"))
    nanos = np.where(stamps.isna(), np.iinfo(np.int64).max, stamps.as_unit("ns").asi8)
    order = np.argsort(nanos, kind="stable")
    if pd.api.types.is_datetime64_any_dtype(frame["timestamp"].dtype):
        frame["timestamp"] = frame["timestamp"].map(lambda t: t.isoformat())
    columns = list(frame.columns)
    for row, values in zip(order.tolist(), frame.iloc[order].itertuples(index=False, name=None), strict=True):
        yield row + first_line, dict(zip(columns, values, strict=True))


# --------------------------------------------------------------------------------------------
# The bar log
# --------------------------------------------------------------------------------------------


class BarLog:
    """Every bar the stream has turned into features (SQLite, WAL), plus the engine's last saved state."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; WAL keeps it atomic
        numeric = ", ".join(f"{c} REAL" for c in NUMERIC)
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS bars (timestamp INTEGER NOT NULL, symbol TEXT NOT NULL, "
                                f"{numeric}, PRIMARY KEY (timestamp, symbol))")
        self.connection.execute("CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), "
                                "timestamp INTEGER NOT NULL, fingerprint TEXT NOT NULL, state BLOB NOT NULL)")

    def close(self) -> None:
        self.connection.close()

    def append(self, timestamp_ns: int, bars: list[Bar], state: tuple[str, bytes] | None) -> None:
        """One step's bars (and, when given, the engine state after them) in one transaction."""
        placeholders = ", ".join("?" * (2 + len(NUMERIC)))
        rows = [(timestamp_ns, b.symbol, *(b.values.get(c) for c in NUMERIC)) for b in bars]
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.executemany(f"INSERT INTO bars VALUES ({placeholders})", rows)
            if state is not None:
                self.connection.execute("INSERT OR REPLACE INTO checkpoint VALUES (1, ?, ?, ?)",
                                        (timestamp_ns, state[0], state[1]))

    def checkpoint(self) -> tuple[int, str, bytes] | None:
        row = self.connection.execute("SELECT timestamp, fingerprint, state FROM checkpoint WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))

    def last_timestamp(self) -> int | None:
        row = self.connection.execute("SELECT MAX(timestamp) FROM bars").fetchone()
        return None if row[0] is None else int(row[0])

    def count(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM bars").fetchone()[0])

    def steps(self, after: int | None) -> Iterator[tuple[int, list[Bar]]]:
        """The logged steps with a timestamp after ``after`` (all when None), in time order."""
        cursor = self.connection.execute(
            f"SELECT timestamp, symbol, {', '.join(NUMERIC)} FROM bars WHERE timestamp > ? ORDER BY timestamp, rowid",
            (after if after is not None else np.iinfo(np.int64).min,))
        current: int | None = None
        step: list[Bar] = []
        for row in cursor:
            if row[0] != current and step:
                yield current, step  # type: ignore[misc]
                step = []
            current = row[0]
            values = {c: v for c, v in zip(NUMERIC, row[2:], strict=True) if v is not None}
            step.append(Bar(line=0, timestamp_ns=row[0], symbol=row[1], values=values))
        if step:
            yield current, step  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The streamer
# --------------------------------------------------------------------------------------------


class Streamer:
    """Validated bars -> incremental features -> online store, with a bar log for restarts."""

    def __init__(self, features: FeatureParams, store_params: FeatureStoreParams, store: OnlineStore, bar_log: BarLog,
                 *, on_bad_bar: OnBadBar = "stop", naive_timezone: str = "UTC",
                 regime_model: RegimeModel | None = None, suspensions: SuspensionRule | None = None) -> None:
        self.params = features
        self.suspensions = suspensions
        self.store_params = store_params
        self.store = store
        self.bar_log = bar_log
        self.on_bad_bar = on_bad_bar
        self.naive_timezone = naive_timezone
        self.regime_model = regime_model if features.regimes else None
        n_regimes = self.regime_model.params.n_regimes if self.regime_model is not None else 0
        self.names = plan_for(features, columns=set(store_params.bar_columns), multi_symbol=store_params.multi_symbol,
                              intraday=store_params.intraday, n_regimes=n_regimes)
        self.engine = IncrementalEngine(features, self.names, regime_model=self.regime_model, suspensions=suspensions)
        # vectors name the regime model behind their regime_prob_* (the service checks it against its own)
        self.stored_version = stored_feature_version(
            FEATURE_VERSION, self.regime_model if any(n.startswith("regime_prob_") for n in self.names) else None)
        self.required = [c for c in self.engine.input_columns if c != "close"] + ["close"]
        self.resume_after: int | None = None
        self._steps_since_checkpoint = 0
        self.summary = StreamSummary()

    def resume(self) -> None:
        """Rebuild the engine from the log: the saved state, then the logged steps after it (rewritten to the store)."""
        saved = self.bar_log.checkpoint()
        after = None
        if saved is not None and saved[1] == self.engine.fingerprint():
            self.engine = IncrementalEngine.from_state_bytes(self.params, self.names, saved[2],
                                                             regime_model=self.regime_model,
                                                             suspensions=self.suspensions)
            after = saved[0]
        elif saved is not None:
            log.warning("stream: the saved engine state was made with other feature definitions; rebuilding from "
                        "every logged bar")
        for timestamp_ns, bars in self.bar_log.steps(after):
            self._compute_and_store(timestamp_ns, bars)
            self.summary.replayed_steps += 1
        self.resume_after = self.bar_log.last_timestamp()
        if self.resume_after is not None:
            log.info("stream: resumed from %s (%d logged steps replayed after the saved state); bars up to %s are "
                     "already stored and will be skipped", self.bar_log.path, self.summary.replayed_steps,
                     pd.Timestamp(self.resume_after, tz="UTC"))

    def _compute_and_store(self, timestamp_ns: int, bars: list[Bar]) -> None:
        columns = {c: np.array([b.values.get(c, np.nan) for b in bars]) for c in self.engine.input_columns}
        symbols = [b.symbol for b in bars]
        values = self.engine.update(timestamp_ns, symbols, columns)
        self.store.write(timestamp_ns, symbols, self.names, values, self.stored_version)

    def _flush(self, timestamp_ns: int, bars: list[Bar]) -> None:
        self._compute_and_store(timestamp_ns, bars)
        self._steps_since_checkpoint += 1
        state = None
        if self._steps_since_checkpoint >= self.store_params.checkpoint_every:
            state = (self.engine.fingerprint(), self.engine.state_bytes())
            self._steps_since_checkpoint = 0
        self.bar_log.append(timestamp_ns, bars, state)
        self.summary.steps += 1
        self.summary.bars += len(bars)
        self.summary.last_timestamp = str(pd.Timestamp(timestamp_ns, tz="UTC"))

    def _bad(self, message: str) -> None:
        if self.on_bad_bar == "stop":
            raise BarError(message)
        log.warning("stream: skipping a bad bar: %s", message)
        self.summary.bad_bars += 1
        if len(self.summary.errors) < 100:
            self.summary.errors.append(message)

    def feed(self, records: Iterable[tuple[int, object]], *, pace_seconds: float = 0.0,
             progress_every_seconds: float = 10.0) -> StreamSummary:
        """Validate, group by timestamp and process ``records``: (line, column dict or error message) pairs,
        and ``(0, None)`` when the input has been idle (the pending timestamp is then written)."""
        last_per_symbol = {s: int(t) for s, t in zip(self.engine.symbols, self.engine.last_ns, strict=False)}
        pending: int | None = None  # the timestamp of the bars in `step`
        written: int | None = None  # the last timestamp written
        step: list[Bar] = []
        next_progress = time.monotonic() + progress_every_seconds

        def flush() -> None:
            nonlocal step, written, next_progress
            self._flush(pending, step)  # type: ignore[arg-type]
            for done in step:
                last_per_symbol[done.symbol] = pending  # type: ignore[assignment]
            step, written = [], pending
            if pace_seconds:
                time.sleep(pace_seconds)
            if time.monotonic() >= next_progress:
                log.info("stream: %d steps, %d bars, last %s", self.summary.steps, self.summary.bars,
                         self.summary.last_timestamp)
                next_progress = time.monotonic() + progress_every_seconds

        for line, record in records:
            if record is None:
                if step:
                    flush()
                continue
            if isinstance(record, str):
                self._bad(record)
                continue
            try:
                bar = validate_bar(record, line, self.required, self.naive_timezone)  # type: ignore[arg-type]
            except BarError as err:
                self._bad(str(err))
                continue
            if self.resume_after is not None and bar.timestamp_ns <= self.resume_after:
                self.summary.already_stored += 1
                continue
            stamp = pd.Timestamp(bar.timestamp_ns, tz="UTC")
            if (written is not None and bar.timestamp_ns <= written) or (step and bar.timestamp_ns < pending):
                self._bad(f"line {line}: column 'timestamp': rule time_order: {stamp} is not after the timestamp "
                          f"{pd.Timestamp(pending, tz='UTC')} already received{' and written' if not step else ''} "
                          "(bars must come in time order, grouped by timestamp)")
                continue
            previous = last_per_symbol.get(bar.symbol)
            if (previous is not None and bar.timestamp_ns <= previous) or (
                    step and bar.timestamp_ns == pending and any(b.symbol == bar.symbol for b in step)):
                self._bad(f"line {line}: symbol {bar.symbol!r}: rule time_increases_per_symbol: a bar at {stamp} is "
                          "not after the symbol's previous bar")
                continue
            if step and bar.timestamp_ns > pending:
                flush()
            pending = bar.timestamp_ns
            step.append(bar)
        if step:
            flush()
        # the state at the end, so a restart replays nothing
        if self._steps_since_checkpoint and written is not None:
            self.bar_log.append(written, [], (self.engine.fingerprint(), self.engine.state_bytes()))
            self._steps_since_checkpoint = 0
        return self.summary


def with_idle_markers(records: Iterator[tuple[int, object]], idle_seconds: float) -> Iterator[tuple[int, object]]:
    """``records`` read in a background thread, with ``(0, None)`` after every ``idle_seconds`` without one,
    so that a live stream writes a timestamp's features without waiting for the next timestamp's bars."""
    items: queue.Queue[tuple[int, object] | BaseException | None] = queue.Queue(maxsize=100_000)

    def pump() -> None:
        try:
            for item in records:
                items.put(item)
        except BaseException as err:  # handed to the consumer, which raises it
            items.put(err)
        finally:
            items.put(None)

    threading.Thread(target=pump, name="alphaforge-stream-reader", daemon=True).start()
    while True:
        try:
            item = items.get(timeout=idle_seconds)
        except queue.Empty:
            yield 0, None
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def run_stream(features: FeatureParams, store_params: FeatureStoreParams, source: str, *,
               fmt: Literal["auto", "jsonl", "csv"] = "auto", on_bad_bar: OnBadBar = "stop", pace_seconds: float = 0.0,
               naive_timezone: str = "UTC", stdin: TextIO | None = None, flush_idle_seconds: float = 1.0,
               regime_model: RegimeModel | None = None, suspensions: SuspensionRule | None = None) -> StreamSummary:
    """Stream ``source`` (a CSV/Parquet path, or ``-`` for stdin lines) into the store of ``store_params``.

    ``regime_model`` (``features.regimes`` on): the regime probabilities are stored with the other features.
    ``suspensions``: a symbol's features restart where validate would split its series (a long suspension or
    a market closure), as the batch features do.

    On stdin, a timestamp's bars are written when the next timestamp begins, at the end of the input,
    or after ``flush_idle_seconds`` without a new line (0: never on idleness); a bar for a timestamp
    already written is then refused (rule time_order).
    """
    import sys

    store = OnlineStore.from_params(store_params)
    bar_log = BarLog(Path(store_params.bar_log))
    try:
        streamer = Streamer(features, store_params, store, bar_log, on_bad_bar=on_bad_bar,
                            naive_timezone=naive_timezone, regime_model=regime_model, suspensions=suspensions)
        log.info("stream: %d features (version %s) -> %s%s; bar log %s", len(streamer.names), FEATURE_VERSION,
                 store.backend, f" {store.url} prefix {store.key_prefix!r}" if store.url else "", bar_log.path)
        if not store.url:
            log.warning("stream: feature_store.redis_url is not set: the features live in this process only")
        streamer.resume()
        if source == "-":
            records = lines_to_records(stdin or sys.stdin, fmt)
            if flush_idle_seconds > 0:
                records = with_idle_markers(records, flush_idle_seconds)
        else:
            records = file_records(Path(source))
        summary = streamer.feed(records, pace_seconds=pace_seconds)
    finally:
        bar_log.close()
    log.info("stream: done: %d steps, %d bars, %d already stored, %d bad, last %s", summary.steps, summary.bars,
             summary.already_stored, summary.bad_bars, summary.last_timestamp)
    return summary
