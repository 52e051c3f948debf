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

from __future__ import annotations

import fnmatch
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alphaforge.errors import AlertDeliveryError  # noqa: F401  (re-exported: the errors live in alphaforge.errors)
from alphaforge.io import atomic_write, write_json_atomic
from alphaforge.metrics import directional_accuracy
from alphaforge.schema import DataError
from alphaforge.schema import finite_or_none as _finite
from alphaforge.schema import format_metric as _fmt

log = logging.getLogger(__name__)

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

DriftMethod = Literal["wasserstein", "psi", "jensenshannon", "hellinger", "ed", "kl_div"]
Rule = Literal["data_drift", "prediction_drift", "performance", "data_quality", "degradation"]
RULES: tuple[str, ...] = ("data_drift", "prediction_drift", "performance", "data_quality", "degradation")
DEFAULT_EXCLUDED: tuple[str, ...] = ("day_of_week", "month", "hour", "*_cs_rank")


class DriftError(DataError):
    """The drift check cannot run on this data (too little reference, no usable feature); the message says why."""




class DriftParams(BaseModel):
    """Windows, tests, thresholds and alerting of the drift stage (``drift:`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    current_window_bars: int = Field(63, ge=5, description="newest bars (distinct timestamps) compared")
    reference_window_bars: int | None = Field(
        756, ge=10, description="cap on the reference: its newest bars up to the champion's train end; null: all")
    min_reference_bars: int = Field(252, ge=10, description="fewer reference bars than this is an error")
    features: tuple[str, ...] | None = Field(None, description="null: the model's features (spec.json)")
    exclude_features: tuple[str, ...] = Field(DEFAULT_EXCLUDED, description="fnmatch patterns left out of drift")
    method: DriftMethod = Field("wasserstein", description="Evidently stat test (a distance: larger = more drift)")
    threshold: float = Field(0.1, gt=0, description="floor of every feature's drift threshold")
    calibrate_thresholds: bool = True
    calibration_quantile: float = Field(1.0, gt=0.5, le=1.0, description="1.0: the largest block score")
    calibration_windows: int = Field(12, ge=2, description="most reference blocks scored for calibration")
    calibration_stride_bars: int | None = Field(None, ge=1, description="step between blocks; null: one block "
                                                "(non-overlapping)")
    min_calibration_windows: int = Field(4, ge=2, description="fewer blocks: the floor threshold is used")
    drift_share_threshold: float = Field(0.5, gt=0, le=1, description="data drift when share >= this")
    prediction_column: str | None = Field(None, description="null: prediction_ensemble, else the first prediction_*")
    target_column: str = "forward_return"
    min_cross_section: int = Field(3, ge=2, description="symbols per timestamp for a cross-sectional IC")
    performance_min_bars: int = Field(20, ge=2, description="matured bars each window needs for the check")
    rank_ic_drop_threshold: float = Field(0.05, gt=0, description="alert when reference - current rank IC > this")
    accuracy_drop_threshold: float = Field(0.05, gt=0, description="same for directional accuracy")
    performance_z: float = Field(2.33, ge=0, description="a drop also needs this many standard errors (Newey-West "
                                 "over the per-bar figures, lags >= label horizon - 1): noise is no measured drop")
    stale_after_bars: int = Field(5, ge=1, description="no bar, or a flat close, for this many bars: stale")
    max_nan_rate: float = Field(0.05, ge=0, le=1, description="per feature, current window")
    max_missing_share: float = Field(0.05, ge=0, le=1, description="bars missing against the calendar")
    blocking_rules: tuple[Rule, ...] = ("data_drift", "performance")
    alerts_path: str = Field("logs/alerts.jsonl", min_length=1, description="every alert, one JSON line each")
    webhook_url: str | None = Field(None, description="POST each run's alerts here (JSON); null: off")
    webhook_timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> DriftParams:
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"drift.webhook_url {self.webhook_url!r}: must start with http:// or https://")
        if self.reference_window_bars is not None and self.reference_window_bars < self.min_reference_bars:
            raise ValueError(f"drift.reference_window_bars ({self.reference_window_bars}) must be >= "
                             f"min_reference_bars ({self.min_reference_bars})")
        return self


# --------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """The two windows of a drift check: row subsets of one frame, and how the reference was chosen."""

    reference: pd.DataFrame
    current: pd.DataFrame
    reference_basis: str

    def describe(self) -> dict[str, Any]:
        return {name: _span(frame) for name, frame in (("reference", self.reference), ("current", self.current))} | {
            "reference_basis": self.reference_basis}


def _span(frame: pd.DataFrame) -> dict[str, Any]:
    return {"start": str(frame["timestamp"].min()), "end": str(frame["timestamp"].max()),
            "bars": int(frame["timestamp"].nunique()), "rows": len(frame),
            "symbols": int(frame["symbol"].nunique())}


def _require(frame: pd.DataFrame, columns: Sequence[str], caller: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{caller}: columns {missing} missing; rule: the frame needs {list(columns)}")
    if "timestamp" in columns and not isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype):
        raise DataError(f"{caller}: column 'timestamp' is {frame['timestamp'].dtype}; rule: timezone-aware (UTC)")


def _stamps(frame: pd.DataFrame) -> pd.DatetimeIndex:
    """The frame's distinct timestamps, sorted (timezone kept)."""
    return pd.DatetimeIndex(frame["timestamp"].unique()).sort_values()


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def split_windows(dataset: pd.DataFrame, params: DriftParams, reference_end: Any = None) -> Windows:
    """Current = the newest ``current_window_bars`` timestamps; reference = bars up to ``reference_end`` (the
    champion's train end; None: no champion) and before the current window, capped at ``reference_window_bars``.

    Raises :class:`DriftError` when the reference has fewer than ``min_reference_bars`` bars.
    """
    _require(dataset, ["timestamp", "symbol"], "split_windows")
    stamps = _stamps(dataset)
    if len(stamps) <= params.current_window_bars:
        raise DriftError(f"split_windows: {len(stamps)} bars in the dataset; rule: more than current_window_bars "
                         f"({params.current_window_bars}) so there is a reference before the current window")
    current_start = stamps[-params.current_window_bars]
    before = stamps[stamps < current_start]
    if reference_end is None:
        basis = "no champion: the bars before the current window"
    else:
        end = _utc(reference_end)
        basis = f"the champion's training period (train end {end})"
        if end >= current_start:
            basis += ", cut at the current window's start"
        before = before[before <= end]
    if params.reference_window_bars is not None:
        before = before[-params.reference_window_bars:]
    if len(before) < params.min_reference_bars:
        raise DriftError(f"split_windows: the reference ({basis}) has {len(before)} bars; rule: at least "
                         f"min_reference_bars ({params.min_reference_bars})")
    timestamps = dataset["timestamp"]
    reference = dataset[timestamps.isin(before)]
    current = dataset[timestamps >= current_start]
    return Windows(reference=reference, current=current, reference_basis=basis)


def drift_columns(frame: pd.DataFrame, params: DriftParams, features: Sequence[str] | None = None) -> list[str]:
    """The columns whose drift is measured: ``params.features``, else ``features`` (the model's), else every
    feature column of ``frame``; minus ``exclude_features`` patterns. Named columns must exist and be numeric."""
    from alphaforge.features import feature_columns

    chosen = list(params.features or features or feature_columns(frame))
    missing = [c for c in chosen if c not in frame.columns]
    if missing:
        raise DataError(f"drift_columns: features {missing} are not columns of the data; rule: every drift "
                        "feature must exist (check drift.features or the model spec)")
    chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c, p) for p in params.exclude_features)]
    not_numeric = [c for c in chosen if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise DataError(f"drift_columns: features {not_numeric} are not numeric; rule: drift is measured on numbers")
    if not chosen:
        raise DriftError("drift_columns: no feature left after exclude_features; rule: at least one feature")
    return chosen


# --------------------------------------------------------------------------------------------- drift tests


@dataclass(frozen=True)
class FeatureDrift:
    """One column's drift: the test's score, the threshold it was held to, and the verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "method": self.method, "score": _finite(self.score),
                "threshold": _finite(self.threshold), "drifted": self.drifted}


@dataclass(frozen=True)
class DriftCheck:
    """Per-feature drift, the share drifted, prediction drift, and what could not be tested."""

    features: tuple[FeatureDrift, ...]
    drift_share_threshold: float
    prediction: FeatureDrift | None = None
    untestable: tuple[str, ...] = ()
    calibration_windows: int = 0

    @property
    def share(self) -> float:
        return sum(f.drifted for f in self.features) / len(self.features) if self.features else 0.0

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.features if f.drifted)

    @property
    def dataset_drift(self) -> bool:
        return bool(self.features) and self.share >= self.drift_share_threshold


def _stattest(method: str) -> Any:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    return get_registered_stattest(method, ColumnType.Numerical)


def _clean(values: pd.Series) -> pd.Series:
    """What Evidently tests: the finite values (it drops NaN and infinities the same way)."""
    values = values.astype(float)
    return values[np.isfinite(values.to_numpy())]


def _score(test: Any, reference: pd.Series, current: pd.Series) -> float:
    from evidently.legacy.core import ColumnType

    return float(test(reference, current, ColumnType.Numerical, None).drift_score)


def calibrate_thresholds(reference: pd.DataFrame, columns: Sequence[str], window_bars: int,
                         params: DriftParams) -> tuple[dict[str, float], int]:
    """Per-column thresholds from the reference's own variation, and how many blocks they rest on.

    Blocks of ``window_bars`` timestamps, ending at the reference's newest bar and stepping back by
    ``calibration_stride_bars`` (default: a whole block, so blocks do not overlap), at most
    ``calibration_windows`` of them, are each scored against the rest of the reference; a column's threshold is
    the ``calibration_quantile`` of its scores, floored at ``params.threshold``. With calibration off, or fewer
    than ``min_calibration_windows`` blocks, every column gets the floor.
    """
    floor = {c: params.threshold for c in columns}
    stamps = _stamps(reference)
    stride = params.calibration_stride_bars or window_bars
    n_blocks = min(params.calibration_windows, max((len(stamps) - window_bars) // stride + 1, 0))
    if not params.calibrate_thresholds or n_blocks < params.min_calibration_windows:
        if params.calibrate_thresholds:
            log.warning("drift: %d reference blocks of %d bars (< min_calibration_windows %d); using the floor "
                        "threshold %g for every feature", n_blocks, window_bars, params.min_calibration_windows,
                        params.threshold)
        return floor, 0
    test = _stattest(params.method)
    position = stamps.get_indexer(pd.DatetimeIndex(reference["timestamp"]))
    values = {c: reference[c].to_numpy(dtype=float) for c in columns}
    finite = {c: np.isfinite(v) for c, v in values.items()}
    scores: dict[str, list[float]] = {c: [] for c in columns}
    for block in range(n_blocks):
        stop = len(stamps) - block * stride
        inside = (position >= stop - window_bars) & (position < stop)
        for column in columns:
            held_out = values[column][inside & finite[column]]
            rest = values[column][~inside & finite[column]]
            if held_out.size and rest.size:
                scores[column].append(_score(test, pd.Series(rest), pd.Series(held_out)))
    thresholds = {
        c: max(params.threshold, float(np.quantile(s, params.calibration_quantile))) if s else params.threshold
        for c, s in scores.items()
    }
    return thresholds, n_blocks


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], params: DriftParams, *,
                prediction_column: str | None = None, window_bars: int | None = None) -> DriftCheck:
    """Drift of every column (and of ``prediction_column``) between two frames, with Evidently's stat test.

    The same test objects Evidently's report calls, without rendering (fast enough to run over many seeds).
    ``window_bars`` (default: the current frame's distinct timestamps) sets the calibration block length.
    Missing values are left out per column (a prediction column may cover only some rows). Columns with no
    finite value on either side are not tested; they are listed in ``untestable``.
    """
    window_bars = window_bars or int(current["timestamp"].nunique())
    named = [*columns, *([prediction_column] if prediction_column is not None else [])]
    testable = [c for c in named if _clean(reference[c]).size and _clean(current[c]).size]
    untestable = tuple(c for c in named if c not in testable)
    thresholds, n_blocks = calibrate_thresholds(reference, testable, window_bars, params)
    test = _stattest(params.method)
    results = {c: _feature_drift(test, c, _clean(reference[c]), _clean(current[c]), thresholds[c]) for c in testable}
    return DriftCheck(features=tuple(results[c] for c in columns if c in results),
                      drift_share_threshold=params.drift_share_threshold,
                      prediction=results.get(prediction_column) if prediction_column is not None else None,
                      untestable=untestable, calibration_windows=n_blocks)


def _feature_drift(test: Any, column: str, reference: pd.Series, current: pd.Series, threshold: float) -> FeatureDrift:
    from evidently.legacy.core import ColumnType

    result = test(reference, current, ColumnType.Numerical, threshold)
    return FeatureDrift(column=column, method=test.name, score=float(result.drift_score),
                        threshold=float(result.actual_threshold), drifted=bool(result.drifted))


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, check: DriftCheck,
                 params: DriftParams) -> tuple[Any, DriftCheck]:
    """The Evidently report (DataDriftPreset over the tested features with ``check``'s thresholds, plus a
    ValueDrift of the prediction column), and the per-column verdicts read back from the report itself.

    The returned :class:`DriftCheck` is what the report says (it must agree with ``check``; the tests hold
    the two to each other), so the HTML people read and the JSON the pipeline acts on are one result.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = [f.column for f in check.features]
    if not columns:
        raise DriftError("drift_report: no testable feature (every feature is empty in one of the windows)")
    metrics: list[Any] = [DataDriftPreset(columns=columns, drift_share=params.drift_share_threshold,
                                          method=params.method,
                                          per_column_threshold={f.column: f.threshold for f in check.features})]
    numerical = list(columns)
    if check.prediction is not None:
        numerical.append(check.prediction.column)
        metrics.append(ValueDrift(column=check.prediction.column, method=params.method,
                                  threshold=check.prediction.threshold))
    definition = DataDefinition(numerical_columns=numerical)
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current[numerical].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[numerical].reset_index(drop=True), data_definition=definition),
    )
    verdicts = _report_verdicts(snapshot)
    reported = DriftCheck(
        features=tuple(verdicts[c] for c in columns), drift_share_threshold=check.drift_share_threshold,
        prediction=verdicts[check.prediction.column] if check.prediction is not None else None,
        untestable=check.untestable, calibration_windows=check.calibration_windows,
    )
    return snapshot, reported


def _report_verdicts(snapshot: Any) -> dict[str, FeatureDrift]:
    """Per-column score, threshold and verdict as the Evidently snapshot records them."""
    content = snapshot.dict()
    failed = {t["metric_config"]["metric_id"]: t["status"] == "FAIL" for t in content["tests"]
              if t.get("metric_config", {}).get("params", {}).get("type") == "evidently:metric_v2:ValueDrift"}
    verdicts = {}
    for metric in content["metrics"]:
        config = metric.get("config", {})
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        if metric["id"] not in failed:
            raise DriftError(f"drift_report: Evidently returned no drift test for column {config['column']!r}")
        verdicts[config["column"]] = FeatureDrift(column=config["column"], method=str(config["method"]),
                                                  score=float(metric["value"]), threshold=float(config["threshold"]),
                                                  drifted=failed[metric["id"]])
    return verdicts


# --------------------------------------------------------------------------------------------- performance


def performance_metrics(frame: pd.DataFrame, prediction_column: str, target_column: str, *, centre: float = 0.0,
                        min_cross_section: int = 3, lags: int = 0) -> dict[str, Any]:
    """How good the predictions were on rows whose label has matured (finite ``target_column``).

    ``ic`` / ``rank_ic``: mean over timestamps of the cross-sectional Pearson / Spearman correlation (one
    correlation over all rows when there are fewer than ``min_cross_section`` symbols per timestamp);
    ``directional_accuracy``: share of rows where sign(prediction - centre) equals the sign of the target;
    ``rmse`` / ``mae``: prediction against target (meaningful for return forecasts); ``bars``: matured timestamps;
    ``rank_ic_se`` / ``directional_accuracy_se``: Newey-West standard errors of the per-timestamp figures' means
    (at least ``lags`` lags: overlapping labels; None for a single series).
    """
    from alphaforge.evaluate import information_coefficients

    _require(frame, ["timestamp", "symbol", prediction_column, target_column], "performance_metrics")
    matured = frame[np.isfinite(frame[target_column].astype(float)) & np.isfinite(frame[prediction_column].astype(float))]
    out: dict[str, Any] = {"rows": len(matured), "bars": int(matured["timestamp"].nunique())}
    if matured.empty:
        return out | {"ic": None, "rank_ic": None, "directional_accuracy": None, "rmse": None, "mae": None}
    matured = matured.assign(fold=0)
    from alphaforge.stats import newey_west

    for name, method in (("ic", "pearson"), ("rank_ic", "spearman")):
        series = information_coefficients(matured, prediction_column, target_column, method=method,
                                          min_cross_section=min_cross_section)
        out[name] = _finite(series.mean())
        if name == "rank_ic":
            per_bar = series.to_numpy(dtype=float) if series.index.name == "timestamp" else np.array([])
            out["rank_ic_se"] = _finite(newey_west(per_bar, min_lags=lags).std_error)
    prediction = matured[prediction_column].to_numpy(dtype=float)
    target = matured[target_column].to_numpy(dtype=float)
    error = prediction - target
    out["directional_accuracy"] = _finite(directional_accuracy(prediction - centre, target))
    usable = (prediction - centre != 0) & np.isfinite(target)
    hits = pd.Series(np.sign(prediction - centre) == np.sign(target)).where(usable)
    per_bar_hits = hits.groupby(matured["timestamp"].to_numpy()).mean().dropna().to_numpy()
    out["directional_accuracy_se"] = _finite(newey_west(per_bar_hits, min_lags=lags).std_error)
    out["rmse"] = _finite(float(np.sqrt(np.mean(error ** 2))))
    out["mae"] = _finite(float(np.mean(np.abs(error))))
    return out


def _performance_alert(reference: Mapping[str, Any], current: Mapping[str, Any],
                       params: DriftParams) -> tuple[bool | None, str]:
    """(fired, detail); fired is None when either window lacks matured bars or a defined metric."""
    thin = [name for name, block in (("reference", reference), ("current", current))
            if block["bars"] < params.performance_min_bars]
    if thin:
        return None, (f"performance not checked: {', '.join(thin)} window has fewer than performance_min_bars "
                      f"({params.performance_min_bars}) bars with matured labels")
    drops = []
    for metric, limit in (("rank_ic", params.rank_ic_drop_threshold),
                          ("directional_accuracy", params.accuracy_drop_threshold)):
        before, now = reference.get(metric), current.get(metric)
        if before is None or now is None or before - now <= limit:
            continue
        errors = [block.get(f"{metric}_se") for block in (reference, current)]
        if all(e is not None for e in errors):
            z = (before - now) / max(math.sqrt(errors[0] ** 2 + errors[1] ** 2), 1e-12)
            if z < params.performance_z:
                continue  # within the noise of the two windows
            significance = f", {z:.1f} standard errors"
        else:
            significance = " (no standard error: a single series)"
        drops.append(f"{metric} fell from {before:.4f} (reference) to {now:.4f} (current), "
                     f"a drop of {before - now:.4f} > {limit:g}{significance}")
    if drops:
        return True, "performance: " + "; ".join(drops)
    return False, (f"performance held (no drop beyond the thresholds and {params.performance_z:g} standard errors): "
                   f"rank IC {_fmt(reference.get('rank_ic'))} -> {_fmt(current.get('rank_ic'))}, "
                   f"directional accuracy {_fmt(reference.get('directional_accuracy'))} -> "
                   f"{_fmt(current.get('directional_accuracy'))}")


# --------------------------------------------------------------------------------------------- data quality


def data_quality(dataset: pd.DataFrame, windows: Windows, columns: Sequence[str],
                 params: DriftParams) -> tuple[dict[str, Any], pd.DataFrame]:
    """Missing bars, stale symbols and NaN rates (a summary), and coverage and NaN rate per timestamp.

    The market calendar is the union of every symbol's timestamps. A symbol is expected at every calendar
    timestamp of the current window from its first bar on; a missing one counts against ``missing_share``.
    Stale: no bar in the last ``stale_after_bars`` calendar bars, or a flat close over its last
    ``stale_after_bars`` bars (``close`` when the frame has it, else ``log_return_1`` == 0).
    """
    calendar = _stamps(dataset)
    current_stamps = _stamps(windows.current)
    first_bar = dataset.groupby("symbol", sort=True)["timestamp"].min()
    last_bar = dataset.groupby("symbol", sort=True)["timestamp"].max()
    observed = windows.current.groupby("symbol")["timestamp"].nunique().reindex(first_bar.index, fill_value=0)
    expected = pd.Series([int((current_stamps >= first).sum()) for first in first_bar], index=first_bar.index)
    missing = (expected - observed).clip(lower=0)
    horizon = calendar[-params.stale_after_bars]
    no_recent_bar = sorted(last_bar.index[last_bar < horizon])
    flat = sorted(_flat_symbols(dataset, params.stale_after_bars))
    nan_current = windows.current[list(columns)].isna().mean()
    nan_reference = windows.reference[list(columns)].isna().mean()
    summary = {
        "missing_bars": int(missing.sum()),
        "expected_bars": int(expected.sum()),
        "missing_share": _finite(missing.sum() / expected.sum()) if expected.sum() else None,
        "missing_by_symbol": {s: int(n) for s, n in missing.items() if n > 0},
        "stale_symbols": sorted(set(no_recent_bar) | set(flat)),
        "no_recent_bar": no_recent_bar,
        "flat_close": flat,
        "nan_rate_current": {c: _finite(v) for c, v in nan_current.items()},
        "nan_rate_reference": {c: _finite(v) for c, v in nan_reference.items()},
        "max_nan_rate": _finite(nan_current.max()) if len(nan_current) else None,
    }
    problems = []
    if summary["stale_symbols"]:
        problems.append(f"stale symbols {summary['stale_symbols']}")
    worst = [c for c, v in nan_current.items() if v > params.max_nan_rate]
    summary["features_over_nan_limit"] = worst
    if worst:
        problems.append(f"NaN rate above {params.max_nan_rate:g} in {worst}")
    if summary["missing_share"] is not None and summary["missing_share"] > params.max_missing_share:
        problems.append(f"{summary['missing_bars']} of {summary['expected_bars']} bars missing "
                        f"(share {summary['missing_share']:.3f} > {params.max_missing_share:g})")
    summary["problems"] = problems

    both = pd.concat([windows.reference.assign(window="reference"), windows.current.assign(window="current")])
    per_stamp = both.groupby("timestamp", sort=True)
    listed = pd.DatetimeIndex(first_bar).sort_values().searchsorted(per_stamp.size().index, side="right")
    over_time = pd.DataFrame({
        "window": per_stamp["window"].first(),
        "symbols": per_stamp["symbol"].nunique(),
        "expected_symbols": listed,
        "nan_rate": both[list(columns)].isna().mean(axis=1).groupby(both["timestamp"], sort=True).mean(),
    })
    over_time["coverage"] = over_time["symbols"] / over_time["expected_symbols"].clip(lower=1)
    return summary, over_time.reset_index()


def _flat_symbols(dataset: pd.DataFrame, bars: int) -> list[str]:
    """Symbols whose last ``bars`` bars show no price change at all."""
    tail = dataset.groupby("symbol", sort=True).tail(bars)
    if "close" in tail.columns:
        moved = tail.groupby("symbol")["close"].agg(lambda c: c.nunique(dropna=True) > 1)
    elif "log_return_1" in tail.columns:
        moved = tail.groupby("symbol")["log_return_1"].agg(lambda r: bool((r.fillna(0.0) != 0).any()))
    else:
        return []
    counts = tail.groupby("symbol").size()
    return [s for s, m in moved.items() if not m and counts[s] >= bars]


# --------------------------------------------------------------------------------------------- alerts


class Alert(BaseModel):
    """One rule that fired in one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    created_at: str
    source: Literal["pipeline", "monitor", "airflow"]  # airflow: a DAG task failed for good (dags/)
    rule: str
    blocking: bool
    detail: str
    report: str | None = None


def append_alerts(alerts: Sequence[Alert], path: str | Path) -> None:
    """Append one JSON line per alert (folders made as needed); the file is a log, never rewritten."""
    if not alerts:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(a.model_dump(), allow_nan=False) + "\n" for a in alerts))


def post_webhook(url: str, payload: Mapping[str, Any], timeout_seconds: float) -> int:
    """POST ``payload`` as JSON; the HTTP status. Raises :class:`AlertDeliveryError` naming the URL on failure."""
    body = json.dumps(payload, allow_nan=False, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "alphaforge-drift"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return int(response.status)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise AlertDeliveryError(f"webhook {url}: the alert was not delivered ({err}); it is recorded in the "
                                 "alerts log") from err


def dispatch_alerts(alerts: Sequence[Alert], params: DriftParams, *, context: Mapping[str, Any]) -> int | None:
    """Append ``alerts`` to the alerts log and POST them (with ``context``) to the webhook when one is set.

    Returns the webhook's HTTP status (None: no webhook or nothing to send).
    """
    if not alerts:
        return None
    append_alerts(alerts, params.alerts_path)
    if params.webhook_url is None:
        return None
    payload = {"blocking": any(a.blocking for a in alerts), "alerts": [a.model_dump() for a in alerts], **context}
    status = post_webhook(params.webhook_url, payload, params.webhook_timeout_seconds)
    log.info("alerts: %d posted to %s (HTTP %d)", len(alerts), params.webhook_url, status)
    return status


# --------------------------------------------------------------------------------------------- the stage


@dataclass
class DriftResult:
    """What a drift run found and where it wrote it."""

    summary: dict[str, Any]
    alert: dict[str, Any]
    alerts: list[Alert]
    check: DriftCheck
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return bool(self.alert["blocking"])


def pick_prediction_column(frame: pd.DataFrame, params: DriftParams) -> str | None:
    """``params.prediction_column``, else ``prediction_ensemble``, else the first ``prediction_*`` column."""
    if params.prediction_column is not None:
        if params.prediction_column not in frame.columns:
            raise DataError(f"drift: prediction column {params.prediction_column!r} missing from the predictions; "
                            f"rule: drift.prediction_column must name one of {list(frame.columns)}")
        return params.prediction_column
    if "prediction_ensemble" in frame.columns:
        return "prediction_ensemble"
    return next((c for c in frame.columns if c.startswith("prediction_")), None)


def run_drift(dataset: pd.DataFrame, predictions: pd.DataFrame | None, params: DriftParams, out_dir: str | Path, *,
              features: Sequence[str] | None = None, reference_end: Any = None, prediction_centre: float = 0.0,
              horizon: int = 1,
              write_html: bool = True, now: datetime | None = None) -> DriftResult:
    """The drift stage: windows, drift per feature and of the predictions, performance, data quality, alerts.

    ``dataset``: the features dataset (timestamp, symbol, features, labels); ``predictions``: out-of-sample
    predictions (timestamp, symbol, ``prediction_*``, ``target_column``) or None; ``features``: the model's
    feature list (``params.features`` wins); ``reference_end``: the champion's train end (None: no champion);
    ``prediction_centre``: 0.5 for a classifier's P(up); ``horizon``: the label horizon (overlapping labels make
    consecutive performance figures dependent: the drop test uses at least ``horizon - 1`` Newey-West lags). Writes under ``out_dir`` (see the module docstring),
    appends alerts to ``params.alerts_path`` and posts them to ``params.webhook_url``; a failed post raises
    :class:`AlertDeliveryError` after every file is written.
    """
    out_dir = Path(out_dir)
    created = (now or datetime.now(UTC)).isoformat()
    columns = drift_columns(dataset, params, features)
    windows = split_windows(dataset, params, reference_end)
    prediction_column = pick_prediction_column(predictions, params) if predictions is not None else None
    reference, current = windows.reference, windows.current
    ref_pred = cur_pred = None
    if prediction_column is not None:
        assert predictions is not None
        _require(predictions, ["timestamp", "symbol", prediction_column], "run_drift predictions")
        ref_pred = predictions[predictions["timestamp"].isin(reference["timestamp"].unique())]
        cur_pred = predictions[predictions["timestamp"].isin(current["timestamp"].unique())]
        # the prediction beside the features (NaN on rows without an out-of-sample prediction)
        reference, current = (
            frame.merge(rows[["timestamp", "symbol", prediction_column]], on=["timestamp", "symbol"], how="left",
                        validate="one_to_one")
            for frame, rows in ((reference, ref_pred), (current, cur_pred))
        )
    check = check_drift(reference, current, columns, params, prediction_column=prediction_column,
                        window_bars=params.current_window_bars)
    paths: dict[str, Path] = {}
    if write_html:
        snapshot, check = drift_report(reference, current, check, params)
        paths["report"] = atomic_write(out_dir / "report.html", lambda tmp: snapshot.save_html(str(tmp)))

    performance: dict[str, Any] = {"checked": False, "prediction_column": prediction_column}
    perf_fired: bool | None = None
    perf_detail = "performance not checked: no predictions"
    if prediction_column is not None and params.target_column in predictions.columns:  # type: ignore[union-attr]
        blocks = {name: performance_metrics(frame, prediction_column, params.target_column, centre=prediction_centre,
                                            min_cross_section=params.min_cross_section,
                                            lags=horizon - 1)
                  for name, frame in (("reference", ref_pred), ("current", cur_pred))}
        perf_fired, perf_detail = _performance_alert(blocks["reference"], blocks["current"], params)
        performance |= blocks | {"checked": perf_fired is not None}
    elif prediction_column is not None:
        perf_detail = f"performance not checked: the predictions have no {params.target_column!r} column"
    performance["detail"] = perf_detail

    quality, over_time = data_quality(dataset, windows, columns, params)
    paths["quality"] = atomic_write(out_dir / "quality.csv", lambda tmp: over_time.to_csv(tmp, index=False))
    table = pd.DataFrame([f.as_dict() for f in check.features], columns=["column", "method", "score", "threshold",
                                                                        "drifted"])
    table["nan_rate_reference"] = table["column"].map(quality["nan_rate_reference"])
    table["nan_rate_current"] = table["column"].map(quality["nan_rate_current"])
    paths["features"] = atomic_write(out_dir / "features.csv", lambda tmp: table.to_csv(tmp, index=False))

    fired = _fired_rules(check, perf_fired, perf_detail, quality, params)
    report_path = str(paths["report"]) if "report" in paths else None
    alerts = [Alert(created_at=created, source="pipeline", rule=rule, blocking=rule in params.blocking_rules,
                    detail=detail, report=report_path) for rule, detail in fired]
    summary = _summary(check, windows, performance, quality, alerts, params)
    paths["summary"] = write_json_atomic(summary, out_dir / "summary.json")
    alert = _alert_document(alerts, check, perf_detail)
    paths["alert"] = write_json_atomic(alert, out_dir / "alert.json")
    log.info("drift: share %.2f (%d/%d features), %s; %s", check.share, len(check.drifted), len(check.features),
             "blocking alert" if alert["blocking"] else "no blocking alert", alert["detail"])
    result = DriftResult(summary=summary, alert=alert, alerts=alerts, check=check, paths=paths)
    dispatch_alerts(alerts, params, context={"source": "pipeline", "summary": str(paths["summary"])})
    return result


def _fired_rules(check: DriftCheck, perf_fired: bool | None, perf_detail: str, quality: Mapping[str, Any],
                 params: DriftParams) -> list[tuple[str, str]]:
    fired = []
    if check.dataset_drift:
        fired.append(("data_drift", (f"data drift: {len(check.drifted)} of {len(check.features)} features drifted "
                                    f"(share {check.share:.2f} >= {params.drift_share_threshold:g}): "
                                    f"{', '.join(check.drifted)}")))
    if check.prediction is not None and check.prediction.drifted:
        p = check.prediction
        fired.append(("prediction_drift", (f"prediction drift: {p.column} {p.method} score {p.score:.4f} >= "
                                          f"threshold {p.threshold:.4f}")))
    if perf_fired:
        fired.append(("performance", perf_detail))
    if quality["problems"]:
        fired.append(("data_quality", "data quality: " + "; ".join(quality["problems"])))
    return fired


def _alert_document(alerts: Sequence[Alert], check: DriftCheck, perf_detail: str) -> dict[str, Any]:
    """What the promote stage reads: ``blocking``, a one-line ``detail`` and every ``reasons`` line.

    No wall-clock time in it (the alerts log has that), so the same inputs give the same file for DVC.
    """
    blocking = [a for a in alerts if a.blocking]
    reasons = [f"{'BLOCKING' if a.blocking else 'WARNING'} {a.detail}" for a in alerts]
    if not any(a.rule == "data_drift" for a in alerts):
        reasons.append(f"OK drift share {check.share:.2f} < {check.drift_share_threshold:g}")
    if not any(a.rule == "performance" for a in alerts):
        reasons.append(f"OK {perf_detail}")
    warnings = [a.rule for a in alerts if not a.blocking]
    detail = "; ".join(a.detail for a in blocking) if blocking else (
        f"drift share {check.share:.2f} < {check.drift_share_threshold:g}"
        + (f"; warnings: {', '.join(warnings)}" if warnings else ""))
    return {"blocking": bool(blocking), "detail": detail, "reasons": reasons, "rules": [a.rule for a in alerts]}


def _summary(check: DriftCheck, windows: Windows, performance: Mapping[str, Any], quality: Mapping[str, Any],
             alerts: Sequence[Alert], params: DriftParams) -> dict[str, Any]:
    prediction = check.prediction.as_dict() if check.prediction else None
    return {
        "blocking": any(a.blocking for a in alerts),
        "alerts": [a.rule for a in alerts],
        "drift_share": _finite(check.share),
        "n_features": len(check.features),
        "n_drifted": len(check.drifted),
        "drifted_features": list(check.drifted),
        "untestable_features": list(check.untestable),
        "method": params.method,
        "calibration_windows": check.calibration_windows,
        "prediction_drift": prediction,
        "performance": dict(performance),
        "quality": {k: v for k, v in quality.items() if k not in ("nan_rate_reference", "nan_rate_current")},
        "windows": windows.describe(),
    }


def champion_reference_end(model_name: str, *, http_max_retries: int = 1,
                           http_timeout_seconds: int = 10) -> pd.Timestamp | None:
    """The serving champion's train end (its out-of-sample window end, the last bar it was fitted on), or None
    when no champion is registered. Read through :mod:`alphaforge.tracking`."""
    from alphaforge import tracking
    from alphaforge.promotion import CHAMPION, WINDOW_END_TAG

    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        version = tracking.get_model_aliases(model_name).get(CHAMPION)
        if version is None:
            return None
        tags = tracking.get_model_version(model_name, version).tags
    if WINDOW_END_TAG not in tags:
        raise DriftError(f"champion_reference_end: {model_name} v{version} has no {WINDOW_END_TAG} tag; rule: the "
                         "promote stage records the window every champion was scored on")
    return _utc(tags[WINDOW_END_TAG])




