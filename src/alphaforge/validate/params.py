"""The validation stage's settings (:class:`ValidationParams`), severities and the column groups the rules check."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator


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
