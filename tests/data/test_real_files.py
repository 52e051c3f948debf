"""Real files flow through: explicit repairs, a quarantine instead of a dead end, the market's own calendar,
listings and delistings. Built on the bundled bokeh panel, made messy in tests/messy_panel.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers

from messy_panel import FAULTS, CORRECTED_ROWS, clean_panel, expected_quarantine, plant_faults, write_messy_csv  # noqa: E402

from alphaforge.data.ingest import IngestParams, RepairParams, load_source, repair_bars  # noqa: E402
from alphaforge.risk import RiskParams, compare_risk_panel  # noqa: E402
from alphaforge.validate import (  # noqa: E402
    MISSING_SYMBOL,
    ValidationParams,
    as_series,
    assign_segments,
    quarantine_rows,
    validate_bars,
)

QUARANTINE = ValidationParams(policy="quarantine")
REPAIRS = RepairParams(sort=True, drop_exact_duplicates=True, dedupe_keep="last")


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return clean_panel()


@pytest.fixture(scope="module")
def messy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_messy_csv(tmp_path_factory.mktemp("messy") / "messy.csv")


@pytest.fixture(scope="module")
def repaired(messy_file: Path) -> pd.DataFrame:
    return repair_bars(load_source(IngestParams(source="file", path=str(messy_file))), REPAIRS).bars


def keys_of(rows: pd.DataFrame) -> set[tuple[str | None, str | None, str]]:
    return {(None if pd.isna(r.symbol) else r.symbol, None if pd.isna(r.timestamp) else r.timestamp.strftime("%Y-%m-%d"),
             rule) for r in rows.itertuples() for rule in r.rules.split("; ")}


# --- each row-level fault, alone, is caught by its own named rule -------------------------------------


def test_the_clean_panel_with_listings_a_suspension_and_a_holiday_passes(clean: pd.DataFrame) -> None:
    report = validate_bars(clean, ValidationParams(), source="clean")
    assert report.success, report.summary()
    assert {w.label for w in report.warnings} <= {"suspension[timestamp]", "extreme_move[close]"}
    suspension = [w for w in report.warnings if w.rule == "suspension"]
    assert [(e["symbol"], e["timestamp"][:10]) for e in suspension[0].examples] == [("MSFT", "2008-07-01")]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.rule + "-" + f.symbol for f in FAULTS])
def test_each_row_fault_alone_is_caught_by_its_own_rule(clean: pd.DataFrame, fault) -> None:
    bars = plant_faults(clean, (fault,))
    report = validate_bars(bars, ValidationParams(), source="one_fault.csv")

    assert {r.label for r in report.failures} == {fault.rule}, report.summary()
    (result,) = report.failures
    assert result.unexpected_count == 1 and len(result.rows) == 1
    assert f"ERROR rule {result.rule} column {result.column!r}: 1 row(s)" in report.summary()


def test_an_infinite_price_is_printed_as_inf_and_a_missing_symbol_never_becomes_nan(messy_file: Path) -> None:
    raw = load_source(IngestParams(source="file", path=str(messy_file)))
    assert "nan" not in set(raw["symbol"].dropna()) and raw["symbol"].isna().sum() == 1
    assert raw["timestamp"].isna().sum() == 1
    report = validate_bars(raw, ValidationParams(), source="messy.csv")
    finite = [r for r in report.failures if r.rule == "finite_values"][0]
    assert finite.examples[0]["close"] == "inf"
    assert "close=inf" in report.summary()
    assert report.n_symbols == 5  # the row without a symbol is not a sixth symbol
    assert report.to_json()["results"]  # strict JSON: no inf token
    import json
    json.dumps(report.to_json(), allow_nan=False)


# --- repairs ------------------------------------------------------------------------------------------


def test_repairs_are_off_by_default_but_count_what_they_would_change(messy_file: Path) -> None:
    raw = load_source(IngestParams(source="file", path=str(messy_file)))
    outcome = repair_bars(raw, RepairParams())
    assert len(outcome.bars) == len(raw) and outcome.dropped.empty
    assert outcome.counts["drop_exact_duplicates"] == {"allowed": False, "found": 59, "rows_dropped": 0}
    assert outcome.counts["dedupe_keep"]["found"] == CORRECTED_ROWS and outcome.counts["dedupe_keep"]["rows_dropped"] == 0
    assert outcome.counts["sort"]["found"] == 1 and outcome.counts["sort"]["rows_moved"] == 0
    report = validate_bars(outcome.bars, ValidationParams(), source="messy.csv")
    assert {"unique_symbol_timestamp", "increasing_time"} <= {r.rule for r in report.failures}


def test_allowed_repairs_remove_overlapping_chunks_and_keep_the_later_export(messy_file: Path) -> None:
    raw = load_source(IngestParams(source="file", path=str(messy_file)))
    outcome = repair_bars(raw, REPAIRS)
    counts = outcome.counts
    assert counts["drop_exact_duplicates"]["rows_dropped"] == 59
    assert counts["dedupe_keep"] == {"allowed": "last", "keys": CORRECTED_ROWS, "found": CORRECTED_ROWS,
                                     "rows_dropped": CORRECTED_ROWS}
    assert len(outcome.bars) == len(raw) - 59 - CORRECTED_ROWS
    assert len(outcome.dropped) == CORRECTED_ROWS and set(outcome.dropped["repair"]) == {"dedupe_keep=last"}
    kept = outcome.bars.set_index(["symbol", "timestamp"]).loc["AAPL"]
    for row in outcome.dropped.itertuples():  # the later (corrected) copy won
        assert kept.loc[row.timestamp, "close"] == pytest.approx(row.close * 1.001)
    keyed = outcome.bars.dropna(subset=["symbol", "timestamp"])
    assert not keyed.duplicated(["symbol", "timestamp"]).any()
    assert (keyed.groupby("symbol")["timestamp"].diff().dropna() > pd.Timedelta(0)).all()


# --- quarantine ---------------------------------------------------------------------------------------


def test_quarantine_holds_exactly_the_faulty_rows_with_their_rules(repaired: pd.DataFrame) -> None:
    report = validate_bars(repaired, QUARANTINE, source="messy.csv")
    kept, quarantine = quarantine_rows(repaired, report, QUARANTINE.max_quarantine_share)

    assert keys_of(quarantine.rows) == expected_quarantine()
    assert len(quarantine.rows) == len(FAULTS) and len(kept) + len(quarantine.rows) == len(repaired)
    assert quarantine.by_rule == {"non_null_key[timestamp]": 1, "non_null_key[symbol]": 1, "finite_values[close]": 1,
                                  "low_le_open_close[low]": 1, "high_ge_open_close[high]": 2,
                                  "non_negative_volume[volume]": 2}
    assert quarantine.by_symbol == {MISSING_SYMBOL: 1, "AAPL": 1, "FB": 1, "GOOG": 2, "IBM": 2, "MSFT": 1}
    assert quarantine.over_limit == []
    pd.testing.assert_frame_equal(  # the quarantined rows are the input's rows, unchanged
        quarantine.rows.drop(columns=["input_row", "rules"]),
        repaired.iloc[quarantine.rows["input_row"]].reset_index(drop=True))
    again = validate_bars(kept, QUARANTINE, source="kept")
    assert again.success, again.summary()


def test_quarantine_over_the_share_limit_is_reported_per_symbol(repaired: pd.DataFrame) -> None:
    report = validate_bars(repaired, QUARANTINE, source="messy.csv")
    _, quarantine = quarantine_rows(repaired, report, max_share=0.004)  # 8 of 11073 rows overall: 0.07%
    assert quarantine.over_limit == ["symbol 'FB': 1 rows (0.51%) quarantined"]  # FB has 196 bars
    _, strict = quarantine_rows(repaired, report, max_share=0.0005)
    assert strict.over_limit[0] == f"8 of {len(repaired)} rows (0.07%) quarantined overall"


# --- the market's own calendar ------------------------------------------------------------------------


def test_a_market_wide_holiday_is_no_gap_but_a_symbol_missing_while_others_trade_is(clean: pd.DataFrame) -> None:
    params = ValidationParams(max_gap_bars=5)
    gappy = clean.drop(clean.index[(clean["symbol"] == "IBM") & clean["timestamp"].between("2003-03-03", "2003-03-14")])
    report = validate_bars(gappy, params, source="gappy")
    suspended = {(e["symbol"], e["timestamp"][:10]) for w in report.warnings if w.rule == "suspension" for e in w.examples}
    assert ("IBM", "2003-03-17") in suspended and ("MSFT", "2008-07-01") in suspended
    assert not any(e["timestamp"][:10] == "2010-01-05" for w in report.warnings for e in w.examples)  # the holiday
    segments = assign_segments(gappy.sort_values(["symbol", "timestamp"]), params)
    assert segments.groupby(gappy["symbol"]).max().to_dict() == {"AAPL": 0, "FB": 0, "GOOG": 0, "IBM": 1, "MSFT": 1}


def test_one_symbol_with_a_multi_year_hole_is_split_by_a_market_closure() -> None:
    goog = load_source(IngestParams(source="backtesting_goog"))
    holed = goog[~goog["timestamp"].between("2007-01-01", "2008-12-31")].reset_index(drop=True)
    report = validate_bars(holed, ValidationParams(), source="goog")
    assert report.success and [w.rule for w in report.warnings if w.rule != "extreme_move"] == ["market_closure"]
    assert assign_segments(holed, ValidationParams()).max() == 1


@pytest.mark.parametrize("freq,drop_weekends", [("h", True), ("h", False), ("15min", True)])
def test_intraday_sessions_and_24_7_markets_have_no_gaps(freq: str, drop_weekends: bool) -> None:
    stamps = pd.date_range("2024-01-01", "2024-03-31", freq=freq, tz="UTC")
    if drop_weekends:  # a market with sessions: 08:00-16:00 on weekdays, closed nights and weekends
        stamps = stamps[(stamps.dayofweek < 5) & (stamps.hour >= 8) & (stamps.hour < 16)]
    rng = np.random.default_rng(0)
    frames = []
    for symbol in ("A", "B"):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, len(stamps))))
        frames.append(pd.DataFrame({"timestamp": stamps, "symbol": symbol, "close": close}))
    bars = pd.concat(frames, ignore_index=True)
    report = validate_bars(bars, ValidationParams(), source=freq)
    assert report.success and report.warnings == [], report.summary()
    assert assign_segments(bars, ValidationParams()).max() == 0


def test_a_weekly_symbol_in_a_daily_panel_counts_gaps_in_its_own_bars(clean: pd.DataFrame) -> None:
    weekly = clean[(clean["symbol"] != "IBM") | (clean["timestamp"].dt.dayofweek == 2)]
    report = validate_bars(weekly, ValidationParams(), source="weekly")
    suspended = {e["symbol"] for w in report.warnings if w.rule == "suspension" for e in w.examples}
    assert "IBM" not in suspended


def test_as_series_keeps_a_suspended_symbol_apart_and_in_order(clean: pd.DataFrame) -> None:
    bars = clean.assign(segment=assign_segments(clean, ValidationParams()).to_numpy())
    series = as_series(bars)
    assert set(series["symbol"]) == {"AAPL", "FB", "GOOG", "IBM", "MSFT", "MSFT\x1f1"}
    runs = series["symbol"].to_numpy()
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    assert list(runs[starts]) == sorted(runs[starts])


# --- listings and delistings --------------------------------------------------------------------------


def test_risk_skips_symbols_without_history_around_train_end_with_a_count(
    clean: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    bars = clean.assign(segment=assign_segments(clean, ValidationParams()).to_numpy())
    bars = bars[bars["timestamp"] >= "2009-01-01"]
    with caplog.at_level(logging.INFO, logger="alphaforge.risk"):
        metrics, forecasts = compare_risk_panel(bars, pd.Timestamp("2011-09-30", tz="UTC"), RiskParams())
    assert metrics["skipped"].keys() == {"FB", "IBM"}  # FB lists in 2012, IBM is delisted in mid-2011
    assert "listed too late" in metrics["skipped"]["FB"] and "delisted" in metrics["skipped"]["IBM"]
    assert metrics["n_symbols"] == 3 and metrics["n_skipped"] == 2
    assert set(forecasts["symbol"]) == {"AAPL", "GOOG", "MSFT"}
    assert "2 of 5 symbol(s) skipped" in caplog.text


# --- a file outside data/external/ ----------------------------------------------------------------------


@pytest.mark.parametrize("inside", [True, False])
def test_ingest_warns_once_when_dvc_does_not_track_the_file(
    inside: bool, messy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import shutil

    from alphaforge.config import Params
    from alphaforge.stages import ingest

    monkeypatch.chdir(tmp_path)
    target = Path("data/external/bars.csv") if inside else Path("elsewhere/bars.csv")
    target.parent.mkdir(parents=True)
    shutil.copy(messy_file, target)
    params = Params.model_validate({"ingest": {"source": "file", "path": str(target), "repair": REPAIRS.model_dump()}})
    with caplog.at_level(logging.INFO, logger="alphaforge"):
        ingest.run(params)
    warnings = [r for r in caplog.records if "will NOT rerun" in r.getMessage()]
    assert len(warnings) == (0 if inside else 1)
    summary = json.loads(Path("reports/ingest/summary.json").read_text())
    assert summary["path_tracked_by_dvc"] is inside
    assert summary["repairs"]["drop_exact_duplicates"]["rows_dropped"] == 59
    assert summary["rows_read"] - summary["rows"] == 59 + CORRECTED_ROWS
    assert len(pd.read_parquet("data/quarantine/duplicates.parquet")) == CORRECTED_ROWS
