"""Stage ``validate``: the expectation suite over the raw bars; fail, or quarantine bad rows, naming rule and rows.

Only data that passes reaches data/validated/bars.parquet (with ``segment``: a symbol's series restarts after a
suspension or a market closure), so nothing downstream runs on bad data. Writes reports/validation/{result.json,
index.html,summary.json} either way, and data/quarantine/rows.parquet (``validate.policy: quarantine``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.io import write_json_atomic, write_parquet_atomic
from alphaforge.paths import Paths
from alphaforge.schema import DataError
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Run the expectation suite; quarantine bad rows if the policy allows, else fail passing nothing downstream.

    With ``validate.policy: quarantine`` the rows that break a row-level rule go to data/quarantine/rows.parquet
    (with their rules), the rest is validated again and continues, unless the quarantined share is over
    ``validate.max_quarantine_share`` overall or for a symbol. Validated bars carry ``segment``: a symbol's
    series restarts after a suspension or a market closure (:func:`alphaforge.validate.assign_segments`).
    """
    from alphaforge.validate import (
        ROW_LEVEL_RULES,
        ValidationFailed,
        assign_segments,
        quarantine_rows,
        validate_bars,
        write_report,
    )

    paths = Paths(root)
    settings = params.validate_
    paths.validated_bars.unlink(missing_ok=True)
    bars = pd.read_parquet(paths.raw_bars)
    source = str(params.ingest.path if params.ingest.source == "file" else params.ingest.source)
    report = validate_bars(bars, settings, source=source)
    row_faults = [r for r in report.failures if r.rule in ROW_LEVEL_RULES]
    kept, quarantine, verdict = bars, None, report
    if settings.policy == "quarantine":
        kept, quarantine = quarantine_rows(bars, report, settings.max_quarantine_share)
        report.quarantine = quarantine.to_json()
        if len(quarantine.rows):
            verdict = validate_bars(kept, settings, source=f"{source} (after quarantine)")
            report.after_quarantine = {"success": verdict.success, "rows": verdict.n_rows,
                                       "failed_rules": [r.label for r in verdict.failures]}
            log.warning("validate: %s -> %s", quarantine.describe(), paths.quarantine)
    quarantined = bars.iloc[:0].assign(input_row=pd.Series(dtype="int64"), rules=pd.Series(dtype=str)) \
        if quarantine is None else quarantine.rows
    write_parquet_atomic(quarantined, paths.quarantine)
    write_report(report, paths.validation_json, paths.validation_html)
    over_limit = quarantine.over_limit if quarantine is not None else []
    success = verdict.success and not over_limit
    warnings = {r.label: r.unexpected_count for r in verdict.warnings}
    summary = {
        "success": success,
        "policy": settings.policy,
        "rows": report.n_rows,
        "rows_validated": verdict.n_rows,
        "symbols": report.n_symbols,
        "failed_rules": [r.rule for r in verdict.failures],
        "warnings": list(dict.fromkeys(r.rule for r in verdict.warnings)),
        "warning_rows": warnings,
        "quarantine": {"rows": 0, "share": 0.0, "by_rule": {}, "by_symbol": {}} if quarantine is None
        else quarantine.to_json(),
    }
    if not success:
        write_json_atomic(summary, paths.validation_summary)
        if over_limit:
            raise DataError(f"validate: quarantine over validate.max_quarantine_share="
                            f"{settings.max_quarantine_share:g}: {'; '.join(over_limit)}\n{quarantine.describe()}\n"
                            f"the rows are in {paths.quarantine}; fix the file or raise the limit knowingly")
        hint = ""
        if settings.policy == "fail" and row_faults:
            count = len({row for r in row_faults for row in r.rows})
            hint = (f"\n{count} row(s) break row-level rules ({', '.join(r.label for r in row_faults)}); with "
                    f"validate.policy: quarantine they would be set aside in {paths.quarantine} and the rest would "
                    "continue")
        raise ValidationFailed(verdict) if not hint else DataError(verdict.summary() + hint)
    for warning in verdict.warnings:
        log.warning("validate: warning %s on %s: %d rows", warning.rule, warning.column, warning.unexpected_count)
    validated = kept.assign(segment=assign_segments(kept, settings).to_numpy())
    splits = validated.groupby("symbol")["segment"].max()
    summary["segments"] = {"series": int((splits + 1).sum()), "symbols_split": int((splits > 0).sum())}
    if (splits > 0).any():
        log.warning("validate: %d symbol(s) split into %d series at suspensions/market closures (features restart, "
                    "no position is carried across): %s", int((splits > 0).sum()), int((splits + 1).sum()),
                    {str(k): int(v) + 1 for k, v in splits[splits > 0].items()})
    write_json_atomic(summary, paths.validation_summary)
    write_parquet_atomic(validated, paths.validated_bars)
    log.info("validate: %d rows passed %d rules; report %s", verdict.n_rows, len(verdict.results),
             paths.validation_html)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("validate", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
