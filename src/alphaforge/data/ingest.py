"""Bring bars from a source into the canonical long schema (see :mod:`alphaforge.schema`).

Sources ship inside installed packages (no download at run time) or are a user's
CSV/Parquet file. Columns a source lacks are left out, never invented. Bundled
sources come sorted by (symbol, timestamp); a user's file keeps its own row order
within each symbol, so that validation can see time going backwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.schema import CANONICAL_ORDER, DataError, canonical_columns

log = logging.getLogger(__name__)

SourceName = Literal[
    "skfolio_sp500", "bokeh_stocks", "arch_sp500", "backtesting_goog", "backtesting_eurusd", "synthetic", "file"
]
SOURCES: dict[str, str] = {
    "skfolio_sp500": "20 US large caps, daily adjusted close only, 1990-2022 (skfolio)",
    "bokeh_stocks": "AAPL, IBM, MSFT, GOOG daily OHLCV 2000-2013, split/dividend adjusted (bokeh_sampledata)",
    "arch_sp500": "S&P 500 index daily OHLCV 1999-2018 (arch)",
    "backtesting_goog": "GOOG daily OHLCV 2004-2013 (backtesting.py)",
    "backtesting_eurusd": "EURUSD hourly OHLCV 2017-2018 (backtesting.py)",
    "synthetic": "N symbols x T bars with a planted predictive component and regime switches",
    "file": "your CSV or Parquet file in the canonical long schema (ingest.path)",
}


class IngestParams(BaseModel):
    """Which source to read and which slice of it to keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceName = "skfolio_sp500"
    path: str | None = None
    start: str | None = None
    end: str | None = None
    symbols: tuple[str, ...] | None = None
    naive_timezone: str = Field("UTC", description="time zone assumed for timestamps written without one")
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
        frame["symbol"] = frame["symbol"].astype(str)
        frame = frame.iloc[np.argsort(frame["symbol"].to_numpy(), kind="stable")]
    return frame.reset_index(drop=True)


def _parse_timestamps(values: pd.Series, path: Path, naive_timezone: str) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values):
        return values.dt.tz_localize(naive_timezone).dt.tz_convert("UTC")
    text = values.astype(str).str.strip()
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() | values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column 'timestamp', row {row}: value {values.iloc[row]!r} is not a timestamp "
            "(rule dtype; use ISO 8601, e.g. 2024-01-31 or 2024-01-31T15:30:00+00:00)"
        )
    has_zone = text.str.contains(r"(?:[+-]\d\d:?\d\d|Z|UTC)$", regex=True)
    if has_zone.all():
        return parsed
    if has_zone.any():
        row = int(np.flatnonzero(~has_zone)[0])
        raise DataError(
            f"{path}: column 'timestamp', row {row}: {values.iloc[row]!r} has no time zone while other rows "
            "do (rule dtype); write every timestamp with its offset, or none"
        )
    naive = pd.to_datetime(text, format="mixed")
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
            "synthetic": lambda: make_synthetic(params.synthetic)[0],
        }
        bars = loaders[params.source]()
        bars = bars.sort_values(["symbol", "timestamp"], kind="stable")
        bars = bars[canonical_columns(list(bars.columns))]
    bars = _slice(bars, params)
    return bars.reset_index(drop=True)


def _slice(bars: pd.DataFrame, params: IngestParams) -> pd.DataFrame:
    if params.symbols:
        missing = sorted(set(params.symbols) - set(bars["symbol"].unique()))
        if missing:
            raise DataError(f"ingest.symbols: {missing} not in source {params.source!r}")
        bars = bars[bars["symbol"].isin(params.symbols)]
    if "timestamp" in bars.columns and isinstance(bars["timestamp"].dtype, pd.DatetimeTZDtype):
        if params.start:
            bars = bars[bars["timestamp"] >= pd.Timestamp(params.start, tz="UTC")]
        if params.end:
            bars = bars[bars["timestamp"] <= pd.Timestamp(params.end, tz="UTC")]
    if bars.empty:
        raise DataError(
            f"ingest: source {params.source!r} has no rows between start={params.start} and end={params.end}"
            f" for symbols={params.symbols}"
        )
    return bars


