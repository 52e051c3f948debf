"""Run the planned rules as one Great Expectations suite over one batch and read its result back
(:func:`validate_bars`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from alphaforge.validate.params import _SUITE_NAME, ValidationParams
from alphaforge.validate.report import RuleResult, ValidationReport, _plain
from alphaforge.validate.rules import _RULE_ORDER, _Check, _plan


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
