"""What validation found: one :class:`RuleResult` per rule and column, the :class:`ValidationReport`, and the report as
JSON and HTML.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.io import write_json_atomic, write_text_atomic
from alphaforge.schema import DataError
from alphaforge.validate.params import Severity, ValidationParams


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


class ValidationFailed(DataError):
    """Bars broke an error rule; the message is the report's summary, the report is attached."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


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
