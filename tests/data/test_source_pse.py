"""The fastquant_pse source: ~260 real Philippine Stock Exchange names, daily OHLC, through ingest and validate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphaforge.config import load_params
from alphaforge.data.ingest import IngestParams, load_source
from alphaforge.schema import CANONICAL_ORDER
from alphaforge.validate import quarantine_rows, validate_bars


@pytest.fixture(scope="module")
def pse_bars() -> pd.DataFrame:
    return load_source(IngestParams(source="fastquant_pse"))


def test_pse_is_a_wide_real_daily_ohlcv_universe(pse_bars: pd.DataFrame) -> None:
    assert list(pse_bars.columns) == [c for c in CANONICAL_ORDER if c in pse_bars.columns]
    assert {"open", "high", "low", "close", "volume"} <= set(pse_bars.columns)
    assert pse_bars["symbol"].nunique() >= 250
    assert pse_bars["timestamp"].min() == pd.Timestamp("2010-01-04", tz="UTC")
    assert pse_bars["timestamp"].max() == pd.Timestamp("2021-12-15", tz="UTC")
    assert not pse_bars.duplicated(["symbol", "timestamp"]).any()
    assert pse_bars.groupby("timestamp")["symbol"].size().median() >= 150  # a real cross-section every day
    # the placeholder days with every price 0 are not bars
    assert (pse_bars[["open", "high", "low", "close"]] > 0).all(axis=None)
    # volume is traded value / close: JFC (Jollibee) on its first 2010 bar, from the package's own JFC file
    jfc = pse_bars[(pse_bars["symbol"] == "JFC") & (pse_bars["timestamp"] == pd.Timestamp("2010-01-04", tz="UTC"))]
    assert jfc["close"].item() == pytest.approx(55.5)
    assert (jfc["close"] * jfc["volume"]).item() == pytest.approx(14598650.0)


def test_pse_validates_after_quarantining_a_few_broken_rows(pse_bars: pd.DataFrame) -> None:
    """The file has ~40 rows that break the OHLC bracket or have a negative traded value: the default policy
    refuses them, naming the rule; quarantine sets them aside (far under the share limit) and the rest passes."""
    settings = load_params().validate_
    report = validate_bars(pse_bars, settings, source="fastquant_pse")
    assert not report.success
    assert {r.rule for r in report.failures} <= {"low_le_open_close", "high_ge_open_close", "non_negative_volume"}
    quarantine = settings.model_copy(update={"policy": "quarantine"})
    kept, set_aside = quarantine_rows(pse_bars, report, quarantine.max_quarantine_share)
    assert 0 < len(set_aside.rows) < 100 and not set_aside.over_limit
    assert validate_bars(kept, quarantine, source="fastquant_pse (after quarantine)").success
    assert np.isfinite(kept["volume"]).all()
