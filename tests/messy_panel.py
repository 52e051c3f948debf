"""A messy real panel, as a user's export would arrive: built from the bundled bokeh OHLCV (5 symbols, 2000-2013).

What is done to it, and what the pipeline must make of it:

* staggered listings and a delisting: GOOG lists in 2004 and FB in May 2012 (as in the source: FB has
  under 200 bars, too few for a model that needs a year of history), IBM is delisted at mid-2011; so
  symbols enter and leave the panel (a survivorship-free universe);
* a multi-year suspension: MSFT has no bars from 2006 to mid-2008 (its series is split there);
* a market-wide holiday: no symbol has a bar for two weeks around the 2009/2010 year end (no gap);
* an export in overlapping chunks: a quarter of AAPL rows repeated after AAPL's last row (a step back in
  time), most of them exact copies, three with corrected prices (the later chunk wins: dedupe_keep last);
* row-level faults, each in :data:`FAULTS` with the rule that must catch it: OHLC-inconsistent rows, negative
  volume, an empty symbol, an infinite close, a missing timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alphaforge.data.ingest import IngestParams, load_source

HOLIDAY = (pd.Timestamp("2009-12-21", tz="UTC"), pd.Timestamp("2010-01-04", tz="UTC"))
SUSPENSION = (pd.Timestamp("2006-01-01", tz="UTC"), pd.Timestamp("2008-06-30", tz="UTC"))
IBM_DELISTS = pd.Timestamp("2011-06-30", tz="UTC")
OVERLAP = (pd.Timestamp("2012-01-03", tz="UTC"), pd.Timestamp("2012-03-30", tz="UTC"))
CORRECTED_ROWS = 3  # rows of the repeated chunk whose prices differ (corrected) from the first export


@dataclass(frozen=True)
class Fault:
    """One row-level fault planted in the panel: where, what, and the rule label that must catch it."""

    symbol: str
    day: str
    column: str
    value: float | None
    rule: str


FAULTS: tuple[Fault, ...] = (
    Fault("IBM", "2005-03-15", "high", "low", "high_ge_open_close[high]"),    # high set to the low
    Fault("AAPL", "2007-05-10", "low", "high", "low_le_open_close[low]"),     # low set to the high
    Fault("GOOG", "2010-08-16", "high", "low", "high_ge_open_close[high]"),
    Fault("FB", "2012-08-16", "volume", -1500.0, "non_negative_volume[volume]"),
    Fault("MSFT", "2011-09-20", "volume", -10.0, "non_negative_volume[volume]"),
    Fault("AAPL", "2009-03-05", "symbol", None, "non_null_key[symbol]"),       # the symbol cell left empty
    Fault("GOOG", "2007-11-06", "close", np.inf, "finite_values[close]"),
    Fault("IBM", "2002-06-03", "timestamp", None, "non_null_key[timestamp]"),  # the timestamp cell left empty
)


def clean_panel() -> pd.DataFrame:
    """The bundled bokeh panel with listings, a delisting, a suspension and a market-wide holiday."""
    bars = load_source(IngestParams(source="bokeh_stocks"))
    ts, symbol = bars["timestamp"], bars["symbol"]
    keep = ~((symbol == "IBM") & (ts > IBM_DELISTS))
    keep &= ~((symbol == "MSFT") & ts.between(*SUSPENSION))
    keep &= ~ts.between(*HOLIDAY)
    return bars[keep].reset_index(drop=True)


def plant_faults(bars: pd.DataFrame, faults: tuple[Fault, ...] = FAULTS) -> pd.DataFrame:
    """``bars`` with each fault written into its row (the row must exist)."""
    out = bars.copy()
    out["symbol"] = out["symbol"].astype(object)
    for fault in faults:
        row = out.index[(out["symbol"] == fault.symbol) & (out["timestamp"] == pd.Timestamp(fault.day, tz="UTC"))]
        assert len(row) == 1, fault
        if isinstance(fault.value, str):  # another column of the same row: breaks the OHLC bracket
            out.loc[row, fault.column] = out.loc[row, fault.value].to_numpy()
        else:
            out.loc[row, fault.column] = fault.value
    return out


def messy_panel() -> pd.DataFrame:
    """The whole messy export, in file order: the faults, then the overlapping AAPL chunk after AAPL's rows."""
    bars = plant_faults(clean_panel())
    aapl = bars["symbol"] == "AAPL"
    chunk = bars[aapl & bars["timestamp"].between(*OVERLAP)].copy()
    corrected = chunk.index[:CORRECTED_ROWS]
    chunk.loc[corrected, ["open", "high", "low", "close"]] *= 1.001
    last_aapl = bars.index[aapl][-1]
    return pd.concat([bars.loc[:last_aapl], chunk, bars.loc[last_aapl + 1:]], ignore_index=True)


def write_messy_csv(path: Path) -> Path:
    """The messy panel as a user's CSV file (ISO timestamps, an empty cell for the missing symbol, ``inf``)."""
    frame = messy_panel()
    frame = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%d"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def expected_quarantine() -> set[tuple[str | None, str, str]]:
    """(symbol or None, day, rule label) of every row the quarantine must hold, and nothing else."""
    return {(None if f.column == "symbol" else f.symbol, None if f.column == "timestamp" else f.day, f.rule)
            for f in FAULTS}
