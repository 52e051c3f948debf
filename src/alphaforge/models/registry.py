"""Model families by name: build one from params.yaml settings, or load a saved one.

Imports are lazy so that choosing LightGBM never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphaforge.models.base import Forecaster, Task

TABULAR_FAMILIES = ("lightgbm", "xgboost", "random_forest", "extra_trees", "ridge", "elastic_net", "mlp")
SEQUENCE_FAMILIES = ("lstm", "gru", "transformer", "cnn")
FAMILIES = TABULAR_FAMILIES + SEQUENCE_FAMILIES


def forecaster_class(family: str) -> type:
    """The class implementing ``family``; an unknown name lists the known ones."""
    if family in TABULAR_FAMILIES:
        from alphaforge.models import tabular

        classes = {
            "lightgbm": tabular.LightGBMForecaster,
            "xgboost": tabular.XGBoostForecaster,
            "random_forest": tabular.RandomForestForecaster,
            "extra_trees": tabular.ExtraTreesForecaster,
            "ridge": tabular.RidgeForecaster,
            "elastic_net": tabular.ElasticNetForecaster,
            "mlp": tabular.MLPForecaster,
        }
        return classes[family]
    if family in SEQUENCE_FAMILIES:
        from alphaforge.models import sequence

        classes = {
            "lstm": sequence.LSTMForecaster,
            "gru": sequence.GRUForecaster,
            "transformer": sequence.TransformerForecaster,
            "cnn": sequence.CNNForecaster,
        }
        return classes[family]
    raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")


def make_forecaster(family: str, *, task: Task, params: Mapping[str, Any] | None = None) -> Forecaster:
    """A new, unfitted forecaster of ``family`` with the given hyperparameters."""
    cls = forecaster_class(family)
    try:
        return cls(task=task, **dict(params or {}))
    except TypeError as err:
        raise ValueError(f"train.models.{family}: {err}") from err


def load_forecaster(path: str | Path) -> Forecaster:
    """The forecaster saved in folder ``path`` (its ``config.json`` names the family or interval wrapper)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {path} is not a saved alphaforge model")
    family = json.loads(config_path.read_text())["family"]
    if family in ("conformal", "lightgbm_quantile"):
        from alphaforge.models import uncertainty

        wrapper = uncertainty.ConformalRegressor if family == "conformal" else uncertainty.QuantileLightGBM
        return wrapper.load(Path(path))
    if family == "robust_zscore":
        from alphaforge.models.normalise import RobustZScoreForecaster

        return RobustZScoreForecaster.load(Path(path))
    return forecaster_class(family).load(Path(path))
