"""``alphaforge monitor --follow`` feeding the real service's online weights (``bentoml serve``, a real MLflow
server, Redis): the follower reads what the service logged, matures it on the stream's bar log and posts the
one-bar outcomes to ``/admin/outcomes``, so with ``serving.online_weights`` the weights learn with nobody calling
the route; a restarted service continues from Redis, and replaying the same matured sequence offline from the
shipped seed gives the same weights."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from test_monitor_follow import Follower
from test_serving import _request
from test_serving_live import REDIS_URL, _bars_of_requests, _start, registry  # noqa: F401

from alphaforge import tracking
from alphaforge.ensemble import HedgeEnsemble
from alphaforge.featurestore.stream import Bar, BarLog
from alphaforge.live_monitor import ServiceOutcomes
from alphaforge.monitor import RequestLog
from alphaforge.serving.model import load_served_model, model_artifacts

pytestmark = [pytest.mark.slow]


class _LoggedMarket:
    """What the follower needs of a market: the service's request log and a bar log of execution prices."""

    def __init__(self, folder: Path) -> None:
        self.log_dir = folder / "requests"
        self.bar_log_path = folder / "bars.sqlite"


def test_the_follower_moves_the_services_online_weights_as_an_offline_replay(registry, tmp_path) -> None:  # noqa: F811
    tracking.set_model_alias(registry["name"], "follow", registry["good"])
    prefix = f"alphaforge-test:hedge:{uuid.uuid4().hex[:8]}:"
    extra = {"ALPHAFORGE_MODEL_ALIAS": "follow", "ALPHAFORGE_ONLINE_WEIGHTS": "true",
             "ALPHAFORGE_ONLINE_WEIGHTS_PREFIX": prefix, "ALPHAFORGE_REDIS_URL": REDIS_URL}
    key = f"{prefix}{registry['name']}:{registry['good']}"
    folder = tmp_path / "service"
    try:
        service = _start(registry, folder, **extra)
        try:
            client = httpx.Client(base_url=service.url, timeout=30)
            serving = client.post("/model_info", json={}).json()["serving"]
            seed_updates = serving["online_weights"]["n_updates"]
            features = serving["features"]
            served, dataset = _bars_of_requests(registry, features, 14)
            served = served.assign(timestamp=served["timestamp"] + (dataset["timestamp"].max()
                                                                    - served["timestamp"].min() + pd.Timedelta("1D")))
            stamps = sorted(served["timestamp"].unique())
            counts = served.groupby("symbol").size()
            symbols = sorted(counts[counts == len(stamps)].index)  # symbols with a bar at every timestamp
            served = served[served["symbol"].isin(symbols)]
            # execution prices whose one-bar return from t+1 to t+2 is the dataset's forward_return_1 of bar t
            returns = served.pivot(index="timestamp", columns="symbol", values="forward_return_1").loc[stamps, symbols]
            opens = 100.0 * np.exp(np.vstack([np.zeros((2, len(symbols))), np.cumsum(returns.to_numpy(), axis=0)]))
            bar_log = BarLog(folder / "bars.sqlite")
            assert client.post("/model_info", json={}).json()["live"]["available"] is False  # no follower yet
            # where the service looks for the follower's figures: monitor.out_dir of its settings, from its folder
            follower = Follower(_LoggedMarket(folder), folder / "reports" / "monitor",
                                outcomes=ServiceOutcomes(service.url))
            try:
                for t, stamp in enumerate(stamps):
                    ns = int(pd.Timestamp(stamp).value)
                    bar_log.append(ns, [Bar(0, ns, s, {"open": float(opens[t, i]), "close": float(opens[t, i])})
                                        for i, s in enumerate(symbols)], None)
                    rows = served[served["timestamp"] == stamp]
                    answer = client.post("/predict", json=_request(rows, features, request_id=f"bar-{t}"))
                    assert answer.status_code == 200, answer.text
                    time.sleep(0.6)  # the service's request-log writer flushes every half second
                follower.wait_for(lambda f: (f["online_weights"]["last"] or {}).get("n_updates") == seed_updates + 12,
                                  timeout=30)
                fed = follower.figures()["online_weights"]
            finally:
                follower.close()
                bar_log.close()
            answered = client.post("/model_info", json={}).json()
            live = answered["serving"]["online_weights"]
        finally:
            service.stop()
        # /model_info carries the follower's live figures of the served signal, as live.json and live.html say
        written = json.loads((folder / "reports" / "monitor" / "live.json").read_text())
        shown = answered["live"]
        assert shown["available"] is True and shown["updated_at"] == written["updated_at"]
        champion = shown["variants"]["champion"]
        assert 0 < champion["requests"] == written["variants"]["champion"]["requests"] <= len(served)
        assert champion["matured_rows"] > 0 and champion["rank_ic"] == written["variants"]["champion"]["rank_ic"]
        assert shown["lag_seconds"]["p95"] < 1.0 and shown["age_seconds"] >= 0
        page = (folder / "reports" / "monitor" / "live.html").read_text()
        assert "Live figures per variant" in page and "<td>champion</td>" in page
        assert fed["error"] is None and live["weights"] == fed["last"]["weights"]
        assert live["n_updates"] == seed_updates + 12 and live["weights"] != serving["online_weights"]["weights"]

        service = _start(registry, tmp_path / "restarted", **extra)
        try:
            restarted = httpx.Client(base_url=service.url, timeout=30).post("/model_info", json={}).json()
        finally:
            service.stop()
        assert restarted["serving"]["online_weights"]["source"] == "store"
        assert restarted["serving"]["online_weights"]["weights"] == live["weights"]

        # offline: the logged features and the bar log's prices, one Hedge step per bar from the shipped seed
        local = load_served_model(registry["good_dir"], name=registry["name"], version=registry["good"])
        hedge = HedgeEnsemble.from_dict(json.loads(Path(model_artifacts(local.source_dir)["hedge_seed"]).read_text()))
        logged = RequestLog(folder / "requests").read(pd.Timestamp("2000-01-01", tz="UTC"),
                                                      pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D"))
        for t, stamp in enumerate(stamps[:12]):
            rows = logged[logged["timestamp"] == stamp].set_index("symbol").loc[symbols]
            x = rows[local.features].to_numpy(dtype=float)
            realised = np.log(opens[t + 2] / opens[t + 1])
            hedge.update(dict(zip(local.families, local.family_predictions(x).T, strict=True)), realised,
                         timestamp=stamp)
        assert hedge.weights() == pytest.approx(live["weights"], rel=1e-12, abs=1e-15)
    finally:
        redis.Redis.from_url(REDIS_URL).delete(key)  # only the key this test's services wrote
