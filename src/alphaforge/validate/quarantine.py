"""Quarantine: set aside the rows that broke a row-level error rule, within a budget, and count them per rule and
symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.validate.report import ValidationReport, _plain
from alphaforge.validate.rules import ROW_LEVEL_RULES


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
