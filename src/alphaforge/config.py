"""One loader for ``params.yaml``: every knob, read once into typed, frozen models.

Unknown keys are refused (a typo fails at load time with the key's path), so a
stage never runs with a setting silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from alphaforge.runtime import AirflowParams, ServingParams
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

    @field_validator("models")
    @classmethod
    def _typed_hyperparameters(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each family's hyperparameters checked against its own model (alphaforge.models.params) at load: an
        unknown family or key, or a bad value, fails here with its key path, not hours into a nightly run."""
        from alphaforge.models.params import check_hyperparameters

        for family, values in models.items():
            check_hyperparameters(family, dict(values or {}), where=f"train.models.{family}")
        return models

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


#: Sections of the runtime settings (how the service, the online store, the monitor and the DAGs run; no DVC
#: stage reads them): ``runtime.yaml`` beside params.yaml holds them; a key params.yaml also sets wins.
RUNTIME_SECTIONS: tuple[str, ...] = ("serving", "feature_store", "airflow", "monitor", "ab")
RUNTIME_FILE = "runtime.yaml"
#: Optuna search spaces that replace a family's default (:func:`alphaforge.tune.default_search_spaces`, the one
#: source of defaults): ``search_spaces.yaml`` beside params.yaml, read into ``tune.search_spaces``.
SEARCH_SPACES_FILE = "search_spaces.yaml"

#: Every ``ALPHAFORGE_*`` variable that overrides a setting, and the key it sets: applied here only, on top of
#: the files, so a container or a test configures any process the same way. (Secrets such as
#: ``ALPHAFORGE_ADMIN_TOKEN`` and ``ALPHAFORGE_AIRFLOW_PASSWORD`` are read where they are used, never stored.)
ENV_OVERRIDES: dict[str, str] = {
    "ALPHAFORGE_OPTUNA_STORAGE": "tune.storage",
    "ALPHAFORGE_MODEL_NAME": "serving.model_name",
    "ALPHAFORGE_MODEL_ALIAS": "serving.alias",
    "ALPHAFORGE_GRPC_PORT": "serving.grpc_port",
    "ALPHAFORGE_POLL_SECONDS": "serving.poll_seconds",
    "ALPHAFORGE_SERVING_CACHE": "serving.cache_dir",
    "ALPHAFORGE_REQUEST_LOG_DIR": "serving.request_log_dir",
    "ALPHAFORGE_REQUEST_LOG": "serving.request_log",
    "ALPHAFORGE_CHALLENGER_SHARE": "serving.challenger_share",
    "ALPHAFORGE_SHADOW": "serving.shadow",
    "ALPHAFORGE_ONLINE_WEIGHTS": "serving.online_weights",
    "ALPHAFORGE_ONLINE_WEIGHTS_PREFIX": "serving.online_weights_prefix",
    "ALPHAFORGE_BATCHING": "serving.batching.enabled",
    "ALPHAFORGE_REDIS_URL": "feature_store.redis_url",
    "ALPHAFORGE_FEATURE_PREFIX": "feature_store.key_prefix",
    "ALPHAFORGE_SERVICE_URL": "airflow.service_url",
    "ALPHAFORGE_AIRFLOW_URL": "monitor.airflow_url",
}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _merge_runtime(raw: dict[str, Any], path: Path) -> None:
    """runtime.yaml's sections under params.yaml's (a key params.yaml also sets wins: a test or a one-off run)."""
    runtime = _read_yaml(path)
    stray = sorted(set(runtime) - set(RUNTIME_SECTIONS))
    if stray:
        raise ConfigError(f"{path}: {stray} are pipeline settings; they belong in params.yaml ({path.name} holds "
                          f"only {list(RUNTIME_SECTIONS)})")
    for section, values in runtime.items():
        raw[section] = _deep_merge(values or {}, raw.get(section) or {})


def _merge_search_spaces(raw: dict[str, Any], path: Path) -> None:
    spaces = _read_yaml(path)
    tune = raw.setdefault("tune", {}) or {}
    if not isinstance(tune, dict):
        return  # the validation below names the problem
    if tune.get("search_spaces"):
        raise ConfigError(f"tune.search_spaces is set in both params.yaml and {path}; keep them in {path.name}")
    if spaces:
        tune["search_spaces"] = spaces
    raw["tune"] = tune


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Set each key of :data:`ENV_OVERRIDES` whose variable is set (and not empty); the keys it set."""
    applied = []
    for variable, key in ENV_OVERRIDES.items():
        value = environ.get(variable, "")
        if value == "":
            continue
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            if not isinstance(node.get(section), dict):
                node[section] = {}  # an absent (or empty) section
            node = node[section]
        node[leaf] = value
        applied.append(f"{key}={variable}")
    return applied


def load_params(path: str | Path = "params.yaml", environ: Mapping[str, str] | None = None) -> Params:
    """Read and check ``params.yaml`` (and ``runtime.yaml`` / ``search_spaces.yaml`` beside it when present), with
    the ``ALPHAFORGE_*`` overrides of :data:`ENV_OVERRIDES` on top; errors name the file, the key path and what
    is wrong with it. A missing params.yaml is an error (nothing falls back to defaults silently)."""
    import os

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params PATH "
                          "(the service: set ALPHAFORGE_PARAMS)")
    raw = _read_yaml(path)
    if (path.parent / RUNTIME_FILE).is_file():
        _merge_runtime(raw, path.parent / RUNTIME_FILE)
    if (path.parent / SEARCH_SPACES_FILE).is_file():
        _merge_search_spaces(raw, path.parent / SEARCH_SPACES_FILE)
    apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: {len(err.errors())} invalid setting(s):"]
        for problem in err.errors():
            key = ".".join(str(part) for part in problem["loc"])
            hint = RENAMED_KEYS.get(key.replace("validate_", "validate"))
            source = next((f" (from ${v})" for v, k in ENV_OVERRIDES.items() if k == key and v in
                           (os.environ if environ is None else environ)), "")
            lines.append(f"  {key}{source}: {problem['msg']} (got {problem.get('input')!r})"
                         + (f"; {hint}" if hint else ""))
        raise ConfigError("\n".join(lines)) from err
