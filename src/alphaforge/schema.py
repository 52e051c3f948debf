"""The canonical long bar schema every source is converted to.

One row per (symbol, timestamp). ``timestamp`` is timezone-aware UTC. Only
``timestamp``, ``symbol`` and ``close`` are required: a source that lacks a
column (skfolio ships closes only) leaves it out rather than inventing it.
"""

from __future__ import annotations

import math
from typing import Any

KEY_COLUMNS: tuple[str, ...] = ("timestamp", "symbol")
REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "symbol", "close")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
OPTIONAL_COLUMNS: tuple[str, ...] = ("open", "high", "low", "volume", "bid", "ask", "bid_size", "ask_size")
NUMERIC_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "bid", "ask", "bid_size", "ask_size")
CANONICAL_ORDER: tuple[str, ...] = (
    "timestamp", "symbol", "open", "high", "low", "close", "volume", "bid", "ask", "bid_size", "ask_size",
)


class DataError(ValueError):
    """Input data that breaks the canonical schema; the message names file, column, row and rule."""


def canonical_columns(present: list[str] | tuple[str, ...]) -> list[str]:
    """The canonical columns among ``present``, in canonical order."""
    return [c for c in CANONICAL_ORDER if c in present]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, boolean, not a number, NaN or infinite): for metrics in reports."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_metric(value: float | None) -> str:
    """A metric for a human-readable reason: four decimals, or ``undefined``."""
    return "undefined" if value is None else f"{value:.4f}"
