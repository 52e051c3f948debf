"""Shared fixtures: small slices of the real bundled data, and the repository root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from alphaforge.data.ingest import IngestParams, load_source

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["mlflow_server"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def bokeh_bars() -> pd.DataFrame:
    """AAPL, IBM, MSFT, GOOG (+AMZN) daily OHLCV, 2000-2013, real."""
    return load_source(IngestParams(source="bokeh_stocks"))


@pytest.fixture(scope="session")
def skfolio_bars() -> pd.DataFrame:
    """20 US large caps, daily close only, 2015-2022 slice, real."""
    return load_source(IngestParams(source="skfolio_sp500", start="2015-01-01"))
