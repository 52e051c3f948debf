"""Served-traffic monitoring: the request log keeps every row exactly once across files, days and writer
processes; the monitor joins realised returns, raises the degradation alert on a planted performance drop
(and not without one), catches drifted served features, and measures its own lag.

The served traffic is the seeded synthetic market's newest bars, predicted by its planted expected return (a
genuinely good model); the champion's reference data is the bars before them.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.drift import DriftParams
from alphaforge.features import FeatureParams, compute_features, compute_labels
from alphaforge.monitor import MonitorParams, RequestLog, run_monitor
from alphaforge.schema import DataError

SERVED_BARS = 60
RECENT_BARS = 20
T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")


def _rows(n: int, *, start: pd.Timestamp = T0, step: str = "1min", prefix: str = "r") -> pd.DataFrame:
    """``n`` logged rows with two features, one per minute from ``start``."""
    received = pd.date_range(start, periods=n, freq=step)
    return pd.DataFrame({
        "request_id": [f"{prefix}{i}" for i in range(n)], "received_at": received,
        "model_name": "alphaforge-signal", "model_version": "3", "variant": "champion",
        "symbol": [f"S{i % 4}" for i in range(n)], "timestamp": received.floor("D"),
        "prediction": np.linspace(-0.01, 0.01, n), "latency_ms": 2.5,
        "rsi": np.linspace(30.0, 70.0, n), "volatility_20": np.full(n, 0.01),
    })


# ---------------------------------------------------------------------------------------------- the request log


def test_request_log_round_trips_rows_and_refuses_bad_ones(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log")
    rows = _rows(10)
    assert log.append(rows) == 10
    as_dicts = [{**{k: v for k, v in r.items() if k not in ("rsi", "volatility_20")},
                 "request_id": f"d{i}", "features": {"rsi": r["rsi"], "volatility_20": None}}
                for i, r in enumerate(rows.to_dict("records"))]
    assert log.append(as_dicts[:3]) == 3
    read = log.read(T0, T0 + pd.Timedelta(hours=1))
    assert len(read) == 13 and read["received_at"].is_monotonic_increasing
    first = read[read["request_id"].str.startswith("r")].reset_index(drop=True)
    pd.testing.assert_series_equal(first["rsi"], rows["rsi"], check_names=False)
    pd.testing.assert_series_equal(first["timestamp"], rows["timestamp"], check_names=False, check_dtype=False)
    assert read.loc[read["request_id"] == "d0", "volatility_20"].isna().all()
    assert (read["logged_at"] >= read["received_at"]).all()

    before = len(log.read(T0, T0 + pd.Timedelta(days=1)))
    naive = _rows(3, prefix="n")
    naive["received_at"] = naive["received_at"].dt.tz_localize(None)
    with pytest.raises(DataError, match=r"column 'received_at' row 0: .*timezone-aware"):
        log.append(naive)
    with pytest.raises(DataError, match=r"column 'variant' row 1"):
        log.append(_rows(3, prefix="v").assign(variant=["champion", "shadow", "champion"]))
    with pytest.raises(DataError, match=r"row 0 lacks \[\] / has unknown \['rsi', 'volatility_20'\]"):
        log.append(_rows(1, prefix="u").assign(features=[{"rsi": 1.0}]))  # features twice: as columns and a mapping
    duplicate = pd.concat([_rows(2, prefix="x"), _rows(10)])  # 2 new rows, then rows already logged
    with pytest.raises(DataError, match="unique; none of these 12 rows were written"):
        log.append(duplicate)
    assert len(log.read(T0, T0 + pd.Timedelta(days=1))) == before


def test_request_log_rotates_by_day_and_size_and_reads_only_the_window(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log", max_file_bytes=20_000)
    late_evening = T0 + pd.Timedelta(hours=23, minutes=30)
    for batch in range(6):  # two hours of rows, 50 per append, crossing midnight
        assert log.append(_rows(50, start=late_evening + pd.Timedelta(seconds=24 * 50 * batch), step="24s",
                                prefix=f"b{batch}-")) == 50
    names = [p.name for p in log.files()]
    assert any(n.startswith("requests-2024-03-01") for n in names)
    assert any(n.startswith("requests-2024-03-02") for n in names)
    assert len(log.files("2024-03-01")) > 1, names  # size rotation within a day
    everything = log.read(T0, T0 + pd.Timedelta(days=2))
    assert len(everything) == 300 and everything["request_id"].is_unique
    midnight = T0 + pd.Timedelta(days=1)
    window = log.read(midnight - pd.Timedelta(minutes=5), midnight + pd.Timedelta(minutes=5))
    expected = everything[(everything["received_at"] >= midnight - pd.Timedelta(minutes=5))
                          & (everything["received_at"] < midnight + pd.Timedelta(minutes=5))]
    assert window["request_id"].tolist() == expected["request_id"].tolist() and len(window) == 25


def _append_from_process(directory: str, worker: int) -> None:
    log = RequestLog(directory)
    for batch in range(20):
        log.append(_rows(5, start=T0 + pd.Timedelta(minutes=batch), step="1s", prefix=f"w{worker}-{batch}-"))


def test_concurrent_writer_processes_lose_no_row(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_from_process, args=(str(tmp_path / "log"), w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    read = RequestLog(tmp_path / "log").read(T0, T0 + pd.Timedelta(hours=1))
    assert len(read) == 4 * 20 * 5 and read["request_id"].is_unique


# ---------------------------------------------------------------------------------------------- the monitor


def served_market(*, broken: bool, vol_multiple: float = 1.0) -> dict[str, Any]:
    """Reference frame, served request rows and realised returns from one synthetic market.

    The service predicts the planted expected return for every symbol of each of the newest 60 bars, one
    request per bar received 23 hours after the bar; with ``broken``, the last 20 bars' predictions are
    shuffled across rows (same distribution, no skill). ``vol_multiple`` scales the served features'
    volatility columns (drifted traffic).
    """
    bars, truth = make_synthetic(SyntheticParams(n_symbols=20, n_bars=700, seed=11, regime_switch_prob=0.0,
                                                 signal_strength=0.5))
    features = compute_features(bars, FeatureParams())
    features["prediction"] = truth["expected_return_1"].to_numpy()
    stamps = np.sort(features["timestamp"].unique())
    served = features[features["timestamp"] >= stamps[-SERVED_BARS]].copy()
    if broken:
        late = served["timestamp"] >= stamps[-RECENT_BARS]
        served.loc[late, "prediction"] = np.random.default_rng(5).permutation(served.loc[late, "prediction"].to_numpy())
    for column in ("volatility_5", "volatility_20", "atr_ratio"):
        served[column] *= vol_multiple
    served["received_at"] = served["timestamp"] + pd.Timedelta(hours=23)
    served["request_id"] = "bar-" + served["timestamp"].dt.strftime("%Y%m%d")
    served = served.assign(model_name="alphaforge-signal", model_version="7", variant="champion", latency_ms=4.0)
    realised = compute_labels(bars, 1)[["timestamp", "symbol", "forward_return"]]
    return {"reference": features[features["timestamp"] < stamps[-SERVED_BARS]], "served": served,
            "realised": realised, "window_end": served["received_at"].max() + pd.Timedelta(hours=1)}


def monitor(tmp_path: Path, market: dict[str, Any], name: str, settings: MonitorParams | None = None,
            **options: Any) -> Any:
    log_dir = tmp_path / name / "log"
    if not log_dir.exists():
        RequestLog(log_dir).append(market["served"])
    return run_monitor(log_dir, market["reference"], market["realised"], settings or MonitorParams(recent_bars=RECENT_BARS),
                       drift_params=DriftParams(alerts_path=str(tmp_path / "alerts.jsonl")),
                       window_end=market["window_end"], out_dir=tmp_path / name / "out", **options)


def test_a_planted_performance_drop_raises_the_degradation_alert(tmp_path: Path) -> None:
    steady = monitor(tmp_path, served_market(broken=False), "steady", write_html=False)
    broken = monitor(tmp_path, served_market(broken=True), "broken")
    for result in (steady, broken):
        # the last two bars are pending: a signal enters at the next bar's open and is held one bar
        assert result.summary["matured_rows"] == result.summary["requests"]["unique_rows"] - 2 * 20
        assert result.summary["requests"]["requests"] == SERVED_BARS
        assert result.check.share < 0.5  # same market, no data drift
        assert result.check.prediction is not None and "prediction" not in [f.column for f in result.check.features]
    earlier, recent = steady.summary["degradation"]["earlier"], steady.summary["degradation"]["recent"]
    assert earlier["rank_ic"] > 0.2 and recent["rank_ic"] > 0.5 * earlier["rank_ic"]
    assert not steady.degraded and steady.alerts == []
    assert broken.degraded and [a.rule for a in broken.alerts] == ["degradation"]
    assert broken.summary["degradation"]["recent"]["rank_ic"] < 0.5 * broken.summary["degradation"]["earlier"]["rank_ic"]
    assert "performance degradation on served traffic: rank_ic fell" in broken.alerts[0].detail
    logged = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["source"], a["rule"]) for a in logged] == [("monitor", "degradation")]
    live = pd.read_csv(broken.paths["live"])
    assert len(live) >= 9 and live["rank_ic"].iloc[:5].mean() > 0.2  # weekly live IC; the skill was there early on
    assert broken.paths["report"].stat().st_size > 100_000
    # an earlier skill below degradation_min_edge is noise: nothing to degrade, no alert
    unskilled = monitor(tmp_path, served_market(broken=True), "broken", write_html=False,
                        settings=MonitorParams(recent_bars=RECENT_BARS, degradation_min_edge=0.9))
    assert not unskilled.degraded and "no skill to degrade" in unskilled.summary["degradation"]["detail"]


def test_drifted_served_features_raise_the_drift_alert(tmp_path: Path) -> None:
    drifted = monitor(tmp_path, served_market(broken=False, vol_multiple=3.0), "drifted", write_html=False)
    assert {"volatility_5", "volatility_20", "atr_ratio"} <= set(drifted.check.drifted)
    # three of the 24 features drifted: reported per feature, below the share that makes a data-drift alert
    assert not drifted.check.dataset_drift
    wild = served_market(broken=False)
    for column in [c for c in wild["served"].columns if c.startswith(("volatility", "log_return", "sma_", "ema_"))]:
        wild["served"][column] = wild["served"][column] * 3.0
    result = monitor(tmp_path, wild, "wild", write_html=False)
    assert "data_drift" in [a.rule for a in result.alerts]


def test_monitoring_lag_is_measured_on_rows_seen_for_the_first_time(tmp_path: Path) -> None:
    reference = pd.DataFrame({
        "timestamp": pd.date_range("2020-01-01", periods=400, freq="D", tz="UTC").repeat(4),
        "symbol": ["S0", "S1", "S2", "S3"] * 400,
        "rsi": np.random.default_rng(0).uniform(20, 80, 1600), "volatility_20": 0.01,
    })
    log = RequestLog(tmp_path / "log")
    now = pd.Timestamp.now(tz="UTC")
    log.append(_rows(40, start=now - pd.Timedelta(seconds=120), step="1s"))
    settings = MonitorParams(lookback_hours=1)
    drift = DriftParams(alerts_path=str(tmp_path / "alerts.jsonl"))

    def run() -> tuple[Any, float]:
        started = time.time()
        result = run_monitor(tmp_path / "log", reference, None, settings, drift_params=drift,
                             out_dir=tmp_path / "out", write_html=False)
        return result, time.time() - started

    first, took = run()
    lag = first.summary["lag_seconds"]
    assert lag["rows"] == 40
    assert 100 <= lag["p50"] <= 100.5 + took + 5  # the median row was received 100.5 s before `now`
    assert 120 <= lag["max"] <= 120 + took + 5
    # 40 logged rows predict 4 (symbol, bar) pairs: the latest prediction of each counts, none has matured yet
    assert first.summary["requests"]["rows"] == 40 and first.summary["requests"]["unique_rows"] == 4
    assert first.summary["pending_rows"] == 4 and first.summary["degradation"]["fired"] is None
    again, _ = run()
    assert again.summary["lag_seconds"]["rows"] == 0  # nothing new since the last run
    log.append(_rows(5, start=pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=30), step="1s", prefix="new"))
    third, took = run()
    assert third.summary["lag_seconds"]["rows"] == 5 and 30 <= third.summary["lag_seconds"]["max"] <= 30 + took + 5


def test_the_monitor_refuses_a_log_without_the_models_features(tmp_path: Path) -> None:
    market = served_market(broken=False)
    market["served"] = market["served"].drop(columns=["rsi"])
    with pytest.raises(DataError, match=r"features \['rsi'\] are not in the request log"):
        monitor(tmp_path, market, "no-rsi", write_html=False)
    with pytest.raises(DataError, match="no champion requests received"):
        run_monitor(tmp_path / "empty", market["reference"], None, MonitorParams(), window_end=market["window_end"],
                    drift_params=DriftParams(alerts_path=str(tmp_path / "alerts.jsonl")), out_dir=tmp_path / "x")
