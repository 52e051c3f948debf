"""The ensemble's column names, parameters (:class:`EnsembleParams`, :class:`HedgeParams`) and the small frame helpers
every combiner shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.schema import DataError
from alphaforge.splits import WalkForwardParams


PREDICTION_PREFIX = "prediction_"
ENSEMBLE_COLUMN = "prediction_ensemble"
FEATURE_VERSION_ATTR = "feature_version"
STATE_FORMAT_VERSION = 1
DEFAULT_META_LIGHTGBM: dict[str, Any] = {
    "n_estimators": 100, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 200,
    "subsample": 0.8, "subsample_freq": 1, "reg_lambda": 1.0, "max_bin": 63,
}


# ------------------------------------------------------------------------------------------------ parameters


class HedgeParams(BaseModel):
    """The online ensemble: learning rate, loss, and where its state lives between restarts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float | None = Field(
        None, gt=0.0,
        description="eta; None: the anytime schedule eta_t = sqrt(8 ln N / t), regret O(sqrt(T ln N))",
    )
    loss: Literal["sign", "squared"] = Field(
        "sign", description="sign: 1 - direction agreement, in [0, 1]; squared: ((p - y) / loss_scale)^2 capped at 1",
    )
    loss_scale: float = Field(0.02, gt=0.0, description="target units per unit of squared loss (squared loss only)")
    state_path: str = Field(
        ".alphaforge/hedge_state.json",
        description="the serving state (weights, cumulative losses); starts from the stack stage's seed",
    )


class EnsembleParams(BaseModel):
    """The stack stage: how the families are combined and how the combination is judged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["stacking", "voting"] = "stacking"
    meta_learner: Literal["nnls_ridge", "lightgbm"] = "nnls_ridge"
    families: tuple[str, ...] | None = Field(None, description="families to combine; None: all the train stage made")
    ridge_alpha: float = Field(0.1, ge=0.0, description="L2 penalty on the standardised base predictions")
    lightgbm: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_META_LIGHTGBM))
    meta_walk_forward: WalkForwardParams = WalkForwardParams(n_splits=3, min_train_size=252, embargo=0)
    hedge: HedgeParams = HedgeParams()
    registered_model_name: str | None = Field(
        "alphaforge-ensemble", description="MLflow registered model to add a version to; None: log only",
    )
    compile_trees: bool = Field(True, description="compile the LightGBM members to native code (lleaves) when "
                                "packaging; the service's row path uses it (3-4x faster), the pyfunc does not")


# ------------------------------------------------------------------------------------------------ small helpers


def prediction_column(family: str) -> str:
    """The OOF column holding ``family``'s prediction."""
    return f"{PREDICTION_PREFIX}{family}"


def families_in(oof: pd.DataFrame) -> list[str]:
    """The families with a prediction column in ``oof`` (the ensemble's own column excluded), in frame order."""
    return [c[len(PREDICTION_PREFIX):] for c in oof.columns
            if c.startswith(PREDICTION_PREFIX) and c != ENSEMBLE_COLUMN]


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], caller: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{caller}: missing column(s) {missing}; present: {list(frame.columns)}")


def _utc(value: Any) -> pd.Timestamp:
    """A timestamp in UTC (a naive one is taken to be UTC already, the canonical schema's zone)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _utc_index(values: Any) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(values)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def _base_matrix(frame: pd.DataFrame, families: Sequence[str], caller: str) -> np.ndarray:
    columns = [prediction_column(f) for f in families]
    _require_columns(frame, columns, caller)
    return frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
