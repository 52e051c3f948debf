"""Fitted feature normalisation that travels with the model: Qlib's ``RobustZScoreNorm`` (and ``Fillna``).

``features.processing: robust_zscore`` (or ``[robust_zscore, fillna]``) cannot be applied when the features
are computed: its statistics must come from the *training* rows only, so each walk-forward fold fits its own.
It is therefore a model wrapper, like the conformal one: :class:`RobustZScoreForecaster` learns, on the fit rows
of each per-symbol feature (:func:`alphaforge.features.processed_columns`),

* ``median_`` = the median, ``scale_`` = (median absolute deviation + 1e-12) x 1.4826 (Qlib's formula),

and hands its model ``clip((x - median_) / scale_, -3, 3)`` (Qlib's ``clip_outlier``), NaN then filled with 0
with ``fillna``. The statistics are saved with the model (``config.json``) and re-applied by ``predict``, so the
walk-forward folds, the final model, the MLflow pyfunc, the serving model and a model fed from the online store
all see the same transform: no code outside the model knows about it.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from alphaforge.models.base import Forecaster, Task

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_EPS = 1e-12
_MAD_TO_STD = 1.4826
#: The ``features.processing`` values fitted on training rows (model-side) rather than per timestamp.
FITTED_PROCESSING: dict[str, bool] = {"robust_zscore": False, "robust_zscore_fillna": True}


class RobustZScoreForecaster:
    """Robust z-scores of the per-symbol features, fitted on the fit rows, in front of any forecaster.

    ``base`` is unfitted (copied, never fitted in place). Learned: ``columns_``, ``median_``, ``scale_``,
    ``model_`` (the fitted copy), ``feature_names_``.
    """

    family: ClassVar[str] = "robust_zscore"

    def __init__(self, base: Forecaster, *, fillna: bool = False, clip: float = 3.0) -> None:
        if not clip > 0:
            raise ValueError(f"robust_zscore: clip must be > 0, got {clip!r}")
        self.base = base
        self.fillna = bool(fillna)
        self.clip = float(clip)
        self.task: Task = base.task

    @property
    def row_wise(self) -> bool:
        return bool(getattr(self.base, "row_wise", False))

    def __repr__(self) -> str:
        return f"RobustZScoreForecaster({self.base!r}, fillna={self.fillna}, clip={self.clip})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"base": self.base, "fillna": self.fillna, "clip": self.clip}

    def fit(self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None
            ) -> RobustZScoreForecaster:
        """Fit the statistics on the rows of ``fit_mask`` (all rows when None), then the model on the transform."""
        from alphaforge.features import feature_columns, processed_columns

        rows = np.ones(len(frame), dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
        if rows.shape != (len(frame),):
            raise ValueError(f"robust_zscore: fit_mask has shape {rows.shape}, the frame {len(frame)} rows")
        if not rows.any():
            raise ValueError("robust_zscore: fit_mask selects no rows to fit the medians on")
        self.columns_: list[str] = processed_columns(feature_columns(frame))
        values = frame[self.columns_].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: median NaN (fillna gives 0)
            self.median_ = np.nanmedian(values, axis=0)
            self.scale_ = (np.nanmedian(np.abs(values - self.median_), axis=0) + _EPS) * _MAD_TO_STD
        self.model_ = copy.deepcopy(self.base).fit(self.transform(frame), target, fit_mask=fit_mask)
        self.feature_names_: list[str] = list(self.model_.feature_names_)
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with its per-symbol features replaced by their clipped robust z-scores (NaN -> 0 with fillna)."""
        if not hasattr(self, "median_"):
            raise RuntimeError("this RobustZScoreForecaster is not fitted yet; call fit first")
        missing = [c for c in self.columns_ if c not in frame.columns]
        if missing:
            raise ValueError(f"robust_zscore: the frame lacks the fitted feature column(s) {missing[:5]}; compute "
                             "the features with the training configuration")
        values = frame[self.columns_].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            scores = np.clip((values - self.median_) / self.scale_, -self.clip, self.clip)
        if self.fillna:
            scores[np.isnan(scores)] = 0.0
        out = frame.copy()
        out[self.columns_] = scores
        return out

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        return self.model_.predict(self.transform(frame), predict_mask=predict_mask)

    def __getattr__(self, name: str) -> Any:
        """``predict_interval`` / ``predict_with_uncertainty`` of the wrapped model, on the transformed frame."""
        if name in ("predict_interval", "predict_with_uncertainty") and "model_" in self.__dict__:
            method = getattr(self.__dict__["model_"], name)  # AttributeError when the model has none

            def on_transformed(frame: pd.DataFrame, **kwargs: Any) -> Any:
                return method(self.transform(frame), **kwargs)

            return on_transformed
        raise AttributeError(name)

    def feature_importance(self) -> pd.Series:
        method = getattr(self.model_, "feature_importance", None)
        return method() if method is not None else pd.Series(dtype=np.float64)

    def save(self, path: Path) -> None:
        """``config.json`` (the statistics, the wrapped model's class) and the wrapped model in ``base/``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.model_.save(folder / "base")
        model_class = type(self.model_)
        config = {
            "format_version": FORMAT_VERSION, "family": self.family, "task": self.task,
            "fillna": self.fillna, "clip": self.clip,
            "base_class": {"module": model_class.__module__, "name": model_class.__qualname__},
            "base_family": getattr(self.model_, "family", None),
            "columns_": self.columns_, "median_": self.median_.tolist(), "scale_": self.scale_.tolist(),
            "feature_names_": self.feature_names_,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RobustZScoreForecaster:
        folder = Path(path)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("family") != cls.family or config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / CONFIG_FILE}: not a robust_zscore model of format {FORMAT_VERSION}")
        module = importlib.import_module(config["base_class"]["module"])
        model = getattr(module, config["base_class"]["name"]).load(folder / "base")
        wrapper = cls(model, fillna=config["fillna"], clip=config["clip"])
        wrapper.model_ = model
        wrapper.columns_ = list(config["columns_"])
        wrapper.median_ = np.asarray(config["median_"], dtype=np.float64)
        wrapper.scale_ = np.asarray(config["scale_"], dtype=np.float64)
        wrapper.feature_names_ = list(config["feature_names_"])
        return wrapper


def with_fitted_processing(model: Forecaster, processing: str) -> Forecaster:
    """``model`` behind the fitted ``features.processing`` (unchanged for the per-timestamp kinds and none)."""
    if processing in FITTED_PROCESSING:
        return RobustZScoreForecaster(model, fillna=FITTED_PROCESSING[processing])  # type: ignore[return-value]
    return model
