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

from alphaforge.validate.calendar import SERIES_SEPARATOR, as_series, assign_segments, calendar_gaps
from alphaforge.validate.params import KEY_COLUMNS, NON_NEGATIVE_COLUMNS, POSITIVE_COLUMNS, Severity, ValidationParams
from alphaforge.validate.quarantine import MISSING_SYMBOL, Quarantine, quarantine_rows
from alphaforge.validate.report import RuleResult, ValidationFailed, ValidationReport, write_report
from alphaforge.validate.rules import ROW_LEVEL_RULES, RULES, Rule
from alphaforge.validate.suite import validate_bars

__all__ = [
    "KEY_COLUMNS",
    "MISSING_SYMBOL",
    "NON_NEGATIVE_COLUMNS",
    "POSITIVE_COLUMNS",
    "Quarantine",
    "ROW_LEVEL_RULES",
    "RULES",
    "Rule",
    "RuleResult",
    "SERIES_SEPARATOR",
    "Severity",
    "ValidationFailed",
    "ValidationParams",
    "ValidationReport",
    "as_series",
    "assign_segments",
    "calendar_gaps",
    "quarantine_rows",
    "validate_bars",
    "write_report",
]
