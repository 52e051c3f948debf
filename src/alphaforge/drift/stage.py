"""The drift stage: windows, tests, performance and quality, alerts, the summary; and the champion's training window end
from the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.drift.alerts import Alert, dispatch_alerts
from alphaforge.drift.params import DriftError, DriftParams
from alphaforge.drift.quality import _performance_alert, data_quality, performance_metrics
from alphaforge.drift.stattests import DriftCheck, check_drift, drift_report
from alphaforge.drift.windows import Windows, _require, _utc, drift_columns, split_windows
from alphaforge.io import atomic_write, write_json_atomic
from alphaforge.schema import DataError
from alphaforge.schema import finite_or_none as _finite

log = logging.getLogger("alphaforge.drift")


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
