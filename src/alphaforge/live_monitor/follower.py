"""The follower's loop (:func:`follow`) and ``alphaforge monitor --follow`` (:func:`follow_from_params`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.drift import Alert, DriftParams, dispatch_alerts
from alphaforge.io import atomic_write, write_json_atomic
from alphaforge.live_monitor.figures import _prometheus, _quantiles
from alphaforge.live_monitor.outcomes import OutcomeSink, ServiceOutcomes
from alphaforge.live_monitor.pages import live_page
from alphaforge.live_monitor.sources import BarTail, RequestTail
from alphaforge.live_monitor.state import LiveMonitor
from alphaforge.live_monitor.trigger import AirflowTrigger, RetrainCooldown
from alphaforge.monitor import MonitorParams
from alphaforge.schema import DataError

log = logging.getLogger(__name__)


@dataclass
class FollowResult:
    """What a follower run did: its last figures, the retrain runs it triggered, the lags it measured."""

    figures: dict[str, Any]
    triggered: list[str]
    polls: int


def follow(params: MonitorParams, *, log_dir: str | Path, bar_log: str | Path, horizon: int, cost_rate: float,
           price_column: str = "open", out_dir: str | Path | None = None, drift: DriftParams | None = None,
           reference: pd.DataFrame | None = None, outcomes: OutcomeSink | None = None,
           retrain: Callable[[str], str] | None = None, stop: threading.Event | None = None,
           max_seconds: float | None = None, clock: Callable[[], float] = time.time) -> FollowResult:
    """Tail the request log and the bar log until ``stop`` is set (or ``max_seconds``), writing ``live.json`` and
    ``live.prom`` (and the page ``live.html``) under ``out_dir`` after every poll that changed something (see the module docstring).

    ``retrain(reason) -> dag_run_id`` is called when the champion's degradation alert is on and the cooldown since
    the last trigger (``retrain_state.json``, kept across restarts) has passed: :class:`AirflowTrigger`."""
    try:
        cooldown = params.retrain_cooldown_seconds
    except ValueError as err:
        raise DataError(f"monitor.retrain_cooldown {params.retrain_cooldown!r}: not seconds or a duration such as "
                        f"6h or 30min ({err})") from err
    drift = drift or DriftParams()
    out = Path(out_dir or params.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    retrain_state = RetrainCooldown(out / "retrain_state.json", cooldown)
    since_us = int((clock() - params.lookback_hours * 3600) * 1e6)
    requests, bars = RequestTail(log_dir, since_us), BarTail(bar_log, price_column)
    monitor = LiveMonitor(params, horizon=horizon, cost_rate=cost_rate, drift=drift, reference=reference,
                          outcomes=outcomes)
    lags: deque[float] = deque(maxlen=2000)
    triggered: list[str] = []
    started, polls = clock(), 0
    document: dict[str, Any] = {}
    stop = stop or threading.Event()
    try:
        while not stop.is_set() and (max_seconds is None or clock() - started < max_seconds):
            polls += 1
            new_requests, new_bars = requests.poll(), bars.poll()
            if not (new_requests or new_bars or polls == 1):
                stop.wait(params.follow_poll_seconds)
                continue
            monitor.add_bars(new_bars)
            monitor.add_requests(new_requests)
            monitor.mature()
            variants = monitor.figures()
            champion = variants.get("champion", {}).get("degradation", {})
            blocking = bool(champion.get("fired"))
            _dispatch(monitor, variants, drift)
            now = clock()
            if blocking and retrain is not None and retrain_state.due(now):
                try:
                    run_id = retrain(champion["detail"])
                except Exception as err:  # recorded, logged, retried after _RETRY_SECONDS
                    retrain_state.failed(now, err)
                    log.error("live monitor: could not trigger %s: %s", params.retrain_dag_id, err)
                else:
                    retrain_state.succeeded(now, run_id, champion["detail"])
                    triggered.append(run_id)
                    log.warning("live monitor: triggered %s (run %s): %s", params.retrain_dag_id, run_id,
                                champion["detail"])
            written_at = clock()
            # rows committed while following (a restart's replay of older rows is no lag)
            lags.extend(written_at - row[6] / 1e6 for row in new_requests if row[6] / 1e6 >= started)
            document = {
                "updated_at": datetime.fromtimestamp(written_at, UTC).isoformat(), "horizon": horizon,
                "execution_price": price_column, "cost_rate_per_side": cost_rate, "variants": variants,
                "alert": {"blocking": blocking, "detail": champion.get("detail")},
                "retrain": {"dag_id": params.retrain_dag_id, "cooldown_seconds": cooldown,
                            "enabled": retrain is not None, **retrain_state.summary()},
                "online_weights": {**monitor.hedge, "undelivered_rows": len(monitor._undelivered)},
                "lag_seconds": _quantiles(lags),
                "events": {"request_rows": len(new_requests), "bars": len(new_bars), "polls": polls},
            }
            write_json_atomic(document, out / "live.json")
            atomic_write(out / "live.prom", lambda tmp: Path(tmp).write_text(_prometheus(document)))
            atomic_write(out / "live.html", lambda tmp: Path(tmp).write_text(live_page(document)))
            stop.wait(params.follow_poll_seconds)
    finally:
        requests.close()
        bars.close()
    return FollowResult(figures=document, triggered=triggered, polls=polls)


def _dispatch(monitor: LiveMonitor, variants: Mapping[str, Any], drift: DriftParams) -> None:
    """An alert line (and webhook) when a variant's degradation test starts firing; blocking for the champion."""
    for variant, figures in variants.items():
        state = monitor.variants[variant]
        fired = bool(figures["degradation"]["fired"])
        if fired and not state.alerting:
            alert = Alert(created_at=datetime.now(UTC).isoformat(), source="monitor", rule="live_degradation",
                          blocking=variant == "champion", detail=f"{variant}: {figures['degradation']['detail']}")
            try:
                dispatch_alerts([alert], drift, context={"source": "monitor --follow", "variant": variant})
            except Exception as err:  # recorded in the alerts log before the webhook; the follower goes on
                log.error("live monitor: alert not delivered: %s", err)
        state.alerting = fired


def follow_from_params(params: Any, *, log_dir: str | None = None, bar_log: str | Path | None = None,
                       service_url: str | None = None, max_seconds: float | None = None,
                       environ: Mapping[str, str] = os.environ) -> FollowResult:
    """``alphaforge monitor --follow``: :func:`follow` with the settings of a loaded params.yaml (``Params``).

    Horizon ``labels.horizon``; execution price and costs from ``evaluate`` (commission + half the fallback
    spread, per side); with ``serving.online_weights`` the champion's outcomes go to the service's
    ``/admin/outcomes`` (``service_url``, default 127.0.0.1 on ``serving.http_port``; the token from
    ``ALPHAFORGE_ADMIN_TOKEN``); the retrain trigger from :meth:`AirflowTrigger.from_settings`."""
    from alphaforge.backtest.market import resolve_execution

    settings: MonitorParams = params.monitor
    evaluation = params.evaluate
    execution = resolve_execution(list(params.feature_store.bar_columns), evaluation.execution)
    outcomes = None
    if params.serving.online_weights:
        outcomes = ServiceOutcomes(service_url or f"http://127.0.0.1:{params.serving.http_port}",
                                   token=environ.get("ALPHAFORGE_ADMIN_TOKEN"))
    retrain = AirflowTrigger.from_settings(settings, environ)
    log.info("live monitor: following %s and %s (horizon %d, %s); outcomes -> %s; retrain -> %s",
             log_dir or settings.log_dir, bar_log or params.feature_store.bar_log, params.labels.horizon, execution,
             outcomes.url if outcomes else "off (serving.online_weights false)",
             f"{retrain.url} {retrain.dag_id}" if retrain else "off (no Airflow URL)")
    return follow(settings, log_dir=log_dir or settings.log_dir, bar_log=bar_log or params.feature_store.bar_log,
                  horizon=params.labels.horizon,
                  cost_rate=evaluation.cost_bps / 1e4 + 0.5 * evaluation.fallback_spread_bps / 1e4,
                  price_column="open" if execution == "next_open" else "close", drift=params.drift,
                  outcomes=outcomes, retrain=retrain, max_seconds=max_seconds)
