"""Data validation stage: check canonical bars with one Great Expectations suite.

Every rule is a Great Expectations (GX 1.x) expectation run over ONE batch: a copy of
the bars (reset to a 0..n-1 index) plus helper columns for the per-symbol rules GX
lacks (``previous_timestamp``/``gap_days`` for time order and gaps, ``log_return``
for one-bar moves, ``low_limit``/``high_floor`` for OHLC consistency, ``dtype_ok__*``
flags for row-level type checks). Counts and offending row numbers come from GX's
result (``unexpected_count``, ``partial_unexpected_index_list``, ``unexpected_rows``).

Row numbers in examples are 0-based POSITIONS in the frame given to
:func:`validate_bars` (its own index is ignored), so they point straight at
``bars.iloc[row]``. Per-symbol rules follow the INPUT ROW ORDER within each symbol:
ingest keeps a file's order, so time going backwards is visible here.

Structural rules (required columns, dtypes, non-empty) decide what can be evaluated:
a rule whose columns are missing or of the wrong type is reported as skipped (with the
reason) instead of crashing. ``extreme_move`` is a warning (real unadjusted data has
splits); every other rule is an error and fails the stage.

Great Expectations is slow to import, so it is imported inside functions only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alphaforge.io import write_json_atomic, write_text_atomic
from alphaforge.schema import NUMERIC_COLUMNS, REQUIRED_COLUMNS, DataError

Severity = Literal["error", "warning"]

POSITIVE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "bid", "ask")
NON_NEGATIVE_COLUMNS: tuple[str, ...] = ("volume", "bid_size", "ask_size")
KEY_COLUMNS: tuple[str, ...] = ("timestamp", "symbol")

_SUITE_NAME = "alphaforge_bars"


class ValidationParams(BaseModel):
    """Thresholds of the validation stage (``validate:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nan_budget: float = Field(0.01, ge=0.0, le=1.0, description="max fraction of NaN per numeric column present")
    max_gap_bars: float = Field(
        10, gt=0, description="a symbol that misses more than this many of its own bars on the panel's calendar "
        "(sessions when other symbols traded, in the symbol's usual spacing) is suspended: its series is split "
        "there (a warning, rule suspension)")
    max_closure: str = Field(
        "30D", description="pandas Timedelta string: the WHOLE panel without a bar for longer than this splits "
        "every series (a warning, rule market_closure); shorter closures are holidays, weekends, nights: no gap")
    extreme_move: float = Field(0.5, gt=0.0, description="|log(close_t/close_{t-1})| above this is a warning")
    max_examples: int = Field(5, ge=1, le=1000, description="example rows kept per rule")
    ohlc_tolerance: float = Field(
        1e-9,
        ge=0.0,
        lt=0.01,
        description="relative slack for low <= min(open, close) <= max(open, close) <= high; absorbs float "
        "rounding of split/dividend adjustment (bokeh's adjusted OHLC is off by ~1e-15 relative)",
    )
    policy: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: any failed error rule stops the stage; quarantine: rows that break a row-level "
        "rule go to data/quarantine/rows.parquet with their rules and the rest continue")
    max_quarantine_share: float = Field(
        0.01, ge=0.0, le=1.0, description="quarantine: the stage still fails when more than this share of the rows, "
        "overall or of any one symbol, is quarantined")

    @field_validator("max_closure")
    @classmethod
    def _max_closure_is_positive_timedelta(cls, value: str) -> str:
        try:
            gap = pd.Timedelta(value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"max_closure {value!r} is not a pandas Timedelta string such as '30D' or '90min'") from err
        if gap <= pd.Timedelta(0):
            raise ValueError(f"max_closure {value!r} must be a positive duration")
        return value

    @property
    def max_closure_days(self) -> float:
        """``max_closure`` in (fractional) days."""
        return pd.Timedelta(self.max_closure) / pd.Timedelta(days=1)


@dataclass
class RuleResult:
    """The outcome of one rule on one column (``column`` is None for table-level rules).

    ``unexpected_count`` is the number of offending rows (None for rules that are not
    row-level, such as a missing column). ``examples`` hold up to ``max_examples``
    offending rows: ``{"row": 0-based position in the input frame, <column>: value, ...}``.
    A ``skipped`` rule could not be evaluated (its column is missing or mistyped, or the
    frame is empty); it is not counted as a failure but is listed in the summary.
    """

    rule: str
    column: str | None
    severity: Severity
    success: bool
    unexpected_count: int | None
    examples: list[dict[str, Any]]
    detail: str
    skipped: bool = False
    rows: list[int] = field(default_factory=list)  # every offending position (row-level rules), for quarantine

    @property
    def label(self) -> str:
        """``rule`` or ``rule[column]``, as printed in summaries."""
        return self.rule if self.column is None else f"{self.rule}[{self.column}]"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this result."""
        return _plain(
            {
                "rule": self.rule,
                "column": self.column,
                "severity": self.severity,
                "success": self.success,
                "skipped": self.skipped,
                "unexpected_count": self.unexpected_count,
                "examples": self.examples,
                "detail": self.detail,
            }
        )


@dataclass
class ValidationReport:
    """Everything the validation stage found in one frame, plus GX's raw result."""

    source: str
    n_rows: int
    n_symbols: int
    results: list[RuleResult]
    params: ValidationParams = field(default_factory=ValidationParams)
    great_expectations: dict[str, Any] = field(default_factory=dict)
    quarantine: dict[str, Any] | None = None  # Quarantine.to_json() under validate.policy: quarantine
    after_quarantine: dict[str, Any] | None = None  # the verdict on the rows left after the quarantine

    @property
    def final_success(self) -> bool:
        """The verdict on what continues: this report's, or the one on the rows left after a quarantine."""
        if self.after_quarantine is not None:
            return bool(self.after_quarantine["success"]) and not (self.quarantine or {}).get("over_limit")
        return self.success

    @property
    def failures(self) -> list[RuleResult]:
        """Failed error rules: any of them fails the stage."""
        return [r for r in self.results if not r.success and not r.skipped and r.severity == "error"]

    @property
    def warnings(self) -> list[RuleResult]:
        """Failed warning rules: reported, but the stage still passes."""
        return [r for r in self.results if not r.success and not r.skipped and r.severity == "warning"]

    @property
    def skipped(self) -> list[RuleResult]:
        """Rules that could not be evaluated because a structural rule failed."""
        return [r for r in self.results if r.skipped]

    @property
    def success(self) -> bool:
        """True when no error rule failed (warnings do not count)."""
        return not self.failures

    def summary(self) -> str:
        """Human text: a headline, then one line per failed rule with example rows, then skipped rules."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation of {self.source} {verdict}: {len(self.failures)} error rule(s) failed, "
            f"{len(self.warnings)} warning(s); {self.n_rows} rows, {self.n_symbols} symbols "
            "(rows are 0-based positions in the input frame)"
        ]
        for result in self.failures + self.warnings:
            count = "" if result.unexpected_count is None else f" {result.unexpected_count} row(s);"
            examples = "; ".join(_format_example(e) for e in result.examples[: self.params.max_examples])
            column = "" if result.column is None else f" column {result.column!r}"
            line = f"  {result.severity.upper()} rule {result.rule}{column}:{count} {result.detail}"
            lines.append(line + (f" -- e.g. {examples}" if examples else ""))
        if self.quarantine is not None:
            q = self.quarantine
            lines.append(f"  QUARANTINE {q['rows']} row(s) ({q['share']:.2%}); by rule {q['by_rule']}; "
                         f"by symbol {q['by_symbol']}")
        if self.skipped:
            reasons: dict[str, list[str]] = {}
            for result in self.skipped:
                reasons.setdefault(result.detail, []).append(result.label)
            for reason, labels in reasons.items():
                lines.append(f"  SKIPPED {', '.join(labels)}: {reason}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: verdict, counts, every rule result and GX's raw result."""
        return _plain(
            {
                "source": self.source,
                "success": self.final_success,
                "success_before_quarantine": self.success,
                "quarantine": self.quarantine,
                "after_quarantine": self.after_quarantine,
                "n_rows": self.n_rows,
                "n_symbols": self.n_symbols,
                "n_failures": len(self.failures),
                "n_warnings": len(self.warnings),
                "n_skipped": len(self.skipped),
                "params": self.params.model_dump(),
                "results": [r.to_json() for r in self.results],
                "great_expectations": self.great_expectations,
            }
        )

    def to_html(self) -> str:
        """A standalone HTML page: verdict, then a table of rules coloured by outcome, with examples."""
        return _render_html(self)

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationFailed` when an error rule failed."""
        if not self.success:
            raise ValidationFailed(self)


MISSING_SYMBOL = "<missing>"  # how a quarantined row without a symbol is counted in by_symbol


@dataclass
class Quarantine:
    """Rows set aside by ``validate.policy: quarantine``, with every row-level rule each broke, and the counts.

    ``rows`` holds the quarantined rows as they were in the input, plus ``input_row`` (0-based position in
    the validated frame, i.e. in data/raw/bars.parquet) and ``rules`` (the labels of every rule the row broke,
    ``"; "``-joined). ``by_rule`` counts rows per rule label (a row that broke two rules counts under both);
    ``by_symbol`` counts rows per symbol (``<missing>`` for rows without one).
    """

    rows: pd.DataFrame
    n_input_rows: int
    by_rule: dict[str, int]
    by_symbol: dict[str, int]
    symbol_shares: dict[str, float]
    max_share: float

    @property
    def share(self) -> float:
        """Quarantined share of all input rows."""
        return len(self.rows) / self.n_input_rows if self.n_input_rows else 0.0

    @property
    def over_limit(self) -> list[str]:
        """Why the quarantine is too big to continue (empty when within ``max_quarantine_share``)."""
        reasons = []
        if self.share > self.max_share:
            reasons.append(f"{len(self.rows)} of {self.n_input_rows} rows ({self.share:.2%}) quarantined overall")
        for symbol, share in self.symbol_shares.items():
            if share > self.max_share:
                reasons.append(f"symbol {symbol!r}: {self.by_symbol[symbol]} rows ({share:.2%}) quarantined")
        return reasons

    def to_json(self) -> dict[str, Any]:
        """Counts for the report and the DVC metrics."""
        return _plain({"rows": len(self.rows), "share": self.share, "max_share": self.max_share,
                       "by_rule": self.by_rule, "by_symbol": self.by_symbol, "over_limit": self.over_limit})

    def describe(self) -> str:
        """One line: how many rows, by rule and by symbol."""
        rules = ", ".join(f"{rule} {count}" for rule, count in self.by_rule.items())
        symbols = ", ".join(f"{symbol} {count}" for symbol, count in self.by_symbol.items())
        return (f"{len(self.rows)} of {self.n_input_rows} rows ({self.share:.2%}) quarantined; by rule: {rules or '-'}; "
                f"by symbol: {symbols or '-'}")


def quarantine_rows(bars: pd.DataFrame, report: ValidationReport, max_share: float) -> tuple[pd.DataFrame, Quarantine]:
    """Split ``bars`` into the rows that broke no row-level rule and the quarantine, from ``report`` on ``bars``.

    Only failed error rules in :data:`ROW_LEVEL_RULES` quarantine rows; nothing is removed without a row in
    the quarantine. The kept rows must be validated again (table and per-symbol rules see a new frame).
    """
    frame = bars.reset_index(drop=True)
    broken: dict[int, list[str]] = {}
    by_rule: dict[str, int] = {}
    for result in report.results:
        if result.rule in ROW_LEVEL_RULES and result.severity == "error" and not result.success and not result.skipped:
            by_rule[result.label] = len(result.rows)
            for row in result.rows:
                broken.setdefault(row, []).append(result.label)
    positions = np.array(sorted(broken), dtype=np.int64)
    rows = frame.iloc[positions].copy()
    rows.insert(0, "input_row", positions)
    rows["rules"] = ["; ".join(broken[int(p)]) for p in positions]
    if "symbol" in rows:
        named = rows["symbol"].notna() & (rows["symbol"].astype(str).str.strip() != "")
        symbols = rows["symbol"].where(named, MISSING_SYMBOL)
    else:
        symbols = pd.Series(MISSING_SYMBOL, index=rows.index)
    by_symbol = {str(k): int(v) for k, v in symbols.value_counts().sort_index().items()}
    totals = frame["symbol"].value_counts() if "symbol" in frame else pd.Series(dtype=int)
    shares = {symbol: count / int(totals[symbol]) for symbol, count in by_symbol.items()
              if symbol != MISSING_SYMBOL and symbol in totals.index}
    kept = frame.drop(index=positions).reset_index(drop=True)
    return kept, Quarantine(rows.reset_index(drop=True), len(frame), by_rule, by_symbol, shares, max_share)


class ValidationFailed(DataError):
    """Bars broke an error rule; the message is the report's summary, the report is attached."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


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


def validate_bars(bars: pd.DataFrame, params: ValidationParams, *, source: str) -> ValidationReport:
    """Validate canonical bars with one GX suite over one batch and return the report.

    Does not raise on bad data (call :meth:`ValidationReport.raise_if_failed`), so the
    stage can write the report first. Example row numbers are 0-based positions in
    ``bars``; per-symbol rules follow the row order of ``bars`` within each symbol.
    """
    frame = bars.reset_index(drop=True)
    checks, skipped, gx_frame = _plan(frame, params)
    gx_result = _run_suite(gx_frame, checks, params)
    gx_items = {item.expectation_config.meta["check"]: item for item in gx_result.results}
    results = [_to_rule_result(check, gx_items, params) for check in checks] + skipped
    order = {name: i for i, name in enumerate(_RULE_ORDER)}
    results.sort(key=lambda r: order.get(r.rule, len(order)))
    n_symbols = int(frame["symbol"].nunique()) if "symbol" in frame.columns else 0
    return ValidationReport(
        source=source,
        n_rows=len(frame),
        n_symbols=n_symbols,
        results=results,
        params=params,
        great_expectations=_plain(_without_row_lists(gx_result.to_json_dict())),
    )


_RULE_ORDER: tuple[str, ...] = (
    "required_columns",
    "non_empty",
    "dtype",
    "non_null_key",
    "unique_symbol_timestamp",
    "increasing_time",
    "finite_values",
    "positive_prices",
    "low_le_open_close",
    "high_ge_open_close",
    "non_negative_volume",
    "nan_budget",
    "suspension",
    "market_closure",
    "extreme_move",
)

# Rules a single row breaks on its own: with validate.policy quarantine, such rows are set aside, not fatal.
ROW_LEVEL_RULES: tuple[str, ...] = (
    "non_null_key", "finite_values", "positive_prices", "low_le_open_close", "high_ge_open_close",
    "non_negative_volume",
)


def _plan(frame: pd.DataFrame, params: ValidationParams) -> tuple[list[_Check], list[RuleResult], pd.DataFrame]:
    """Decide which rules can run, build their GX expectations and the frame GX validates."""
    import great_expectations as gx

    expect = gx.expectations
    checks: list[_Check] = []
    skipped: list[RuleResult] = []
    present = [c for c in (*KEY_COLUMNS, *NUMERIC_COLUMNS) if c in frame.columns]
    gx_frame = frame[present].copy()
    unusable: dict[str, str] = {}  # column -> why rules on it cannot run

    for column in REQUIRED_COLUMNS:
        checks.append(
            _Check("required_columns", column, "error", expect.ExpectColumnToExist(column=column),
                   f"column {column!r} is required by the canonical schema")
        )
        if column not in frame.columns:
            unusable[column] = f"required column {column!r} is missing"
    checks.append(
        _Check("non_empty", None, "error", expect.ExpectTableRowCountToBeBetween(min_value=1),
               "the frame must have at least one row",
               detail_from_result=lambda r: f"the frame has {r.get('observed_value')} rows (at least one is needed)")
    )

    def skip(rule: str, column: str | None, severity: Severity, reason: str) -> None:
        skipped.append(RuleResult(rule, column, severity, False, None, [], f"not evaluated: {reason}", skipped=True))

    if frame.empty:
        for rule, column, severity in _all_row_rules(present):
            skip(rule, column, severity, "the frame has no rows")
        return checks, skipped, gx_frame

    for column in present:
        flags, why = _dtype_flags(frame[column], column)
        if why and not (flags == False).any():  # noqa: E712 -- object column of True/False/None
            # the column's type is wrong even though each value looks fine: every row is offending
            flags = _flags(pd.Series(False, index=frame.index), frame[column].isna())
        helper = f"dtype_ok__{column}"
        gx_frame[helper] = flags
        checks.append(
            _Check("dtype", column, "error", expect.ExpectColumnValuesToBeInSet(column=helper, value_set=[True]),
                   why or _EXPECTED_DTYPE.get(column, f"{column} must be numeric"),
                   example_columns=(column,))
        )
        if why:
            unusable[column] = f"column {column!r} failed rule dtype"

    def usable(*columns: str) -> str | None:
        """None if every column can be evaluated, else the reason the first cannot."""
        for column in columns:
            if column not in frame.columns and column not in unusable:
                return f"column {column!r} is absent"
            if column in unusable:
                return unusable[column]
        return None

    for column in KEY_COLUMNS:
        if (reason := usable(column)) is None:
            helper = f"present__{column}"
            values = frame[column]
            if column == "symbol":  # a blank symbol is as missing as an empty cell
                values = values.where(values.isna() | (values.astype(str).str.strip() != ""), None)
            gx_frame[helper] = values
            checks.append(
                _Check("non_null_key", column, "error", expect.ExpectColumnValuesToNotBeNull(column=helper),
                       f"{column} is part of the key and must not be missing or blank", example_columns=(column,))
            )
        else:
            skip("non_null_key", column, "error", reason)

    # Non-finite values get their own rule; every other value rule sees only finite values (a helper column with
    # NaN for +-inf), so an infinite price is reported once, as finite_values, never as a broken OHLC bracket.
    finite: dict[str, str] = {}
    for column in NUMERIC_COLUMNS:
        if column not in frame.columns or usable(column) is not None:
            continue
        values = frame[column].astype(float)
        infinite = np.isinf(values.to_numpy())
        finite[column] = f"finite__{column}"
        gx_frame[finite[column]] = values.where(~infinite)
        gx_frame[f"finite_ok__{column}"] = _flags(pd.Series(~infinite, index=frame.index), values.isna())
        checks.append(
            _Check("finite_values", column, "error",
                   expect.ExpectColumnValuesToBeInSet(column=f"finite_ok__{column}", value_set=[True]),
                   f"{column} must be finite (inf or -inf is not a number a model can use)", example_columns=(column,))
        )

    if (reason := usable("symbol", "timestamp")) is None:
        checks.append(
            _Check("unique_symbol_timestamp", None, "error",
                   expect.ExpectCompoundColumnsToBeUnique(column_list=["symbol", "timestamp"]),
                   "each (symbol, timestamp) pair must appear once (every copy is counted)")
        )
        previous = frame.groupby("symbol", sort=False)["timestamp"].shift()
        gx_frame["previous_timestamp"] = previous
        gx_frame["gap_days"] = (frame["timestamp"] - previous) / pd.Timedelta(days=1)
        checks.append(
            _Check("increasing_time", "timestamp", "error",
                   expect.ExpectColumnValuesToBeBetween(column="gap_days", min_value=0, strict_min=True),
                   "timestamps must strictly increase within each symbol, in row order",
                   example_columns=("previous_timestamp", "timestamp"))
        )
        calendar = calendar_gaps(frame, params)
        gx_frame["gap_bars"] = calendar["gap_bars"]
        gx_frame["crosses_closure"] = _flags(calendar["crosses_closure"], calendar["gap_bars"].isna())
        checks.append(
            _Check("suspension", "timestamp", "warning",
                   expect.ExpectColumnValuesToBeBetween(column="gap_bars", max_value=params.max_gap_bars,
                                                        severity="warning"),
                   f"a symbol missed more than {params.max_gap_bars:g} of its own bars while the rest of the panel "
                   "traded (a suspension, a delisting and relisting, thin trading): its series is split there, "
                   "features restart and no position is carried across",
                   example_columns=("previous_timestamp", "timestamp", "gap_bars"))
        )
        checks.append(
            _Check("market_closure", "timestamp", "warning",
                   expect.ExpectColumnValuesToBeInSet(column="crosses_closure", value_set=[False], severity="warning"),
                   f"the whole panel had no bar for more than {params.max_closure} between these two bars of a "
                   "symbol: every series is split there",
                   example_columns=("previous_timestamp", "timestamp"))
        )
    else:
        for rule in ("unique_symbol_timestamp", "increasing_time", "suspension", "market_closure"):
            severity: Severity = "warning" if rule in ("suspension", "market_closure") else "error"
            skip(rule, None if rule == "unique_symbol_timestamp" else "timestamp", severity, reason)

    for column in POSITIVE_COLUMNS:
        if column in frame.columns or column == "close":
            if (reason := usable(column)) is None:
                checks.append(
                    _Check("positive_prices", column, "error",
                           expect.ExpectColumnValuesToBeBetween(column=finite[column], min_value=0, strict_min=True),
                           f"{column} must be > 0", example_columns=(column,))
                )
            else:
                skip("positive_prices", column, "error", reason)

    tolerance = params.ohlc_tolerance
    body = [c for c in ("open", "close") if c in frame.columns or c == "close"]
    for rule, column, helper, detail in (
        ("low_le_open_close", "low", "low_limit", f"low must be <= min(open, close) (relative slack {tolerance:g})"),
        ("high_ge_open_close", "high", "high_floor",
         f"high must be >= max(open, close) (relative slack {tolerance:g})"),
    ):
        if column not in frame.columns:
            continue
        if (reason := usable(column, *body)) is not None:
            skip(rule, column, "error", reason)
            continue
        sides = gx_frame[[finite[c] for c in body]]
        if column == "low":
            gx_frame[helper] = sides.min(axis=1, skipna=False) * (1 + tolerance)
            pair = expect.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=helper, column_B=finite["low"], or_equal=True, ignore_row_if="either_value_is_missing")
        else:
            gx_frame[helper] = sides.max(axis=1, skipna=False) * (1 - tolerance)
            pair = expect.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=finite["high"], column_B=helper, or_equal=True, ignore_row_if="either_value_is_missing")
        checks.append(_Check(rule, column, "error", pair, detail, example_columns=(column, *body)))

    for column in NON_NEGATIVE_COLUMNS:
        if column not in frame.columns:
            continue
        if (reason := usable(column)) is None:
            checks.append(
                _Check("non_negative_volume", column, "error",
                       expect.ExpectColumnValuesToBeBetween(column=finite[column], min_value=0),
                       f"{column} must be >= 0", example_columns=(column,))
            )
        else:
            skip("non_negative_volume", column, "error", reason)

    for column in NUMERIC_COLUMNS:
        if column not in frame.columns and column != "close":
            continue
        if (reason := usable(column)) is None:
            checks.append(
                _Check("nan_budget", column, "error",
                       expect.ExpectColumnValuesToNotBeNull(column=column, mostly=1.0 - params.nan_budget),
                       f"at most {params.nan_budget:.2%} of {column} may be NaN", example_columns=(column,),
                       detail_from_result=_nan_budget_detail(column, params.nan_budget))
            )
        else:
            skip("nan_budget", column, "error", reason)

    if (reason := usable("symbol", "close")) is None:
        close = gx_frame[finite["close"]]
        previous_close = close.groupby(frame["symbol"], sort=False).shift()
        both_positive = (close > 0) & (previous_close > 0)
        gx_frame["previous_close"] = previous_close
        gx_frame["log_return"] = np.log(close.where(both_positive) / previous_close.where(both_positive))
        limit = params.extreme_move
        checks.append(
            _Check("extreme_move", "close", "warning",
                   expect.ExpectColumnValuesToBeBetween(column="log_return", min_value=-limit, max_value=limit,
                                                        severity="warning"),
                   f"|log(close_t / close_t-1)| above {limit:g} within a symbol: a split, a crash or a bad tick",
                   example_columns=("previous_close", "close", "log_return"))
        )
    else:
        skip("extreme_move", "close", "warning", reason)
    return checks, skipped, gx_frame


def calendar_gaps(bars: pd.DataFrame, params: ValidationParams) -> pd.DataFrame:
    """Each bar's gap from the symbol's previous bar, measured on the market's own calendar.

    The calendar is the panel's sessions: the sorted timestamps at which any symbol has a bar. So a day on
    which the whole panel is closed (a holiday, a weekend, a night between intraday sessions) is not in it
    and is no gap; a 24/7 market simply has every hour in it. A symbol's step is the number of sessions it
    advances between two of its bars; divided by the symbol's usual step (the median: 1 for a symbol that
    trades every session, 5 for weekly bars in a daily panel) it is counted in the symbol's own bars, and
    ``gap_bars = step / usual - 1`` is how many of its own bars it missed (0 for a regular bar).

    ``crosses_closure`` is True when the panel had no bar at all for longer than ``max_closure`` between
    the two bars (a market shut for months, or a one-symbol file with a hole: nothing else trades then).

    Rows keep their order (per-symbol rules follow the input row order); a row with a missing key, and each
    symbol's first row, have NaN ``gap_bars`` and False ``crosses_closure``.
    """
    valid = bars["timestamp"].notna() & bars["symbol"].notna()
    stamps = bars["timestamp"][valid]
    sessions = np.unique(stamps.to_numpy(dtype="datetime64[ns]")) if valid.any() else np.array([], "datetime64[ns]")
    position = pd.Series(np.nan, index=bars.index)
    position[valid] = np.searchsorted(sessions, stamps.to_numpy(dtype="datetime64[ns]"))
    session_gap = np.diff(sessions).astype("timedelta64[ns]").astype(np.int64) / 86_400e9 if len(sessions) else []
    closures = np.concatenate(([0], np.cumsum(np.asarray(session_gap) > params.max_closure_days)))
    symbols = bars["symbol"].where(valid)
    previous = position.groupby(symbols, sort=False).shift()
    step = position - previous
    usual = step.where(step > 0).groupby(symbols, sort=False).transform("median").fillna(1.0).clip(lower=1.0)
    gap_bars = step / usual - 1.0
    crossed = pd.Series(False, index=bars.index)
    both = previous.notna() & position.notna() & (step > 0)
    if both.any():
        now, before = position[both].astype(np.int64).to_numpy(), previous[both].astype(np.int64).to_numpy()
        crossed[both] = closures[now] > closures[before]
    return pd.DataFrame({"gap_bars": gap_bars.where(valid), "crosses_closure": crossed}, index=bars.index)


def assign_segments(bars: pd.DataFrame, params: ValidationParams) -> pd.Series:
    """Per row, the 0-based number of the symbol's uninterrupted series it belongs to.

    A new segment starts after a suspension (more than ``max_gap_bars`` of the symbol's own bars missed on
    the panel's calendar) or a market closure longer than ``max_closure``: features restart there, labels
    and positions are never carried across. ``bars`` must have passed validation (keys present, sorted).
    """
    gaps = calendar_gaps(bars, params)
    breaks = (gaps["gap_bars"] > params.max_gap_bars) | gaps["crosses_closure"]
    return breaks.astype(np.int64).groupby(bars["symbol"], sort=False).cumsum().rename("segment")


SERIES_SEPARATOR = "\x1f"  # sorts before every printable character, so "MSFT", "MSFT\x1f1" keep the symbol order


def as_series(bars: pd.DataFrame) -> pd.DataFrame:
    """``bars`` with each later segment of a split symbol as its own series: ``symbol`` becomes ``MSFT\x1f1``
    (``MSFT\x1f01`` .. ``MSFT\x1f12`` when some symbol has ten segments or more).

    Per-symbol computations (indicators, labels, returns) run on this view so that nothing reaches across a
    suspension; put the real ``symbol`` back afterwards. Bars without a ``segment`` column come back as they are.
    """
    if "segment" not in bars.columns or not (bars["segment"] > 0).any():
        return bars
    later = bars["segment"] > 0
    # zero-padded to one width, so that a symbol's series keep their order as text ("X\x1f09" < "X\x1f10")
    number = bars["segment"].astype(str).str.zfill(len(str(int(bars["segment"].max()))))
    symbol = bars["symbol"].astype(object).where(~later, bars["symbol"].astype(str) + SERIES_SEPARATOR + number)
    return bars.assign(symbol=symbol)


_EXPECTED_DTYPE: dict[str, str] = {
    "timestamp": "timestamp must be a timezone-aware datetime",
    "symbol": "symbol must be text (str)",
}


def _all_row_rules(present: list[str]) -> list[tuple[str, str | None, Severity]]:
    """Every rule that needs rows, for reporting them as skipped on an empty frame."""
    rules: list[tuple[str, str | None, Severity]] = [("dtype", c, "error") for c in present]
    rules += [("non_null_key", c, "error") for c in KEY_COLUMNS]
    rules += [("unique_symbol_timestamp", None, "error"), ("increasing_time", "timestamp", "error")]
    rules += [("finite_values", c, "error") for c in NUMERIC_COLUMNS if c in present]
    rules += [("positive_prices", c, "error") for c in POSITIVE_COLUMNS if c in present]
    ohlc_rules = (("low_le_open_close", "low"), ("high_ge_open_close", "high"))
    rules += [(rule, column, "error") for rule, column in ohlc_rules if column in present]
    rules += [("non_negative_volume", c, "error") for c in NON_NEGATIVE_COLUMNS if c in present]
    rules += [("nan_budget", c, "error") for c in NUMERIC_COLUMNS if c in present]
    rules += [("suspension", "timestamp", "warning"), ("market_closure", "timestamp", "warning")]
    rules += [("extreme_move", "close", "warning")]
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


def _run_suite(gx_frame: pd.DataFrame, checks: list[_Check], params: ValidationParams) -> Any:
    """Build one suite from ``checks`` and validate ``gx_frame`` as one batch in an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("alphaforge")
        .add_dataframe_asset("bars")
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": gx_frame})
    suite = gx.ExpectationSuite(name=_SUITE_NAME)
    for number, check in enumerate(checks):
        check.expectation.meta = {"check": number, "rule": check.rule, "column": check.column}
        check.expectation.severity = "warning" if check.severity == "warning" else "critical"
        suite.add_expectation(check.expectation)
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",  # every offending row's index: quarantine needs all of them
            "partial_unexpected_count": params.max_examples,
            "include_unexpected_rows": True,
        },
    )
    for item in result.results:
        info = item.exception_info or {}
        if info.get("raised_exception"):
            meta = item.expectation_config.meta or {}
            raise RuntimeError(
                f"Great Expectations could not evaluate rule {meta.get('rule')} on column {meta.get('column')!r}: "
                f"{info.get('exception_message')}\n{info.get('exception_traceback')}"
            )
    return result


def _to_rule_result(check: _Check, gx_items: dict[int, Any], params: ValidationParams) -> RuleResult:
    """Read one check's outcome (success, count, example rows) out of GX's result for its expectation."""
    item = gx_items.get(check.expectation.meta["check"])
    if item is None:
        raise RuntimeError(f"Great Expectations returned no result for rule {check.rule} on {check.column!r}")
    result = dict(item.result or {})
    count = result.get("unexpected_count")
    detail = check.detail_from_result(result) if check.detail_from_result else check.detail
    return RuleResult(
        rule=check.rule,
        column=check.column,
        severity=check.severity,
        success=bool(item.success),
        unexpected_count=None if count is None else int(count),
        examples=_examples(check, result, params.max_examples),
        detail=detail,
        rows=[int(r) for r in result.get("unexpected_index_list") or []],
    )


def _without_row_lists(raw: Any) -> Any:
    """GX's raw result without the complete per-row lists (they can hold every row; the examples stay)."""
    if isinstance(raw, dict):
        return {k: _without_row_lists(v) for k, v in raw.items()
                if k not in ("unexpected_list", "unexpected_index_list", "unexpected_index_query", "unexpected_rows")}
    if isinstance(raw, list):
        return [_without_row_lists(v) for v in raw]
    return raw


def _examples(check: _Check, result: dict[str, Any], max_examples: int) -> list[dict[str, Any]]:
    """Example rows from GX's ``partial_unexpected_index_list`` and ``unexpected_rows``."""
    rows = result.get("partial_unexpected_index_list") or []
    unexpected_rows = result.get("unexpected_rows")
    if not isinstance(unexpected_rows, pd.DataFrame):
        return [{"row": int(r)} for r in rows[:max_examples]]
    columns = [c for c in ("symbol", "timestamp", *check.example_columns) if c in unexpected_rows.columns]
    columns = list(dict.fromkeys(columns))
    examples = []
    for row in rows[:max_examples]:
        values = unexpected_rows.loc[row, columns] if row in unexpected_rows.index else pd.Series(dtype=object)
        examples.append(_plain({"row": int(row), **values.to_dict()}))
    return examples


def write_report(report: ValidationReport, json_path: Path, html_path: Path) -> None:
    """Write the report as JSON and as a standalone HTML page, each atomically (temp file + os.replace)."""
    write_json_atomic(report.to_json(), json_path)
    write_text_atomic(report.to_html(), html_path)


def _plain(value: Any) -> Any:
    """``value`` with only JSON types: timestamps as ISO text, numpy scalars as Python, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, pd.DataFrame):
        return [_plain(r) for r in value.to_dict(orient="records")]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return float(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")  # JSON has no inf
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, (pd.Timedelta, np.timedelta64)):
        return str(pd.Timedelta(value))
    if isinstance(value, np.datetime64):
        return str(pd.Timestamp(value).isoformat())
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, str):
        return value
    return str(value)


def _format_example(example: dict[str, Any]) -> str:
    values = ", ".join(f"{k}={v}" for k, v in example.items() if k != "row")
    return f"row {example.get('row')} ({values})"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } .verdict { padding: .4em .8em; border-radius: 4px; display: inline-block; }
table { border-collapse: collapse; width: 100%; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; font-size: .9em; }
th { background: #f0f0f0; }
tr.pass td.status, .verdict.pass { background: #d8f3dc; color: #1b4332; }
tr.fail td.status, .verdict.fail { background: #ffd6d6; color: #7a0000; font-weight: bold; }
tr.warn td.status { background: #fff3bf; color: #6b4f00; font-weight: bold; }
tr.skip td.status { background: #e9ecef; color: #555; }
table.examples { margin: 0; width: auto; } table.examples td, table.examples th { font-size: .8em; }
code { font-size: .9em; }
"""


def _render_html(report: ValidationReport) -> str:
    """The report as one self-contained HTML page; every value is escaped."""
    esc = html.escape
    verdict = "pass" if report.final_success else "fail"
    quarantine = ""
    if report.quarantine is not None:
        q = report.quarantine
        after = report.after_quarantine
        quarantine = (
            f"<h2>Quarantine</h2><p>{q['rows']} row(s) ({q['share']:.2%}, limit {q['max_share']:.2%}) broke a "
            "row-level rule and were set aside in <code>data/quarantine/rows.parquet</code> with their rules. "
            f"By rule: {esc(str(q['by_rule']))}. By symbol: {esc(str(q['by_symbol']))}."
            + (f" Over the limit: {esc('; '.join(q['over_limit']))}." if q["over_limit"] else "")
            + ("" if after is None else f" The {after['rows']} remaining rows were validated again: "
               f"{'PASSED' if after['success'] else 'FAILED ' + esc(', '.join(after['failed_rules']))}.")
            + "</p>"
        )
    rows = []
    for result in report.results:
        if result.skipped:
            css, status = "skip", "SKIPPED"
        elif result.success:
            css, status = "pass", "PASS"
        elif result.severity == "warning":
            css, status = "warn", "WARNING"
        else:
            css, status = "fail", "FAIL"
        count = "" if result.unexpected_count is None else str(result.unexpected_count)
        rows.append(
            f'<tr class="{css}"><td class="status">{status}</td><td><code>{esc(result.rule)}</code></td>'
            f"<td>{esc(result.column or '')}</td><td>{esc(result.severity)}</td><td>{count}</td>"
            f"<td>{esc(result.detail)}</td><td>{_examples_html(result.examples)}</td></tr>"
        )
    params = ", ".join(f"{esc(k)}={esc(str(v))}" for k, v in report.params.model_dump().items())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Validation: {esc(report.source)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Data validation: {esc(report.source)}</h1>"
        f'<p><span class="verdict {verdict}">{"PASSED" if report.final_success else "FAILED"}</span> '
        f"{len(report.failures)} failed error rule(s), {len(report.warnings)} warning(s), "
        f"{len(report.skipped)} skipped; {report.n_rows} rows, {report.n_symbols} symbols.</p>"
        f"<p>Parameters: {params}. Rows are 0-based positions in the validated frame; "
        "per-symbol rules follow its row order. Checks run as one Great Expectations suite; "
        "its raw result is in the JSON report.</p>" + quarantine +
        "<table><thead><tr><th>Status</th><th>Rule</th><th>Column</th><th>Severity</th>"
        "<th>Unexpected rows</th><th>Detail</th><th>Examples</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>\n"
    )


def _examples_html(examples: list[dict[str, Any]]) -> str:
    if not examples:
        return ""
    keys = list(dict.fromkeys(k for e in examples for k in e))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(e.get(k, '')))}</td>" for k in keys) + "</tr>" for e in examples
    )
    return f'<table class="examples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
