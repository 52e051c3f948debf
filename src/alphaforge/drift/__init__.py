"""Drift and data-quality monitoring of the pipeline with Evidently 0.7: is the newest data still like the data
the champion was trained on, is the model still as good there, and is the data itself healthy?

Two windows of the features dataset are compared (:func:`split_windows`):

* **current**: the newest ``current_window_bars`` bars (distinct timestamps);
* **reference**: the champion's training period (bars up to its train end, never overlapping the current
  window); without a champion, the bars before the current window. Either way capped at the newest
  ``reference_window_bars`` bars of that period, so old history does not dominate.

What is measured (:func:`run_drift`):

* **Data drift per feature** with an Evidently stat test (a distance, ``method``), and the share of drifted
  features. Market features are strongly autocorrelated (a 50-bar moving-average ratio barely changes from
  one bar to the next), so two stretches of the *same* stationary market differ far more than two i.i.d.
  samples would, and any fixed threshold either cries wolf or sleeps. Each feature's threshold is therefore
  **calibrated on the reference itself** (:func:`calibrate_thresholds`): the reference is cut into
  non-overlapping blocks as long as the current window, each block is scored against the rest of the
  reference with the same test, and the feature's threshold is the ``calibration_quantile`` of those scores
  (default 1.0: the largest; never below ``threshold``). A feature drifts when the current window is further
  from the reference than any stretch of the reference was from the rest of it. On stationary synthetic
  data this alarms in about 5-7% of runs (the tests measure it); a reference that itself holds a crash sets
  high thresholds, so the check flags what the champion has not seen, not every turbulent quarter. Only distance methods are offered: p-value
  tests (K-S and friends) assume independent samples and flag nearly everything on autocorrelated data.
  Calendar features (``day_of_week``, ``month``, ``hour``: a 63-bar window covers three months by
  construction) and cross-sectional ranks (uniform at every timestamp by construction) are excluded by
  default (``exclude_features``).
* **Prediction drift**: the served candidate's out-of-sample predictions (``prediction_*`` of the train or
  stack stage) in the current window against those in the reference window, same test, same calibration.
* **Model performance** where labels have matured: mean cross-sectional IC and rank IC, directional
  accuracy, RMSE and MAE in each window (:func:`performance_metrics`).
* **Data quality over time**: bars missing against the market calendar (the union of all timestamps),
  stale symbols (no bar in the last ``stale_after_bars`` bars, or a flat close over them), NaN rates per
  feature; and per timestamp, coverage and NaN rate (``quality.csv``, a ``dvc plots`` table).

Alerts (:class:`Alert`, one per rule that fired): ``data_drift`` (drift share >= ``drift_share_threshold``),
``prediction_drift``, ``performance`` (rank IC or directional accuracy fell by more than its threshold against
the reference) and ``data_quality``. Rules named in ``blocking_rules`` make the alert blocking: the promote
stage reads ``alert.json`` and refuses promotion on it. Every alert is appended to ``alerts_path`` (JSON
lines) and, with ``webhook_url`` set, POSTed there as one JSON document per run.

Outputs under ``out_dir``: ``report.html`` (Evidently), ``summary.json`` (``dvc metrics``), ``features.csv``
(per-feature score, threshold, verdict), ``quality.csv`` and ``alert.json`` (``blocking``, ``detail``,
``reasons``). :mod:`alphaforge.monitor` applies the same checks to served traffic.
"""

from alphaforge.drift.alerts import Alert, append_alerts, dispatch_alerts, post_webhook
from alphaforge.drift.params import DEFAULT_EXCLUDED, RULES, DriftError, DriftMethod, DriftParams, Rule
from alphaforge.drift.quality import data_quality, performance_metrics
from alphaforge.drift.stage import DriftResult, champion_reference_end, pick_prediction_column, run_drift
from alphaforge.drift.stattests import DriftCheck, FeatureDrift, calibrate_thresholds, check_drift, drift_report
from alphaforge.drift.windows import Windows, drift_columns, split_windows
from alphaforge.errors import AlertDeliveryError

__all__ = [
    "Alert",
    "AlertDeliveryError",
    "DriftCheck",
    "DriftError",
    "DriftParams",
    "DriftResult",
    "FeatureDrift",
    "Windows",
    "append_alerts",
    "calibrate_thresholds",
    "champion_reference_end",
    "check_drift",
    "data_quality",
    "drift_columns",
    "drift_report",
    "performance_metrics",
    "post_webhook",
    "run_drift",
    "split_windows",
]
