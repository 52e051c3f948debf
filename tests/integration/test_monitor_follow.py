"""``alphaforge monitor --follow`` (alphaforge.live_monitor) on real logs: bars in the stream's SQLite bar log,
served predictions in the service's SQLite request log, written while the follower runs.

* the degradation z-test fires on a real drop, not on noise;
* a planted degradation in served traffic raises the blocking alert within seconds and calls the retrain trigger
  once; a restarted follower respects the cooldown it persisted (the real Airflow trigger:
  test_monitor_follow_airflow.py);
* matured outcomes move the online Hedge weights (state in the real Redis) toward the family that is right on
  realised returns, a restarted follower continues from Redis, and an offline replay gives the same weights;
* the live figures (IC, hit rate, net P&L, lag) and the Prometheus text are written.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from live_market import FEATURES, SYMBOLS, ServedMarket, family_predictions

from alphaforge.drift import DriftParams
from alphaforge.ensemble import HedgeEnsemble
from alphaforge.live_monitor import AirflowTrigger, DirectOutcomes, degradation_z, follow
from alphaforge.monitor import MonitorParams, RequestLog
from alphaforge.serving.online_weights import OnlineWeights, RedisState

REDIS_URL = "redis://127.0.0.1:6379/0"
PARAMS = MonitorParams(recent_bars=10, min_earlier_bars=20, follow_window_bars=20, drift_window_rows=60,
                       retrain_cooldown="1h", follow_poll_seconds=0.05)


class Follower:
    """``follow`` on a thread, stopped by the test; the figures it wrote read back from live.json."""

    def __init__(self, market: ServedMarket, out: Path, **kwargs) -> None:
        self.out = out
        self.stop = threading.Event()
        self.result = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = follow(PARAMS, log_dir=market.log_dir, bar_log=market.bar_log_path, horizon=1,
                                     cost_rate=0.0005, out_dir=out, stop=self.stop,
                                     drift=DriftParams(alerts_path=str(out / "alerts.jsonl")), **kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the test by figures()/close()
                self.error = err

        path = out / "live.json"
        before = path.stat().st_mtime_ns if path.exists() else None
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10  # following: its first figures are written (rows from now on are live)
        while not (path.exists() and path.stat().st_mtime_ns != before) and time.monotonic() < deadline:
            assert self.error is None, self.error
            time.sleep(0.01)

    def figures(self) -> dict:
        assert self.error is None, self.error
        path = self.out / "live.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def wait_for(self, condition, timeout: float = 10.0) -> float:
        """Seconds until ``condition(figures)`` holds; fails after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            figures = self.figures()
            if figures and condition(figures):
                return time.monotonic() - started
            time.sleep(0.02)
        pytest.fail(f"not reached in {timeout} s; last figures: {json.dumps(self.figures())[:3000]}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive() and self.error is None, self.error


def test_degradation_z_fires_on_a_real_drop_and_not_on_noise() -> None:
    rng = np.random.default_rng(3)
    steady = rng.normal(0.05, 0.05, 60)
    held = degradation_z({"rank_ic": steady}, recent_bars=20, min_earlier_bars=20, z_threshold=2.33, lags=0)
    assert held["fired"] is False and held["metrics"]["rank_ic"]["z"] < 2.33
    dropped = np.concatenate([steady[:40], rng.normal(-0.10, 0.05, 20)])
    fired = degradation_z({"rank_ic": dropped}, recent_bars=20, min_earlier_bars=20, z_threshold=2.33, lags=0)
    assert fired["fired"] is True and fired["metrics"]["rank_ic"]["z"] > 5 and "rank_ic fell" in fired["detail"]
    thin = degradation_z({"rank_ic": steady[:30]}, recent_bars=20, min_earlier_bars=20, z_threshold=2.33, lags=0)
    assert thin["fired"] is None and "30 matured bars" in thin["detail"]


def test_the_feature_shift_compares_the_newest_served_rows_with_the_first_ones() -> None:
    from alphaforge.live_monitor import LiveMonitor

    monitor = LiveMonitor(MonitorParams(drift_window_rows=50), horizon=1, cost_rate=0.0)
    rng = np.random.default_rng(0)

    def rows(start: int, shift: float) -> list[tuple]:
        return [("champion", "1", "AAA", start + i, json.dumps({"steady": rng.normal(), "moved": rng.normal() + shift}),
                 0.1, 0) for i in range(50)]

    monitor.add_requests(rows(0, 0.0))  # the first served rows are the reference (no reference data given)
    monitor.add_requests(rows(100, 0.0))
    assert monitor.figures()["champion"]["drift"]["shifted"] == []
    monitor.add_requests(rows(200, 3.0))
    drift = monitor.figures()["champion"]["drift"]
    assert drift["shifted"] == ["moved"] and drift["shift"]["moved"] > 2 and abs(drift["shift"]["steady"]) < 0.5


def test_cooldown_reads_seconds_or_a_duration_and_the_trigger_needs_a_password() -> None:
    assert MonitorParams(retrain_cooldown="6h").retrain_cooldown_seconds == 6 * 3600
    assert MonitorParams(retrain_cooldown=90).retrain_cooldown_seconds == 90
    assert AirflowTrigger.from_settings(MonitorParams(), environ={}) is None  # no URL: alerts only
    with pytest.raises(ValueError, match="ALPHAFORGE_AIRFLOW_PASSWORD"):
        AirflowTrigger.from_settings(MonitorParams(airflow_url="http://127.0.0.1:1"), environ={})
    trigger = AirflowTrigger.from_settings(MonitorParams(airflow_url="http://a:8080/", retrain_dag_id="d"),
                                           environ={"ALPHAFORGE_AIRFLOW_PASSWORD": "p"})
    assert (trigger.url, trigger.username, trigger.dag_id) == ("http://a:8080", "admin", "d")


def test_a_planted_degradation_alerts_within_seconds_and_retrains_once_across_a_restart(tmp_path: Path) -> None:
    market = ServedMarket(tmp_path, n_bars=60, degrade_from=40, seed=1)
    runs: list[str] = []

    def retrain(reason: str) -> str:
        runs.append(reason)
        return f"run-{len(runs)}"

    out = tmp_path / "live"
    follower = Follower(market, out, retrain=retrain)
    try:
        for t in range(40):
            market.write(t)
        healthy = follower.wait_for(lambda f: f["variants"].get("champion", {}).get("matured_rows") == 38 * 6)
        champion = follower.figures()["variants"]["champion"]
        assert champion["rank_ic"] > 0.8 and champion["hit_rate"] > 0.9 and champion["net_pnl_per_bar"] > 0
        assert champion["degradation"]["fired"] is False and runs == []
        assert healthy < 10
        started = time.monotonic()
        for t in range(40, 60):
            market.write(t)
            time.sleep(0.05)
        follower.wait_for(lambda f: f["alert"]["blocking"] and f["retrain"]["triggers"] == 1, timeout=10)
        alert_seconds = time.monotonic() - started
        follower.wait_for(lambda f: f["variants"]["champion"]["requests"] == 60 * 6)  # every row read
        figures = follower.figures()
        assert alert_seconds < 5, alert_seconds
        assert figures["variants"]["champion"]["degradation"]["metrics"]["rank_ic"]["recent"] < 0
        assert figures["retrain"]["dag_run_id"] == "run-1" and runs[0].startswith("live degradation")
        assert figures["lag_seconds"]["rows"] == 60 * 6 and figures["lag_seconds"]["p95"] < 1.0
        prom = (out / "live.prom").read_text()
        assert 'alphaforge_live_rank_ic{variant="champion"}' in prom and "alphaforge_live_alert_blocking 1" in prom
        alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
        assert [(a["rule"], a["blocking"]) for a in alerts] == [("live_degradation", True)]
        time.sleep(0.5)  # still degraded, more polls: no second trigger
        assert len(runs) == 1
    finally:
        follower.close()
    (out / "live.json").unlink()  # what the restarted follower writes, not the first one's
    restarted = Follower(market, out, retrain=retrain)  # replays the logs: blocking again, but in the cooldown
    try:
        restarted.wait_for(lambda f: f["alert"]["blocking"] and f["variants"]["champion"]["matured_rows"] == 58 * 6)
        time.sleep(0.3)
        assert len(runs) == 1 and restarted.figures()["retrain"]["triggers"] == 1
    finally:
        restarted.close()
        market.close()


def test_matured_returns_move_the_hedge_weights_in_redis_across_a_restart_as_an_offline_replay(
        tmp_path: Path, redis_hedge_key) -> None:
    store, key = redis_hedge_key
    seed = HedgeEnsemble(FEATURES, learning_rate=None, loss="sign").to_dict()
    market = ServedMarket(tmp_path, n_bars=40, seed=2)
    out = tmp_path / "live"

    def outcomes() -> DirectOutcomes:  # what a (re)started follower builds: the weights from Redis, or the seed
        return DirectOutcomes(OnlineWeights.open(seed, store=RedisState(REDIS_URL), key=key), family_predictions,
                              FEATURES)

    first = outcomes()
    assert first.online.source == "seed"
    follower = Follower(market, out, outcomes=first)
    try:
        for t in range(25):
            market.write(t)
        follower.wait_for(lambda f: f["online_weights"]["last"] and f["online_weights"]["last"]["n_updates"] == 23)
        moved = follower.figures()["online_weights"]["last"]["weights"]
    finally:
        follower.close()
    assert moved["good"] > 0.9 > 0.1 > moved["bad"]  # toward the family right on realised returns

    second = outcomes()
    assert second.online.source == "store" and second.online.info()["weights"] == moved  # survived the restart
    follower = Follower(market, out, outcomes=second)
    try:
        for t in range(25, 40):
            market.write(t)
        follower.wait_for(lambda f: f["online_weights"]["last"] and f["online_weights"]["last"]["n_updates"] == 38)
    finally:
        follower.close()
        market.close()
    assert second.online.skipped > 0  # the replayed bars were not applied twice

    # offline: the same matured sequence (the logged features, the bar log's opens) from the seed
    served = RequestLog(market.log_dir).read(pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp.now(tz="UTC"))
    hedge = HedgeEnsemble.from_dict(seed)
    for t, (stamp, rows) in enumerate(served.groupby("timestamp", sort=True)):
        if t + 2 >= 40:
            break
        rows = rows.set_index("symbol").loc[SYMBOLS]
        predictions = family_predictions(rows[FEATURES].to_numpy(dtype=float))
        hedge.update({f: predictions[:, i] for i, f in enumerate(FEATURES)}, market.realised(t), timestamp=stamp)
    saved = store.get(key)
    assert saved is not None and saved["hedge"] == hedge.to_dict()
    assert HedgeEnsemble.from_dict(saved["hedge"]).weights() == hedge.weights()
    assert math.isclose(sum(hedge.weights().values()), 1.0)


def test_outcomes_the_sink_refused_are_sent_again_in_order(tmp_path: Path) -> None:
    """The service is down for a while: its outcomes are kept, then delivered oldest bar first, so the weights end
    as if it had never been down."""
    import socket

    from alphaforge.live_monitor import BarTail, LiveMonitor, RequestTail, ServiceOutcomes
    from alphaforge.serving.online_weights import MemoryState

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    market = ServedMarket(tmp_path, n_bars=20, seed=5)
    requests, bars = RequestTail(market.log_dir, 0), BarTail(market.bar_log_path, "open")
    monitor = LiveMonitor(PARAMS, horizon=1, cost_rate=0.0, outcomes=ServiceOutcomes(f"http://127.0.0.1:{closed}"))
    seed = HedgeEnsemble(FEATURES, learning_rate=None, loss="sign").to_dict()

    def step(t: int) -> None:
        market.write(t)
        monitor.add_bars(bars.poll())
        monitor.add_requests(requests.poll())
        monitor.mature()

    for t in range(10):
        step(t)
    assert monitor.hedge["error"] and "URLError" in monitor.hedge["error"] and len(monitor._undelivered) == 8 * 6
    online = OnlineWeights.open(seed, store=MemoryState(), key="k")
    monitor.outcomes = DirectOutcomes(online, family_predictions, FEATURES)  # the service is back
    step(10)
    assert len(monitor._undelivered) == 9 * 6 and online.info()["n_updates"] == 0  # not before the retry delay
    monitor._retry_at = 0.0
    for t in range(11, 20):
        step(t)
    market.close()
    assert monitor._undelivered == [] and monitor.hedge["error"] is None and online.info()["n_updates"] == 18
    offline = HedgeEnsemble.from_dict(seed)
    for t in range(18):
        x = market.features(t)  # the log keeps 12 significant digits; the sign loss does not see the difference
        offline.update(dict(zip(FEATURES, family_predictions(x).T, strict=True)), market.realised(t),
                       timestamp=market.stamps[t])
    assert online.hedge.last_timestamp == market.stamps[17]
    assert online.info()["weights"] == pytest.approx(offline.weights(), rel=1e-9)
