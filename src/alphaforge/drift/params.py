"""The drift stage's settings (:class:`DriftParams`), rule names and errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alphaforge.schema import DataError


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
