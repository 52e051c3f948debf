"""One loader for ``params.yaml``: every knob, read once into typed, frozen models.

Unknown keys are refused (a typo fails at load time with the key's path), so a
stage never runs with a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alphaforge.ab import ABParams
from alphaforge.data.ingest import IngestParams
from alphaforge.drift import DriftParams
from alphaforge.ensemble import EnsembleParams
from alphaforge.evaluate import EvaluationParams
from alphaforge.features import FeatureParams
from alphaforge.featurestore.config import FeatureStoreParams
from alphaforge.monitor import MonitorParams
from alphaforge.promotion import PromotionParams
from alphaforge.regimes import RegimeParams
from alphaforge.risk import RiskParams
from alphaforge.rl import RLParams
from alphaforge.runtime import AirflowParams
from alphaforge.serving.host import ServingParams
from alphaforge.splits import WalkForwardParams
from alphaforge.tune import TuneParams
from alphaforge.validate import ValidationParams


class LabelParams(BaseModel):
    """What the models predict, and over how many bars ahead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(5, ge=1)
    target: Literal["forward_return", "forward_direction", "forward_volatility"] = "forward_return"
    # The label the models fit, transformed among the symbols of each timestamp (metrics and backtests keep the raw
    # label): none | cs_rank | cs_zscore (alphaforge.features.normalised_label). Regression targets only.
    normalise: Literal["none", "cs_rank", "cs_zscore"] = "none"

    @model_validator(mode="after")
    def _normalise_needs_regression(self) -> LabelParams:
        if self.normalise != "none" and self.target == "forward_direction":
            raise ValueError(f"labels.normalise {self.normalise!r} transforms a regression target; labels.target "
                             "forward_direction is a class")
        return self


class UncertaintyParams(BaseModel):
    """Prediction intervals: conformal residuals on a calibration slice, or quantile LightGBM (tabular families).

    Sequence families always give Monte Carlo dropout intervals at the same ``alpha``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["conformal", "quantile", "none"] = "conformal"
    alpha: float = Field(0.1, gt=0, lt=1)
    calibration_fraction: float = Field(0.2, gt=0, lt=0.9)


class TrainParams(BaseModel):
    """Walk-forward training: which families, their hyperparameters, the splits and the extras."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: tuple[str, ...] = ("lightgbm",)
    walk_forward: WalkForwardParams = WalkForwardParams()
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    use_tuned: bool = True
    uncertainty: UncertaintyParams = UncertaintyParams()
    permutation_repeats: int = Field(1, ge=0, description="0 turns permutation importance off")
    fit_final_model: bool = True

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: tuple[str, ...]) -> tuple[str, ...]:
        from alphaforge.models.registry import FAMILIES

        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown model families {unknown}; choose from {list(FAMILIES)}")
        if not families:
            raise ValueError("train.families is empty; name at least one model family")
        return families


class TrackingParams(BaseModel):
    """MLflow experiment; the store is ``MLFLOW_TRACKING_URI`` or a SQLite file under ``.alphaforge/``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = "alphaforge"
    enabled: bool = True


class Params(BaseModel):
    """The whole of ``params.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingest: IngestParams = IngestParams()
    validate_: ValidationParams = Field(ValidationParams(), alias="validate")
    features: FeatureParams = FeatureParams()
    labels: LabelParams = LabelParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    ensemble: EnsembleParams = EnsembleParams()
    evaluate: EvaluationParams = EvaluationParams()
    drift: DriftParams = DriftParams()
    promote: PromotionParams = PromotionParams()
    monitor: MonitorParams = MonitorParams()
    ab: ABParams = ABParams()
    regimes: RegimeParams = RegimeParams()
    risk: RiskParams = RiskParams()
    rl: RLParams = RLParams()
    serving: ServingParams = ServingParams()
    tracking: TrackingParams = TrackingParams()
    feature_store: FeatureStoreParams = FeatureStoreParams()
    airflow: AirflowParams = AirflowParams()


# Keys that an older params.yaml may still hold, and what replaced them.
RENAMED_KEYS: dict[str, str] = {
    "validate.max_gap": "replaced by validate.max_gap_bars (missed sessions on the panel's own calendar) and "
                        "validate.max_closure (a market-wide closure); a longer gap now splits the series",
}


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or has a key or value the stages do not accept."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check ``params.yaml``; errors name the key path and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: {len(err.errors())} invalid setting(s):"]
        for problem in err.errors():
            key = ".".join(str(part) for part in problem["loc"])
            hint = RENAMED_KEYS.get(key.replace("validate_", "validate"))
            lines.append(f"  {key}: {problem['msg']} (got {problem.get('input')!r})" + (f"; {hint}" if hint else ""))
        raise ConfigError("\n".join(lines)) from err
