"""The validation stage accepts clean real market data and names the rule, column and row of each corruption.

Corrupted inputs are built here from small slices of real data (bokeh OHLCV, skfolio
closes, backtesting's GOOG) and, for the user-file failure modes, written to a CSV in
tmp_path and read back through ``read_bars_file``, as the ingest stage would.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from alphaforge.data.ingest import IngestParams, load_source, read_bars_file
from alphaforge.schema import DataError
from alphaforge.validate import (
    RuleResult,
    ValidationFailed,
    ValidationParams,
    ValidationReport,
    validate_bars,
    write_report,
)

PARAMS = ValidationParams()
CORRUPT_ROW = 17  # a row well inside the first symbol of each small slice
EVERY_ROW = -1  # expected count meaning "every row of the input"


@pytest.fixture(scope="module")
def ohlcv_slice() -> pd.DataFrame:
    """Two bokeh symbols, one quarter of daily OHLCV: 120 clean rows."""
    params = IngestParams(source="bokeh_stocks", symbols=("AAPL", "IBM"), start="2010-01-01", end="2010-03-31")
    return load_source(params)


@pytest.fixture(scope="module")
def close_only_slice() -> pd.DataFrame:
    """Two skfolio symbols, one quarter of adjusted closes (no OHLV columns)."""
    params = IngestParams(source="skfolio_sp500", symbols=("AAPL", "JPM"), start="2015-01-01", end="2015-03-31")
    return load_source(params)


def rule_result(report: ValidationReport, rule: str, column: str | None) -> RuleResult:
    matches = [r for r in report.results if r.rule == rule and r.column == column]
    assert len(matches) == 1, f"expected one result for {rule}[{column}], got {[r.label for r in report.results]}"
    return matches[0]


def same_value(reported: object, given: object) -> bool:
    """A value in a report (JSON-ready: ISO text for times, None for NaN) equals the input's value."""
    if isinstance(given, pd.Timestamp):
        return pd.Timestamp(reported) == given
    if pd.isna(given):
        return reported is None
    return reported == given


# --- clean real data ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["bokeh_stocks", "skfolio_sp500", "backtesting_goog"])
def test_clean_real_data_passes_every_error_rule(source: str) -> None:
    bars = load_source(IngestParams(source=source))
    report = validate_bars(bars, PARAMS, source=source)

    assert report.success, report.summary()
    assert report.failures == [] and report.skipped == []
    assert report.n_rows == len(bars) and report.n_symbols == bars["symbol"].nunique()
    evaluated = {r.label for r in report.results}
    expected = {"unique_symbol_timestamp", "increasing_time[timestamp]", "suspension[timestamp]",
                "market_closure[timestamp]", "finite_values[close]",
                "positive_prices[close]", "nan_budget[close]", "dtype[close]", "extreme_move[close]"}
    if "high" in bars.columns:
        expected |= {"low_le_open_close[low]", "high_ge_open_close[high]", "non_negative_volume[volume]"}
    assert expected <= evaluated
    # Real data does hold one-bar moves beyond 50% (AAPL's 2000-09-29 crash in bokeh and skfolio):
    # they are warnings that name the symbol and date, never failures.
    for warning in report.warnings:
        assert warning.rule == "extreme_move"
        assert all(abs(e["log_return"]) > PARAMS.extreme_move for e in warning.examples)
    if source != "backtesting_goog":
        crash = [e for w in report.warnings for e in w.examples if e["symbol"] == "AAPL"]
        assert [e["timestamp"][:10] for e in crash] == ["2000-09-29"]
        assert bars.iloc[crash[0]["row"]]["timestamp"] == pd.Timestamp("2000-09-29", tz="UTC")


def test_split_like_jump_is_a_warning_and_the_stage_passes() -> None:
    goog = load_source(IngestParams(source="backtesting_goog")).iloc[:120].copy()
    split_row = 60
    goog.loc[split_row:, ["open", "high", "low", "close"]] /= 2.0  # an unadjusted 2-for-1 split
    goog.loc[split_row:, "volume"] *= 2

    report = validate_bars(goog, PARAMS, source="goog_with_split")

    assert report.success, report.summary()
    (warning,) = report.warnings
    assert (warning.rule, warning.column, warning.severity) == ("extreme_move", "close", "warning")
    assert warning.unexpected_count == 1
    assert warning.examples[0]["row"] == split_row
    expected_return = math.log(goog["close"].iloc[split_row] / goog["close"].iloc[split_row - 1])
    assert warning.examples[0]["log_return"] == pytest.approx(expected_return)
    report.raise_if_failed()  # a warning alone does not raise


# --- corrupted inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """How to break a clean slice, and what the report must say about it."""

    build: Callable[[pd.DataFrame, Path], pd.DataFrame]
    base: str  # "ohlcv" or "close_only"
    rule: str
    column: str | None
    count: int | None  # EVERY_ROW: all rows of the corrupted input
    rows: list[int]
    failing: set[str]  # exact set of failed error rules (labels), so nothing else breaks by accident
    skipped: set[str] = field(default_factory=set)  # rules that must be reported as not evaluated
    example_values: dict[str, object] = field(default_factory=dict)


def via_csv(frame: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """Write a user's file and ingest it, as the pipeline would."""
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    return read_bars_file(path)


def duplicate_row(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    k = CORRUPT_ROW
    return via_csv(pd.concat([bars.iloc[: k + 1], bars.iloc[k : k + 1], bars.iloc[k + 1 :]]), tmp_path)


def time_backwards(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    order = list(range(len(bars)))
    order[CORRUPT_ROW], order[CORRUPT_ROW + 1] = order[CORRUPT_ROW + 1], order[CORRUPT_ROW]
    return via_csv(bars.iloc[order], tmp_path)


def negative_close(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    out = bars.copy()
    out.loc[CORRUPT_ROW, "close"] = -out.loc[CORRUPT_ROW, "close"]
    out.index = out.index + 1000  # reported rows are positions, not index labels
    return out


def high_below_low(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    out = bars.copy()
    out.loc[CORRUPT_ROW, "high"] = out.loc[CORRUPT_ROW, "low"] - 0.01
    return out


def nan_burst(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    out = bars.copy()
    out.loc[CORRUPT_ROW : CORRUPT_ROW + 9, "close"] = np.nan  # 10 of 120 rows, far over a 1% budget
    return out


def text_in_close(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    out = bars.astype({"close": object})
    out.loc[CORRUPT_ROW, "close"] = "abc"
    return via_csv(out, tmp_path)


def missing_close(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return bars.drop(columns="close")


def empty_frame(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return bars.iloc[0:0]


def negative_volume(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    out = bars.copy()
    out.loc[CORRUPT_ROW, "volume"] = -100.0
    return out


def naive_timestamps(bars: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return bars.assign(timestamp=bars["timestamp"].dt.tz_localize(None))


K = CORRUPT_ROW
CORRUPTIONS: dict[str, Corruption] = {
    "duplicate_row": Corruption(
        duplicate_row, "ohlcv", "unique_symbol_timestamp", None, 2, [K, K + 1],
        # the copy also stops time from strictly increasing
        {"unique_symbol_timestamp", "increasing_time[timestamp]"},
    ),
    "time_backwards": Corruption(
        time_backwards, "ohlcv", "increasing_time", "timestamp", 1, [K + 1], {"increasing_time[timestamp]"},
    ),
    "negative_price": Corruption(
        negative_close, "close_only", "positive_prices", "close", 1, [K], {"positive_prices[close]"},
    ),
    "high_below_low": Corruption(
        high_below_low, "ohlcv", "high_ge_open_close", "high", 1, [K], {"high_ge_open_close[high]"},
    ),
    "nan_burst": Corruption(
        nan_burst, "ohlcv", "nan_budget", "close", 10, [K, K + 1, K + 2, K + 3, K + 4], {"nan_budget[close]"},
    ),
    "text_in_close_csv": Corruption(
        text_in_close, "ohlcv", "dtype", "close", 1, [K], {"dtype[close]"},
        skipped={"positive_prices[close]", "nan_budget[close]", "low_le_open_close[low]", "extreme_move[close]"},
        example_values={"close": "abc"},
    ),
    "missing_column": Corruption(
        missing_close, "ohlcv", "required_columns", "close", None, [], {"required_columns[close]"},
        skipped={"positive_prices[close]", "nan_budget[close]", "high_ge_open_close[high]", "extreme_move[close]"},
    ),
    "empty_frame": Corruption(
        empty_frame, "ohlcv", "non_empty", None, None, [], {"non_empty"},
        skipped={"unique_symbol_timestamp", "increasing_time[timestamp]", "positive_prices[close]", "dtype[close]"},
    ),
    "negative_volume": Corruption(
        negative_volume, "ohlcv", "non_negative_volume", "volume", 1, [K], {"non_negative_volume[volume]"},
        example_values={"volume": -100.0},
    ),
    "naive_timestamp": Corruption(
        naive_timestamps, "close_only", "dtype", "timestamp", EVERY_ROW, [0, 1, 2, 3, 4], {"dtype[timestamp]"},
        skipped={"increasing_time[timestamp]", "suspension[timestamp]"},
    ),
}


@pytest.fixture(scope="module")
def corrupted_reports(
    ohlcv_slice: pd.DataFrame, close_only_slice: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[pd.DataFrame, ValidationReport]]:
    """Every corruption's input frame and report, validated once and shared by the tests below."""
    bases = {"ohlcv": ohlcv_slice, "close_only": close_only_slice}
    out = {}
    for name, case in CORRUPTIONS.items():
        assert len(bases[case.base]) > CORRUPT_ROW + 20
        frame = case.build(bases[case.base].copy(), tmp_path_factory.mktemp(name))
        out[name] = (frame, validate_bars(frame, PARAMS, source=f"{name}.csv"))
    return out


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_rejected_naming_rule_column_and_row(
    name: str, corrupted_reports: dict[str, tuple[pd.DataFrame, ValidationReport]]
) -> None:
    case = CORRUPTIONS[name]
    frame, report = corrupted_reports[name]

    assert not report.success
    assert {r.label for r in report.failures} == case.failing, report.summary()
    result = rule_result(report, case.rule, case.column)
    assert (result.success, result.severity) == (False, "error")
    assert result.unexpected_count == (len(frame) if case.count == EVERY_ROW else case.count)
    assert [e["row"] for e in result.examples] == case.rows
    for example in result.examples:  # the example's values are the input's values at that row
        for column in set(example) & set(frame.columns):
            assert same_value(example[column], frame[column].iloc[example["row"]]), (column, example)
    for column, value in case.example_values.items():
        assert result.examples[0][column] == value
    assert case.skipped <= {r.label for r in report.skipped}
    assert all(r.detail.startswith("not evaluated: ") for r in report.skipped)

    with pytest.raises(ValidationFailed) as raised:
        report.raise_if_failed()
    assert isinstance(raised.value, DataError) and raised.value.report is report
    message = str(raised.value)
    assert case.rule in message and f"{name}.csv" in message
    if case.column is not None:
        assert repr(case.column) in message
    for row in case.rows:
        assert f"row {row} " in message


def test_reports_are_written_atomically_as_json_and_escaped_html(
    corrupted_reports: dict[str, tuple[pd.DataFrame, ValidationReport]], tmp_path: Path
) -> None:
    frame, shared_report = corrupted_reports["text_in_close_csv"]
    report = dataclasses.replace(shared_report, source="<user & file>.csv")
    json_path, html_path = tmp_path / "out" / "result.json", tmp_path / "out" / "index.html"

    write_report(report, json_path, html_path)

    assert sorted(p.name for p in json_path.parent.iterdir()) == ["index.html", "result.json"]  # no temp files left
    loaded = json.loads(json_path.read_text())
    assert loaded == report.to_json()
    assert loaded["success"] is False and loaded["n_rows"] == len(frame)
    dtype_close = [r for r in loaded["results"] if r["rule"] == "dtype" and r["column"] == "close"]
    assert dtype_close[0]["examples"][0]["row"] == CORRUPT_ROW
    gx = loaded["great_expectations"]
    assert gx["success"] is False
    gx_metas = [r["expectation_config"]["meta"] for r in gx["results"]]
    gx_rules = {(meta["rule"], meta["column"]) for meta in gx_metas}
    assert ("dtype", "close") in gx_rules and ("unique_symbol_timestamp", None) in gx_rules

    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "&lt;user &amp; file&gt;.csv" in page and "<user & file>" not in page
    assert "FAIL" in page and "<code>dtype</code>" in page and "SKIPPED" in page
    assert f"<td>{CORRUPT_ROW}</td><td>" in page and "abc" in page


def test_report_escapes_values_from_the_data(ohlcv_slice: pd.DataFrame, tmp_path: Path) -> None:
    bars = ohlcv_slice.astype({"close": object})
    bars.loc[3, "close"] = "<script>alert(1)</script>"
    report = validate_bars(via_csv(bars, tmp_path), PARAMS, source="hostile.csv")

    page = report.to_html()

    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert rule_result(report, "dtype", "close").examples[0]["row"] == 3


def test_params_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ValidationParams(nan_budgett=0.1)
    with pytest.raises(ValidationError, match="max_closure"):
        ValidationParams(max_closure="ten days")
    with pytest.raises(ValidationError, match="positive"):
        ValidationParams(max_closure="-1D")
    with pytest.raises(ValidationError):
        ValidationParams(nan_budget=1.5)
    with pytest.raises(ValidationError, match="policy"):
        ValidationParams(policy="drop")
    assert ValidationParams(max_closure="90min").max_closure_days == pytest.approx(90 / 1440)
