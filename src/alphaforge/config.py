"""One loader for ``params.yaml``: every knob, read once into typed, frozen models.

Unknown keys are refused (a typo fails at load time with the key's path), so a
stage never runs with a setting silently ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alphaforge.data.ingest import IngestParams
from alphaforge.evaluate import EvaluationParams
from alphaforge.features import FeatureParams
from alphaforge.splits import WalkForwardParams
from alphaforge.validate import ValidationParams


class LabelParams(BaseModel):
    """What the model predicts: the log return over the next ``horizon`` bars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(5, ge=1)


class LightGBMParams(BaseModel):
    """LightGBM settings for the per-fold models (a small, regularised default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(200, ge=1)
    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(200, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    subsample_freq: int = Field(1, ge=0)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(63, ge=2)
    num_threads: int = Field(2, ge=1)
    seed: int = 42


class TrainParams(BaseModel):
    """Walk-forward training: the splits and the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    walk_forward: WalkForwardParams = WalkForwardParams()
    lightgbm: LightGBMParams = LightGBMParams()
    fit_final_model: bool = True


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
    train: TrainParams = TrainParams()
    evaluate: EvaluationParams = EvaluationParams()
    tracking: TrackingParams = TrackingParams()


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
            lines.append(f"  {key}: {problem['msg']} (got {problem.get('input')!r})")
        raise ConfigError("\n".join(lines)) from err
