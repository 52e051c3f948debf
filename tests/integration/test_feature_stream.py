"""The online store (the real Redis server at 127.0.0.1:6379, and the in-process fallback) and `alphaforge stream`.

Each test uses its own key prefix and deletes its keys. Data: real bokeh OHLCV, a slice.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from isolation import subprocess_workdir

from alphaforge.features import FEATURE_VERSION, FeatureParams, compute_features
from alphaforge.featurestore.config import FeatureStoreParams
from alphaforge.featurestore.online import FeatureVersionMismatch, MissingFeatures, OnlineStore
from alphaforge.featurestore.stream import BarError, run_stream
from alphaforge.schema import DataError

REDIS_URL = "redis://127.0.0.1:6379/0"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    name = f"alphaforge-test:{uuid.uuid4().hex[:12]}:"
    yield name
    OnlineStore.from_params(FeatureStoreParams(redis_url=REDIS_URL, key_prefix=name)).clear()


@pytest.fixture(scope="module")
def bars(bokeh_bars: pd.DataFrame) -> pd.DataFrame:
    """Real daily OHLCV of five stocks from mid-2012 (FB's first bars included): about 1,200 bars."""
    sliced = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-05-01", tz="UTC")]
    return sliced.reset_index(drop=True)


def _csv(bars: pd.DataFrame, path: Path) -> Path:
    bars.assign(timestamp=bars["timestamp"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


def _store_params(prefix: str, tmp_path: Path, name: str = "log", **extra: object) -> FeatureStoreParams:
    return FeatureStoreParams(redis_url=REDIS_URL, key_prefix=prefix, bar_log=tmp_path / f"{name}.sqlite", **extra)


def _latest_batch_rows(bars: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    computed = compute_features(bars, FeatureParams())
    return computed.groupby("symbol").tail(1).set_index("symbol")[["timestamp", *names]].sort_index()


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [REDIS_URL, None], ids=["redis", "in-process"])
def test_round_trip_is_exact_and_vectors_expire_after_the_ttl(url: str | None, prefix: str) -> None:
    store = OnlineStore.from_params(FeatureStoreParams(redis_url=url, key_prefix=prefix, ttl_seconds=1))
    names = ["log_return_1", "rsi", "volatility_20"]
    values = np.array([[0.01, 55.5, np.nan], [-1e-300, 0.0, 1 / 3]])
    stamp = pd.Timestamp("2024-03-01 15:30", tz="UTC")
    store.write(stamp.value, ["AAPL", "MSFT"], names, values, FEATURE_VERSION)

    frame = store.read(["MSFT", "AAPL"], feature_version=FEATURE_VERSION)
    assert list(frame.columns) == ["timestamp", "symbol", *names, "feature_version"]
    assert frame["symbol"].tolist() == ["MSFT", "AAPL"]  # the order asked
    np.testing.assert_array_equal(frame[names].to_numpy(), values[::-1])  # bit for bit, NaN included
    assert (frame["timestamp"] == stamp).all() and frame.attrs["feature_version"] == FEATURE_VERSION
    assert 0 <= store.ttl("AAPL") <= 1
    assert store.symbols() == ["AAPL", "MSFT"]
    assert store.read("AAPL")["symbol"].tolist() == ["AAPL"]
    with pytest.raises(FeatureVersionMismatch, match="'AAPL'.*version"):
        store.read("AAPL", feature_version="other")
    with pytest.raises(MissingFeatures, match="NOPE"):
        store.read(["AAPL", "NOPE"])
    assert store.read(["NOPE", "AAPL"], missing="skip")["symbol"].tolist() == ["AAPL"]
    chosen = store.read("AAPL", features=["volatility_20", "log_return_1"])
    assert list(chosen.columns) == ["timestamp", "symbol", "volatility_20", "log_return_1", "feature_version"]
    with pytest.raises(DataError, match="macd"):
        store.read("AAPL", features=["macd"])

    time.sleep(2.1)
    with pytest.raises(MissingFeatures, match="AAPL"):
        store.read("AAPL")
    assert store.ttl("AAPL") == -2


def test_an_unreachable_server_is_named() -> None:
    from alphaforge.featurestore.online import StoreUnavailable

    store = OnlineStore.from_params(FeatureStoreParams(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        store.read("AAPL")


# --------------------------------------------------------------------------------------------
# The streamer
# --------------------------------------------------------------------------------------------


def test_streamed_features_are_the_batch_features_of_each_symbols_last_bar(
    bars: pd.DataFrame, prefix: str, tmp_path: Path
) -> None:
    store_params = _store_params(prefix, tmp_path)
    summary = run_stream(FeatureParams(), store_params, str(_csv(bars, tmp_path / "bars.csv")))
    assert summary.bars == len(bars) and summary.bad_bars == 0
    stored = OnlineStore.from_params(store_params).read(sorted(bars["symbol"].unique())).set_index("symbol")
    names = [c for c in stored.columns if c not in ("timestamp", "feature_version")]
    expected = _latest_batch_rows(bars, names)
    pd.testing.assert_series_equal(stored["timestamp"], expected["timestamp"], check_names=False)
    np.testing.assert_allclose(stored[names].to_numpy(), expected[names].to_numpy(), rtol=1e-9, atol=1e-9,
                               equal_nan=True)


def test_a_stream_killed_mid_way_and_restarted_stores_what_an_uninterrupted_one_does(
    bars: pd.DataFrame, prefix: str, tmp_path: Path
) -> None:
    source = _csv(bars, tmp_path / "bars.csv")
    uninterrupted = _store_params(prefix + "whole:", tmp_path, "whole")
    run_stream(FeatureParams(), uninterrupted, str(source))

    # its own folder and params: no models/regimes/model.json of a finished `make run` to add regime columns
    workdir = subprocess_workdir(tmp_path / "workdir", {"feature_store": {
        "redis_url": REDIS_URL, "key_prefix": prefix, "bar_log": str(tmp_path / "killed.sqlite"),
        "checkpoint_every": 7}})
    command = [sys.executable, "-m", "alphaforge.cli", "stream", str(source), "--params", str(workdir / "params.yaml")]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen([*command, "--pace", "0.01"], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        logged = 0
        while logged < 300 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            try:
                with sqlite3.connect(tmp_path / "killed.sqlite") as connection:
                    logged = connection.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
            except sqlite3.OperationalError:
                pass  # the streamer has not created the table yet
        assert process.poll() is None, "the stream ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert 300 <= logged < len(bars)

    finished = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert '"already_stored": 0' not in finished.stdout  # it did skip what the first run had stored

    symbols = sorted(bars["symbol"].unique())
    restarted = OnlineStore.from_params(_store_params(prefix, tmp_path)).read(symbols)
    whole = OnlineStore.from_params(uninterrupted).read(symbols)
    pd.testing.assert_frame_equal(restarted, whole)  # identical, not merely close
    with sqlite3.connect(tmp_path / "killed.sqlite") as connection:
        assert connection.execute("SELECT COUNT(*) FROM bars").fetchone()[0] == len(bars)


def test_a_restart_without_a_saved_state_rebuilds_it_from_the_bar_log(
    bars: pd.DataFrame, prefix: str, tmp_path: Path
) -> None:
    store_params = _store_params(prefix, tmp_path, checkpoint_every=10_000)
    cut = pd.Timestamp("2012-11-01", tz="UTC")
    run_stream(FeatureParams(), store_params, str(_csv(bars[bars["timestamp"] < cut], tmp_path / "early.csv")))
    with sqlite3.connect(store_params.bar_log) as connection:
        connection.execute("DELETE FROM checkpoint")  # as if it had died before its first saved state
    OnlineStore.from_params(store_params).clear()
    summary = run_stream(FeatureParams(), store_params, str(_csv(bars, tmp_path / "all.csv")))
    assert summary.replayed_steps > 0 and summary.already_stored == int((bars["timestamp"] < cut).sum())
    stored = OnlineStore.from_params(store_params).read(sorted(bars["symbol"].unique())).set_index("symbol")
    names = [c for c in stored.columns if c not in ("timestamp", "feature_version")]
    np.testing.assert_allclose(stored[names].to_numpy(), _latest_batch_rows(bars, names)[names].to_numpy(),
                               rtol=1e-9, atol=1e-9, equal_nan=True)


def test_bad_lines_name_line_and_rule_and_stop_or_are_skipped(prefix: str, tmp_path: Path) -> None:
    lines = "\n".join([
        "timestamp,symbol,open,high,low,close,volume",
        "2024-01-02T00:00:00Z,AAA,10,11,9,10.5,100",
        "2024-01-02T00:00:00Z,BBB,20,21,19,-20.5,100",   # line 3: negative close
        "2024-01-03T00:00:00Z,AAA,10,11,9,10.5",         # line 4: a field short
        "yesterday,AAA,10,11,9,10.5,100",                # line 5: no date-time
        "2024-01-03T00:00:00Z,AAA,10,9,8,10.5,100",      # line 6: high below close
        "2024-01-03T00:00:00Z,BBB,20,21,19,20.5,100",
        "2024-01-02T00:00:00Z,CCC,20,21,19,20.5,100",    # line 8: late
        "2024-01-04T00:00:00Z,AAA,10,11,9,10.5,100",
    ]) + "\n"
    features = FeatureParams()
    with pytest.raises(BarError, match=r"line 3: column 'close': rule positive_price"):
        run_stream(features, _store_params(prefix, tmp_path, "stop"), "-", stdin=io.StringIO(lines))
    summary = run_stream(features, _store_params(prefix, tmp_path, "skip"), "-", on_bad_bar="skip",
                         stdin=io.StringIO(lines))
    assert summary.bad_bars == 5 and summary.bars == 3
    rules = ["line 3:.*positive_price", "line 4:.*csv_fields", "line 5:.*timestamp_iso8601",
             "line 6:.*high_ge_open_close", "line 8:.*time_order"]
    for rule, message in zip(rules, summary.errors, strict=True):
        assert pd.Series([message]).str.contains(rule).all(), (rule, message)
    stored = OnlineStore.from_params(_store_params(prefix, tmp_path)).read(["AAA", "BBB"])
    assert stored["timestamp"].tolist() == [pd.Timestamp("2024-01-04", tz="UTC"), pd.Timestamp("2024-01-03", tz="UTC")]


def test_a_live_stdin_stream_writes_a_timestamp_once_its_input_goes_idle(prefix: str, tmp_path: Path) -> None:
    """The features of the latest timestamp reach the store without waiting for the next timestamp's bars."""
    import threading

    read_end, write_end = os.pipe()
    store_params = _store_params(prefix, tmp_path)
    outcome: dict[str, object] = {}

    def stream() -> None:
        with os.fdopen(read_end) as lines:
            outcome["summary"] = run_stream(FeatureParams(), store_params, "-", stdin=lines, on_bad_bar="skip",
                                            flush_idle_seconds=0.2)

    thread = threading.Thread(target=stream)
    thread.start()
    writer = os.fdopen(write_end, "w")
    try:
        writer.write('{"timestamp": "2024-01-02T21:00:00Z", "symbol": "AAA", "open": 10, "high": 11, "low": 9, '
                     '"close": 10.5, "volume": 100}\n'
                     '{"timestamp": "2024-01-02T21:00:00Z", "symbol": "BBB", "open": 20, "high": 21, "low": 19, '
                     '"close": 20.5, "volume": 100}\n')
        writer.flush()
        store = OnlineStore.from_params(store_params)
        deadline = time.monotonic() + 20
        while not store.read(["AAA", "BBB"], missing="skip").shape[0] == 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.read(["AAA", "BBB"])["timestamp"].eq(pd.Timestamp("2024-01-02 21:00", tz="UTC")).all()
        writer.write('{"timestamp": "2024-01-02T21:00:00Z", "symbol": "CCC", "open": 5, "high": 6, "low": 4, '
                     '"close": 5.5, "volume": 100}\n'  # too late: that timestamp was written
                     '{"timestamp": "2024-01-03T21:00:00Z", "symbol": "AAA", "open": 10, "high": 12, "low": 9, '
                     '"close": 11.5, "volume": 100}\n')
    finally:
        writer.close()
        thread.join(timeout=30)
    summary = outcome["summary"]
    assert summary.bad_bars == 1 and "time_order" in summary.errors[0] and summary.steps == 2  # type: ignore[attr-defined]
    assert store.read("AAA")["timestamp"].item() == pd.Timestamp("2024-01-03 21:00", tz="UTC")
