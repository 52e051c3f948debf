"""Ingest: every bundled source lands in the canonical schema; user files are read faithfully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphaforge.data.ingest import IngestParams, load_source, read_bars_file
from alphaforge.data.synthetic import SyntheticParams
from alphaforge.io import write_parquet_atomic
from alphaforge.schema import CANONICAL_ORDER, DataError


@pytest.mark.parametrize(
    "source,has_ohlc",
    [("skfolio_sp500", False), ("bokeh_stocks", True), ("arch_sp500", True), ("backtesting_goog", True),
     ("backtesting_eurusd", True), ("synthetic", True)],
)
def test_sources_are_canonical(source: str, has_ohlc: bool) -> None:
    bars = load_source(IngestParams(source=source, synthetic=SyntheticParams(n_symbols=3, n_bars=100)))
    assert list(bars.columns) == [c for c in CANONICAL_ORDER if c in bars.columns]
    assert str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert ("open" in bars.columns) is has_ohlc  # columns a source lacks are absent, not invented
    assert not bars.duplicated(["symbol", "timestamp"]).any()
    ordered = bars.sort_values(["symbol", "timestamp"], kind="stable")
    assert ordered.index.equals(bars.index)
    assert (bars["close"] > 0).all()


def test_bokeh_prices_are_split_adjusted() -> None:
    aapl = load_source(IngestParams(source="bokeh_stocks", symbols=("AAPL",), start="2005-02-20", end="2005-03-05"))
    jumps = np.log(aapl["close"]).diff().abs()
    assert jumps.max() < 0.2  # the 2005 2:1 split would show as a -69% bar unadjusted
    assert (aapl["low"] <= aapl[["open", "close"]].min(axis=1) + 1e-9).all()


def test_slicing_by_dates_and_symbols() -> None:
    bars = load_source(IngestParams(source="skfolio_sp500", start="2020-01-01", end="2020-12-31", symbols=("AAPL", "KO")))
    assert set(bars["symbol"]) == {"AAPL", "KO"}
    assert bars["timestamp"].min() >= pd.Timestamp("2020-01-01", tz="UTC")
    assert bars["timestamp"].max() <= pd.Timestamp("2020-12-31", tz="UTC")
    with pytest.raises(DataError, match=r"\['NOPE'\] not in source"):
        load_source(IngestParams(source="skfolio_sp500", symbols=("NOPE",)))


def test_user_csv_with_offsets_is_read_to_utc_and_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "Timestamp,Symbol,Close,Volume,extra\n"
        "2024-01-02T09:30:00-05:00,B,10.0,100,x\n"
        "2024-01-02T09:31:00-05:00,A,20.0,50,x\n"
        "2024-01-02T09:29:00-05:00,B,10.5,120,x\n"
    )
    bars = read_bars_file(path)
    assert list(bars.columns) == ["timestamp", "symbol", "close", "volume"]
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2024-01-02 14:31", tz="UTC")
    # B's rows keep their file order (time going backwards stays visible to validation)
    b_rows = bars[bars["symbol"] == "B"]["timestamp"].tolist()
    assert b_rows == [pd.Timestamp("2024-01-02 14:30", tz="UTC"), pd.Timestamp("2024-01-02 14:29", tz="UTC")]


def test_naive_timestamps_take_the_configured_zone(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("timestamp,symbol,close\n2024-03-01 16:00,X,1.0\n")
    bars = read_bars_file(path, naive_timezone="America/New_York")
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2024-03-01 21:00", tz="UTC")


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "rule non_empty"),
        ("timestamp,symbol,close\nnot-a-date,X,1.0\n", r"column 'timestamp', row 0.*not a timestamp"),
        ("timestamp,symbol,close\n2024-01-01T00:00:00+00:00,X,1\n2024-01-02,X,2\n", "row 1.*no time zone"),
        ("timestamp,symbol,close,Close\n2024-01-01,X,1,2\n", "unique_columns"),
    ],
)
def test_unreadable_files_are_refused_with_the_reason(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_bars_file(path)


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_bars_file(tmp_path / "nope.csv")
    (tmp_path / "bars.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        read_bars_file(tmp_path / "bars.xlsx")


def test_parquet_round_trip_is_atomic(tmp_path: Path, bokeh_bars: pd.DataFrame) -> None:
    target = tmp_path / "out" / "bars.parquet"
    write_parquet_atomic(bokeh_bars, target)
    pd.testing.assert_frame_equal(read_bars_file(target), bokeh_bars)
    assert [p.name for p in target.parent.iterdir()] == ["bars.parquet"]


def test_synthetic_plants_a_known_signal() -> None:
    from alphaforge.data.synthetic import make_synthetic

    bars, truth = make_synthetic(SyntheticParams(n_symbols=20, n_bars=800, seed=3))
    log_close = np.log(bars["close"].to_numpy()).reshape(20, 800)
    next_return = np.diff(log_close, axis=1)
    expected = truth["expected_return_1"].to_numpy().reshape(20, 800)[:, :-1]
    assert np.corrcoef(expected.ravel(), next_return.ravel())[0, 1] > 0.05
    assert set(truth["regime"].unique()) == {0, 1}
    again, _ = make_synthetic(SyntheticParams(n_symbols=20, n_bars=800, seed=3))
    pd.testing.assert_frame_equal(bars, again)
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
