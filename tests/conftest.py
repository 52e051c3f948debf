"""Shared fixtures: small slices of the real bundled data, the repository root, a working directory for the
processes a test starts, and the guard that the suite leaves the checkout's pipeline outputs as it found them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from isolation import REPO_ROOT, changes, fingerprint, subprocess_workdir

from alphaforge.data.ingest import IngestParams, load_source

pytest_plugins = ["mlflow_server"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def checkout_outputs_untouched() -> Iterator[None]:
    """Fail the session if a test created, changed or removed anything under the checkout's pipeline outputs.

    A test that needs pipeline outputs makes them in a temporary folder (or a copy of the repository, as the
    end-to-end tests do); one that wrote into the checkout would also read what `make run` left there.
    """
    before = fingerprint()
    yield
    changed = changes(before, fingerprint())
    if changed:
        shown = "\n  ".join(changed[:40]) + (f"\n  ... and {len(changed) - 40} more" if len(changed) > 40 else "")
        pytest.fail(f"the tests wrote into the checkout's pipeline outputs ({REPO_ROOT}); write to a temporary "
                    f"folder instead:\n  {shown}", pytrace=False)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """The working directory for a process a test starts: a temporary folder holding a copy of params.yaml only."""
    return subprocess_workdir(tmp_path / "workdir")


@pytest.fixture(scope="session")
def bokeh_bars() -> pd.DataFrame:
    """AAPL, IBM, MSFT, GOOG (+AMZN) daily OHLCV, 2000-2013, real."""
    return load_source(IngestParams(source="bokeh_stocks"))


@pytest.fixture(scope="session")
def skfolio_bars() -> pd.DataFrame:
    """20 US large caps, daily close only, 2015-2022 slice, real."""
    return load_source(IngestParams(source="skfolio_sp500", start="2015-01-01"))


@pytest.fixture()
def redis_hedge_key() -> Iterator[tuple]:
    """The real Redis (127.0.0.1:6379) as online-weights state, and a fresh key that only this test writes (deleted
    afterwards); the test fails, saying so, when no Redis answers."""
    import uuid

    from alphaforge.serving.online_weights import RedisState

    url = "redis://127.0.0.1:6379/0"
    store = RedisState(url)
    key = f"alphaforge-test:hedge:{uuid.uuid4().hex[:8]}:model:1"
    try:
        store.client.ping()
    except Exception as err:  # noqa: BLE001 - the message says what is missing
        pytest.fail(f"no Redis at {url}: {err}")
    try:
        yield store, key
    finally:
        store.client.delete(key)  # only the key this test wrote


# Markers by the service a test needs, so `make test-fast` (-m "not redis and not postgres and ...") runs with none:
# a test that uses the PostgreSQL-backed MLflow server or a PostgreSQL study is marked by its fixtures; a module
# that talks to Redis or runs Airflow is marked as a whole (its fixtures start services the whole module shares).
SERVICE_FIXTURES = {"mlflow_server": ("mlflow_server", "postgres"), "postgres_url": ("postgres",),
                    "redis_hedge_key": ("redis",)}
SERVICE_MODULES = {"127.0.0.1:6379": "redis", "airflow_driver": "airflow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    sources: dict[Path, str] = {}
    for item in items:
        for fixture, marks in SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                for mark in marks:
                    item.add_marker(getattr(pytest.mark, mark))
        path = Path(str(item.fspath))
        if path not in sources:
            sources[path] = path.read_text()
        for needle, mark in SERVICE_MODULES.items():
            if needle in sources[path]:
                item.add_marker(getattr(pytest.mark, mark))

