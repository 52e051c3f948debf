"""Per-feature drift tests (Evidently stattests) with thresholds calibrated on the reference window, and the HTML drift
report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.drift.params import DriftError, DriftParams
from alphaforge.drift.windows import _stamps
from alphaforge.schema import finite_or_none as _finite

log = logging.getLogger("alphaforge.drift")


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
