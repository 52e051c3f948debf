"""The canonical long bar schema every source is converted to.

One row per (symbol, timestamp). ``timestamp`` is timezone-aware UTC. Only
``timestamp``, ``symbol`` and ``close`` are required: a source that lacks a
column (skfolio ships closes only) leaves it out rather than inventing it.
"""

from __future__ import annotations

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
