"""The rules as a declarative table, and the plan that turns them into Great Expectations expectations over one
frame: one planner per rule group, each adding its checks or saying why a rule was skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.schema import NUMERIC_COLUMNS, REQUIRED_COLUMNS
from alphaforge.validate.calendar import calendar_gaps
from alphaforge.validate.params import KEY_COLUMNS, NON_NEGATIVE_COLUMNS, POSITIVE_COLUMNS, Severity, ValidationParams
from alphaforge.validate.report import RuleResult


@dataclass(frozen=True)
class Rule:
    """One validation rule: how bad breaking it is, and whether a single row breaks it on its own."""

    name: str
    severity: Severity
    row_level: bool
    checks: str


# The rules in report order. ``row_level``: with ``validate.policy: quarantine`` the offending rows are set
# aside instead of failing the stage. Warnings never fail it.
RULES: tuple[Rule, ...] = (
    Rule("required_columns", "error", False, "every canonical column is present"),
    Rule("non_empty", "error", False, "the frame has at least one row"),
    Rule("dtype", "error", False, "each column has its canonical type (row by row for mixed columns)"),
    Rule("non_null_key", "error", True, "timestamp and symbol are present and not blank"),
    Rule("unique_symbol_timestamp", "error", False, "each (symbol, timestamp) pair appears once"),
    Rule("increasing_time", "error", False, "timestamps strictly increase within each symbol, in row order"),
    Rule("finite_values", "error", True, "numeric values are not +-inf"),
    Rule("positive_prices", "error", True, "prices are > 0"),
    Rule("low_le_open_close", "error", True, "low <= min(open, close), with a relative slack"),
    Rule("high_ge_open_close", "error", True, "high >= max(open, close), with a relative slack"),
    Rule("non_negative_volume", "error", True, "volumes and sizes are >= 0"),
    Rule("nan_budget", "error", False, "at most validate.nan_budget of each numeric column is NaN"),
    Rule("suspension", "warning", False, "a symbol missed more than validate.max_gap_bars of its own bars"),
    Rule("market_closure", "warning", False, "the whole panel had no bar for longer than validate.max_closure"),
    Rule("extreme_move", "warning", False, "|one-bar log return| <= validate.extreme_move"),
)
RULE_SEVERITY: dict[str, Severity] = {rule.name: rule.severity for rule in RULES}
_RULE_ORDER: tuple[str, ...] = tuple(rule.name for rule in RULES)
# Rules a single row breaks on its own: with validate.policy quarantine, such rows are set aside, not fatal.
ROW_LEVEL_RULES: tuple[str, ...] = tuple(rule.name for rule in RULES if rule.row_level)


@dataclass
class _Check:
    """One planned rule: the GX expectation that evaluates it and how to read its result."""

    rule: str
    column: str | None
    severity: Severity
    expectation: Any
    detail: str
    example_columns: tuple[str, ...] = ()
    detail_from_result: Callable[[dict[str, Any]], str] | None = None


class _Plan:
    """The plan under construction: the GX checks, the rules skipped (and why), and the frame GX validates.

    ``gx_frame`` holds the present canonical columns plus the helper columns the checks read; ``unusable`` maps
    a column that failed a structural rule to the reason the rules on it cannot run; ``finite`` maps a numeric
    column to its helper with NaN for +-inf.
    """

    def __init__(self, frame: pd.DataFrame, params: ValidationParams) -> None:
        import great_expectations as gx

        self.frame = frame
        self.params = params
        self.expect = gx.expectations
        self.checks: list[_Check] = []
        self.skipped: list[RuleResult] = []
        self.present = [c for c in (*KEY_COLUMNS, *NUMERIC_COLUMNS) if c in frame.columns]
        self.gx_frame = frame[self.present].copy()
        self.unusable: dict[str, str] = {}
        self.finite: dict[str, str] = {}

    def add(self, rule: str, column: str | None, expectation: Any, detail: str, **how: Any) -> None:
        self.checks.append(_Check(rule, column, RULE_SEVERITY[rule], expectation, detail, **how))

    def skip(self, rule: str, column: str | None, reason: str) -> None:
        self.skipped.append(RuleResult(rule, column, RULE_SEVERITY[rule], False, None, [], f"not evaluated: {reason}",
                                       skipped=True))

    def usable(self, *columns: str) -> str | None:
        """None if every column can be evaluated, else the reason the first cannot."""
        for column in columns:
            if column not in self.frame.columns and column not in self.unusable:
                return f"column {column!r} is absent"
            if column in self.unusable:
                return self.unusable[column]
        return None


def _plan_structure(plan: _Plan) -> None:
    """required_columns and non_empty: they decide what the other rules can look at."""
    for column in REQUIRED_COLUMNS:
        plan.add("required_columns", column, plan.expect.ExpectColumnToExist(column=column),
                 f"column {column!r} is required by the canonical schema")
        if column not in plan.frame.columns:
            plan.unusable[column] = f"required column {column!r} is missing"
    plan.add("non_empty", None, plan.expect.ExpectTableRowCountToBeBetween(min_value=1),
             "the frame must have at least one row",
             detail_from_result=lambda r: f"the frame has {r.get('observed_value')} rows (at least one is needed)")


def _plan_dtypes(plan: _Plan) -> None:
    for column in plan.present:
        flags, why = _dtype_flags(plan.frame[column], column)
        if why and not (flags == False).any():  # noqa: E712 -- object column of True/False/None
            # the column's type is wrong even though each value looks fine: every row is offending
            flags = _flags(pd.Series(False, index=plan.frame.index), plan.frame[column].isna())
        helper = f"dtype_ok__{column}"
        plan.gx_frame[helper] = flags
        plan.add("dtype", column, plan.expect.ExpectColumnValuesToBeInSet(column=helper, value_set=[True]),
                 why or _EXPECTED_DTYPE.get(column, f"{column} must be numeric"), example_columns=(column,))
        if why:
            plan.unusable[column] = f"column {column!r} failed rule dtype"


def _plan_keys(plan: _Plan) -> None:
    for column in KEY_COLUMNS:
        if (reason := plan.usable(column)) is not None:
            plan.skip("non_null_key", column, reason)
            continue
        helper = f"present__{column}"
        values = plan.frame[column]
        if column == "symbol":  # a blank symbol is as missing as an empty cell
            values = values.where(values.isna() | (values.astype(str).str.strip() != ""), None)
        plan.gx_frame[helper] = values
        plan.add("non_null_key", column, plan.expect.ExpectColumnValuesToNotBeNull(column=helper),
                 f"{column} is part of the key and must not be missing or blank", example_columns=(column,))


def _plan_finite(plan: _Plan) -> None:
    """Non-finite values get their own rule; every other value rule sees only finite values (a helper column with
    NaN for +-inf), so an infinite price is reported once, as finite_values, never as a broken OHLC bracket."""
    for column in NUMERIC_COLUMNS:
        if column not in plan.frame.columns or plan.usable(column) is not None:
            continue
        values = plan.frame[column].astype(float)
        infinite = np.isinf(values.to_numpy())
        plan.finite[column] = f"finite__{column}"
        plan.gx_frame[plan.finite[column]] = values.where(~infinite)
        plan.gx_frame[f"finite_ok__{column}"] = _flags(pd.Series(~infinite, index=plan.frame.index), values.isna())
        plan.add("finite_values", column,
                 plan.expect.ExpectColumnValuesToBeInSet(column=f"finite_ok__{column}", value_set=[True]),
                 f"{column} must be finite (inf or -inf is not a number a model can use)", example_columns=(column,))


def _plan_time(plan: _Plan) -> None:
    """unique_symbol_timestamp, increasing_time, and the calendar's suspension and market_closure warnings."""
    if (reason := plan.usable("symbol", "timestamp")) is not None:
        for rule in ("unique_symbol_timestamp", "increasing_time", "suspension", "market_closure"):
            plan.skip(rule, None if rule == "unique_symbol_timestamp" else "timestamp", reason)
        return
    frame, gx_frame, params, expect = plan.frame, plan.gx_frame, plan.params, plan.expect
    plan.add("unique_symbol_timestamp", None,
             expect.ExpectCompoundColumnsToBeUnique(column_list=["symbol", "timestamp"]),
             "each (symbol, timestamp) pair must appear once (every copy is counted)")
    previous = frame.groupby("symbol", sort=False)["timestamp"].shift()
    gx_frame["previous_timestamp"] = previous
    gx_frame["gap_days"] = (frame["timestamp"] - previous) / pd.Timedelta(days=1)
    plan.add("increasing_time", "timestamp",
             expect.ExpectColumnValuesToBeBetween(column="gap_days", min_value=0, strict_min=True),
             "timestamps must strictly increase within each symbol, in row order",
             example_columns=("previous_timestamp", "timestamp"))
    calendar = calendar_gaps(frame, params)
    gx_frame["gap_bars"] = calendar["gap_bars"]
    gx_frame["crosses_closure"] = _flags(calendar["crosses_closure"], calendar["gap_bars"].isna())
    plan.add("suspension", "timestamp",
             expect.ExpectColumnValuesToBeBetween(column="gap_bars", max_value=params.max_gap_bars,
                                                  severity="warning"),
             f"a symbol missed more than {params.max_gap_bars:g} of its own bars while the rest of the panel "
             "traded (a suspension, a delisting and relisting, thin trading): its series is split there, "
             "features restart and no position is carried across",
             example_columns=("previous_timestamp", "timestamp", "gap_bars"))
    plan.add("market_closure", "timestamp",
             expect.ExpectColumnValuesToBeInSet(column="crosses_closure", value_set=[False], severity="warning"),
             f"the whole panel had no bar for more than {params.max_closure} between these two bars of a "
             "symbol: every series is split there",
             example_columns=("previous_timestamp", "timestamp"))


def _plan_positive_prices(plan: _Plan) -> None:
    for column in POSITIVE_COLUMNS:
        if column not in plan.frame.columns and column != "close":
            continue
        if (reason := plan.usable(column)) is not None:
            plan.skip("positive_prices", column, reason)
            continue
        plan.add("positive_prices", column,
                 plan.expect.ExpectColumnValuesToBeBetween(column=plan.finite[column], min_value=0, strict_min=True),
                 f"{column} must be > 0", example_columns=(column,))


def _plan_ohlc(plan: _Plan) -> None:
    """low <= min(open, close) and high >= max(open, close), each with a relative slack."""
    tolerance = plan.params.ohlc_tolerance
    body = [c for c in ("open", "close") if c in plan.frame.columns or c == "close"]
    for rule, column, helper, detail in (
        ("low_le_open_close", "low", "low_limit", f"low must be <= min(open, close) (relative slack {tolerance:g})"),
        ("high_ge_open_close", "high", "high_floor",
         f"high must be >= max(open, close) (relative slack {tolerance:g})"),
    ):
        if column not in plan.frame.columns:
            continue
        if (reason := plan.usable(column, *body)) is not None:
            plan.skip(rule, column, reason)
            continue
        sides = plan.gx_frame[[plan.finite[c] for c in body]]
        if column == "low":
            plan.gx_frame[helper] = sides.min(axis=1, skipna=False) * (1 + tolerance)
            pair = plan.expect.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=helper, column_B=plan.finite["low"], or_equal=True, ignore_row_if="either_value_is_missing")
        else:
            plan.gx_frame[helper] = sides.max(axis=1, skipna=False) * (1 - tolerance)
            pair = plan.expect.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=plan.finite["high"], column_B=helper, or_equal=True, ignore_row_if="either_value_is_missing")
        plan.add(rule, column, pair, detail, example_columns=(column, *body))


def _plan_non_negative(plan: _Plan) -> None:
    for column in NON_NEGATIVE_COLUMNS:
        if column not in plan.frame.columns:
            continue
        if (reason := plan.usable(column)) is not None:
            plan.skip("non_negative_volume", column, reason)
            continue
        plan.add("non_negative_volume", column,
                 plan.expect.ExpectColumnValuesToBeBetween(column=plan.finite[column], min_value=0),
                 f"{column} must be >= 0", example_columns=(column,))


def _plan_nan_budget(plan: _Plan) -> None:
    budget = plan.params.nan_budget
    for column in NUMERIC_COLUMNS:
        if column not in plan.frame.columns and column != "close":
            continue
        if (reason := plan.usable(column)) is not None:
            plan.skip("nan_budget", column, reason)
            continue
        plan.add("nan_budget", column, plan.expect.ExpectColumnValuesToNotBeNull(column=column, mostly=1.0 - budget),
                 f"at most {budget:.2%} of {column} may be NaN", example_columns=(column,),
                 detail_from_result=_nan_budget_detail(column, budget))


def _plan_extreme_move(plan: _Plan) -> None:
    if (reason := plan.usable("symbol", "close")) is not None:
        plan.skip("extreme_move", "close", reason)
        return
    close = plan.gx_frame[plan.finite["close"]]
    previous_close = close.groupby(plan.frame["symbol"], sort=False).shift()
    both_positive = (close > 0) & (previous_close > 0)
    plan.gx_frame["previous_close"] = previous_close
    plan.gx_frame["log_return"] = np.log(close.where(both_positive) / previous_close.where(both_positive))
    limit = plan.params.extreme_move
    plan.add("extreme_move", "close",
             plan.expect.ExpectColumnValuesToBeBetween(column="log_return", min_value=-limit, max_value=limit,
                                                       severity="warning"),
             f"|log(close_t / close_t-1)| above {limit:g} within a symbol: a split, a crash or a bad tick",
             example_columns=("previous_close", "close", "log_return"))


# The planners that need rows, in the order their checks are built (``_plan_finite`` before the value rules:
# they read its finite helper columns).
_ROW_PLANNERS: tuple[Callable[[_Plan], None], ...] = (
    _plan_dtypes, _plan_keys, _plan_finite, _plan_time, _plan_positive_prices, _plan_ohlc, _plan_non_negative,
    _plan_nan_budget, _plan_extreme_move,
)


def _plan(frame: pd.DataFrame, params: ValidationParams) -> tuple[list[_Check], list[RuleResult], pd.DataFrame]:
    """Decide which rules can run, build their GX expectations and the frame GX validates."""
    plan = _Plan(frame, params)
    _plan_structure(plan)
    if frame.empty:
        for rule, column in _all_row_rules(plan.present):
            plan.skip(rule, column, "the frame has no rows")
    else:
        for planner in _ROW_PLANNERS:
            planner(plan)
    return plan.checks, plan.skipped, plan.gx_frame


_EXPECTED_DTYPE: dict[str, str] = {
    "timestamp": "timestamp must be a timezone-aware datetime",
    "symbol": "symbol must be text (str)",
}


def _all_row_rules(present: list[str]) -> list[tuple[str, str | None]]:
    """Every rule that needs rows, with its column, for reporting them as skipped on an empty frame."""
    rules: list[tuple[str, str | None]] = [("dtype", c) for c in present]
    rules += [("non_null_key", c) for c in KEY_COLUMNS]
    rules += [("unique_symbol_timestamp", None), ("increasing_time", "timestamp")]
    rules += [("finite_values", c) for c in NUMERIC_COLUMNS if c in present]
    rules += [("positive_prices", c) for c in POSITIVE_COLUMNS if c in present]
    ohlc_rules = (("low_le_open_close", "low"), ("high_ge_open_close", "high"))
    rules += [(rule, column) for rule, column in ohlc_rules if column in present]
    rules += [("non_negative_volume", c) for c in NON_NEGATIVE_COLUMNS if c in present]
    rules += [("nan_budget", c) for c in NUMERIC_COLUMNS if c in present]
    rules += [("suspension", "timestamp"), ("market_closure", "timestamp")]
    rules += [("extreme_move", "close")]
    return rules


def _dtype_flags(values: pd.Series, column: str) -> tuple[pd.Series, str | None]:
    """Per-row type verdicts (True ok, False offending, None null) and why the column's dtype is wrong (or None).

    A numeric column stored as text (a CSV with "abc" in it arrives as object) is
    offending at the rows that do not parse as numbers. The caller marks every non-null
    row offending when the dtype is wrong but no single value is (text that all parses
    as numbers, timestamps of mixed time zones in an object column).
    """
    null = values.isna()
    dtype = values.dtype
    if column == "timestamp":
        if isinstance(dtype, pd.DatetimeTZDtype):
            return _flags(pd.Series(True, index=values.index), null), None
        if dtype == object:
            ok = values.map(lambda v: isinstance(v, datetime) and v.tzinfo is not None)
        else:
            ok = pd.Series(False, index=values.index)
        why = f"timestamp must be a timezone-aware datetime, got dtype {dtype}"
        if pd.api.types.is_datetime64_dtype(dtype):
            why += " (timezone-naive: localise it to UTC at ingest)"
        return _flags(ok, null), why
    if column == "symbol":
        if isinstance(dtype, pd.StringDtype):
            return _flags(pd.Series(True, index=values.index), null), None
        if dtype == object:
            ok = values.map(lambda v: isinstance(v, str))
            if bool(ok[~null].all()):
                return _flags(ok, null), None
        else:
            ok = pd.Series(False, index=values.index)
        return _flags(ok, null), f"symbol must be text (str), got dtype {dtype} with non-text values"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return _flags(pd.Series(True, index=values.index), null), None
    if pd.api.types.is_bool_dtype(dtype):
        return _flags(pd.Series(False, index=values.index), null), f"{column} must be numeric, got dtype bool"
    parsed = pd.to_numeric(values, errors="coerce") if dtype == object else pd.Series(np.nan, index=values.index)
    ok = parsed.notna()
    bad = int((~ok & ~null).sum())
    if bad == 0:
        return _flags(ok, null), (
            f"{column} must be numeric, got dtype {dtype}; every value parses as a number, "
            "so convert the column at ingest"
        )
    return _flags(ok, null), f"{column} must be numeric, got dtype {dtype}: {bad} value(s) are not numbers"


def _flags(ok: pd.Series, null: pd.Series) -> pd.Series:
    """Booleans as an object column with None where the value is null (GX map expectations skip nulls)."""
    return ok.astype(object).where(~null, None)


def _nan_budget_detail(column: str, budget: float) -> Callable[[dict[str, Any]], str]:
    def detail(result: dict[str, Any]) -> str:
        count = result.get("unexpected_count") or 0
        total = result.get("element_count") or 0
        share = count / total if total else 0.0
        return f"{count} NaN in {total} rows of {column} ({share:.2%}); budget {budget:.2%}"

    return detail
