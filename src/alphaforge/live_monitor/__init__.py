"""``alphaforge monitor --follow``: the served signal's live figures, updated within a second of the logs.

The batch monitor (:mod:`alphaforge.monitor`) reads a day of traffic at once; this follower tails the same
sources every ``monitor.follow_poll_seconds`` (100 ms) and keeps rolling figures per variant:

* **sources**: the service's request log (:class:`~alphaforge.monitor.RequestLog`, new rows by SQLite rowid
  per file) and the bar log ``alphaforge stream`` appends every streamed bar to (``feature_store.bar_log``,
  the source that exists wherever the online store is fed);
* **maturity**, with the gate's conventions (:mod:`alphaforge.backtest.market`): a prediction for bar *t*
  trades at bar *t+1*'s execution price (its open, ``next_open``, else its close); its label is
  ``log(P[t+1+h] / P[t+1])`` (``labels.horizon`` = *h*), known once bar *t+1+h* of that symbol is logged.
  The online Hedge weights learn from ``log(P[t+2] / P[t+1])`` (the one-bar execution return the
  ``/admin/outcomes`` route expects), known once bar *t+2* is logged;
* **live figures** over the newest ``monitor.follow_window_bars`` matured bars: IC and rank IC (mean of the
  per-bar cross-sectional correlations, bars with at least ``drift.min_cross_section`` symbols), hit rate
  (sign of prediction - centre against the sign of the label), and the **net P&L** of the served signal,
  kept simple: each prediction opens a position of sign(prediction - centre) at *t+1* and closes it at
  *t+1+h*, earning ``exp(label) - 1`` less a round trip of ``2 x (evaluate.cost_bps + evaluate.
  fallback_spread_bps / 2) / 1e4``; a bar's P&L is the mean over its symbols (an equal-weight book per bar;
  overlapping tranches are not netted, so this is a per-trade figure, not the gate's portfolio);
* **feature shift**: per feature, (mean of the newest ``monitor.drift_window_rows`` served rows - reference
  mean) / reference std; a feature is shifted past ``monitor.drift_shift_threshold`` (a warning);
* **degradation** (blocking): the newest ``monitor.recent_bars`` matured bars against the earlier ones kept,
  per-bar rank IC and net P&L, a z-test with Newey-West standard errors (lags >= h - 1: overlapping labels)
  that fires at ``drift.performance_z`` standard errors, as the drift stage's performance check does.

Each update writes ``live.json``, ``live.prom`` (Prometheus text) and ``live.html`` (:mod:`.pages`) atomically under ``monitor.out_dir``.
Matured champion outcomes go to an :class:`OutcomeSink` (the service's ``/admin/outcomes``, or the weights
directly; what it refuses is kept and sent again, oldest bar first); a blocking alert on the champion triggers ``monitor.retrain_dag_id`` through Airflow's REST API at
most once per ``monitor.retrain_cooldown``, the last trigger kept in ``retrain_state.json`` so a restart
respects it. A restarted follower replays the logs received in the last ``monitor.lookback_hours``: the
figures come back the same, and the Hedge skips the bars it has already applied.
"""

from __future__ import annotations

from alphaforge.live_monitor.figures import degradation_z
from alphaforge.live_monitor.follower import FollowResult, follow, follow_from_params
from alphaforge.live_monitor.outcomes import DirectOutcomes, OutcomeSink, ServiceOutcomes
from alphaforge.live_monitor.sources import BarTail, RequestTail
from alphaforge.live_monitor.state import LiveMonitor
from alphaforge.live_monitor.trigger import AirflowTrigger, RetrainCooldown

# the sub-modules: sources (the two tails), outcomes (the sinks), trigger (Airflow, the cooldown), figures (the
# arithmetic), state (LiveMonitor), follower (the loop), pages (the HTML)
__all__ = ["AirflowTrigger", "BarTail", "DirectOutcomes", "FollowResult", "LiveMonitor", "OutcomeSink", "RequestTail",
           "RetrainCooldown", "ServiceOutcomes", "degradation_z", "follow", "follow_from_params"]
