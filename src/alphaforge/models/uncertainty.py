"""Prediction intervals for regression forecasters, and their empirical coverage.

Two ways to put an interval around a point forecast:

* :class:`ConformalRegressor` wraps *any* regression forecaster with split-conformal
  intervals. The last ``calibration_fraction`` of the fit rows' timestamps (every row of a
  timestamp on the same side) is held out as the calibration slice; the wrapped model is fitted
  on the earlier rows (less ``gap`` timestamps, a purge against overlapping labels) and its
  absolute residuals on the calibration slice give the half-width: the
  ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` residuals, i.e. their empirical quantile
  at level ``ceil((n + 1)(1 - alpha)) / n``. If calibration and future rows are exchangeable, the
  symmetric interval ``prediction +/- half-width`` covers the truth with probability at least
  ``1 - alpha`` (Vovk et al. 2005; Lei et al. 2018). Markets are not exchangeable across volatility
  regimes, which is why the coverage *out of sample* is measured and reported
  (:func:`interval_coverage`) rather than assumed. The model is *not* refitted on the
  calibration rows: that would void the guarantee.
* :class:`QuantileLightGBM` fits LightGBM with the pinball loss at ``alpha / 2`` and
  ``1 - alpha / 2`` next to the ordinary point model; its intervals adapt their width to the
  features (e.g. recent volatility) but carry no finite-sample guarantee.

Both implement :class:`alphaforge.models.base.Forecaster` (``predict`` gives the point forecast)
plus ``predict_interval(frame, *, predict_mask) -> DataFrame[prediction, lower, upper]`` (one row
per masked row, indexed like the frame), and save to / load from a folder whose ``config.json``
names the family (``"conformal"``, ``"lightgbm_quantile"``).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alphaforge.models.base import Forecaster, Task
from alphaforge.models.tabular import CONFIG_FILE, LightGBMForecaster, row_mask, target_values

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INTERVAL_COLUMNS: tuple[str, ...] = ("prediction", "lower", "upper")


def interval_coverage(
    target: np.ndarray | pd.Series, lower: np.ndarray | pd.Series, upper: np.ndarray | pd.Series
) -> float:
    """The fraction of targets with ``lower <= target <= upper``, over rows where all three are finite.

    NaN when no row has all three (e.g. a test window whose future is not known yet).
    """
    y, lo, hi = (np.asarray(values, dtype=np.float64) for values in (target, lower, upper))
    if not (y.shape == lo.shape == hi.shape):
        raise ValueError(f"target, lower and upper must have the same shape, got {y.shape}, {lo.shape}, {hi.shape}")
    known = np.isfinite(y) & ~np.isnan(lo) & ~np.isnan(hi)
    if not known.any():
        return float("nan")
    return float(np.mean((y[known] >= lo[known]) & (y[known] <= hi[known])))


def conformal_quantile(residuals: np.ndarray, alpha: float) -> float:
    """The split-conformal half-width: the ``ceil((n + 1)(1 - alpha))``-th smallest absolute residual.

    ``inf`` (with a warning) when there are too few residuals for that rank to exist
    (``n < 1 / alpha - 1``): no finite interval has the promised coverage then.
    """
    values = np.abs(np.asarray(residuals, dtype=np.float64))
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        raise ValueError("conformal_quantile: no finite residual to calibrate on")
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if rank > n:
        log.warning("conformal: %d calibration residuals are too few for alpha=%g; the interval is unbounded", n, alpha)
        return float("inf")
    return float(np.partition(values, rank - 1)[rank - 1])


def _timestamp_keys(frame: pd.DataFrame) -> np.ndarray:
    if "timestamp" not in frame.columns:
        raise KeyError("frame lacks the column 'timestamp' the calibration split is made on")
    column = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(column):
        return pd.DatetimeIndex(column).asi8
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.int64)
    raise TypeError(f"column 'timestamp' must be datetime-like, got dtype {column.dtype}")


def _interval_frame(frame: pd.DataFrame, rows: np.ndarray, prediction: np.ndarray, lower: np.ndarray,
                    upper: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"prediction": prediction, "lower": lower, "upper": upper}, index=frame.index[rows])


def _empty_importance() -> pd.Series:
    return pd.Series(dtype=np.float64, name="none")


def _read_config(folder: Path, family: str) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a saved forecaster")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r} is not {FORMAT_VERSION}")
    if config.get("family") != family:
        raise ValueError(f"{path}: holds a {config.get('family')!r} model, not {family!r}")
    return config


# --------------------------------------------------------------------------------------------
# Split conformal
# --------------------------------------------------------------------------------------------


class ConformalParams(BaseModel):
    """Split-conformal settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calibration_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="last share of fit timestamps held out")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="miscoverage: the interval aims at 1 - alpha")
    gap: int = Field(0, ge=0, description="timestamps dropped between the model's rows and the calibration slice")


class ConformalRegressor:
    """Split-conformal intervals around any regression forecaster (see the module docstring).

    ``base`` is an unfitted forecaster (it is copied, never fitted in place). Learned:
    ``model_`` (the fitted copy), ``residual_quantile_`` (the half-width), ``n_calibration_``
    (rows in the calibration slice), ``calibration_start_`` (its first timestamp), ``feature_names_``.
    """

    family: ClassVar[str] = "conformal"

    def __init__(
        self, base: Forecaster, *, calibration_fraction: float = 0.2, alpha: float = 0.1, gap: int = 0
    ) -> None:
        if getattr(base, "task", None) != "regression":
            raise ValueError(
                f"conformal intervals need a regression forecaster, got task={getattr(base, 'task', None)!r}"
            )
        try:
            self.params = ConformalParams(calibration_fraction=calibration_fraction, alpha=alpha, gap=gap)
        except ValidationError as err:
            raise ValueError(f"conformal: {err}") from err
        self.base = base
        self.task: Task = "regression"

    @property
    def row_wise(self) -> bool:
        """Whether each prediction depends on its own row only (as the wrapped model's do, or not)."""
        return bool(getattr(self.base, "row_wise", False))

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.params.model_dump().items())
        return f"ConformalRegressor({self.base!r}, {settings})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"base": self.base, **self.params.model_dump()}

    def fit(self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None) -> ConformalRegressor:
        """Fit the model on the earlier fit rows and calibrate the half-width on the last ones."""
        y = target_values(target, frame, "regression")
        rows = row_mask(fit_mask, len(frame), "fit_mask") & ~np.isnan(y)
        timestamps = _timestamp_keys(frame)
        unique = np.unique(timestamps[rows])
        n_calibration_times = math.ceil(len(unique) * self.params.calibration_fraction)
        n_model_times = len(unique) - n_calibration_times - self.params.gap
        if n_model_times < 1:
            raise ValueError(
                f"conformal: the fit rows span {len(unique)} timestamps, too few for a calibration slice of "
                f"{n_calibration_times} plus a gap of {self.params.gap} with any left to fit on"
            )
        calibration_start = unique[len(unique) - n_calibration_times]
        model_end = unique[n_model_times - 1]
        model_rows = rows & (timestamps <= model_end)
        calibration_rows = rows & (timestamps >= calibration_start)
        model = copy.deepcopy(self.base).fit(frame, target, fit_mask=model_rows)
        residuals = y[calibration_rows] - model.predict(frame, predict_mask=calibration_rows)
        self.residual_quantile_ = conformal_quantile(residuals, self.params.alpha)
        self.n_calibration_ = int(calibration_rows.sum())
        self.calibration_start_ = pd.Timestamp(frame["timestamp"].iloc[int(np.argmax(timestamps == calibration_start))])
        self.model_ = model
        self.feature_names_: list[str] = list(model.feature_names_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this ConformalRegressor is not fitted yet; call fit first")

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        """The wrapped model's point forecast for the masked rows."""
        self._check_fitted()
        return self.model_.predict(frame, predict_mask=predict_mask)

    def predict_interval(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> pd.DataFrame:
        """``prediction`` and the symmetric interval ``prediction -/+ residual_quantile_`` per masked row."""
        rows = row_mask(predict_mask, len(frame), "predict_mask")
        prediction = self.predict(frame, predict_mask=rows)
        half_width = self.residual_quantile_
        return _interval_frame(frame, rows, prediction, prediction - half_width, prediction + half_width)

    def feature_importance(self) -> pd.Series:
        """The wrapped model's built-in importance (empty when it has none)."""
        self._check_fitted()
        method = getattr(self.model_, "feature_importance", None)
        return method() if method is not None else _empty_importance()

    def save(self, path: Path) -> None:
        """``config.json`` (settings, half-width, the wrapped model's class) and the wrapped model in ``base/``."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.model_.save(folder / "base")
        model_class = type(self.model_)
        config = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "task": self.task,
            "params": self.params.model_dump(),
            "base_class": {"module": model_class.__module__, "name": model_class.__qualname__},
            "base_family": getattr(self.model_, "family", None),
            "residual_quantile_": self.residual_quantile_,
            "n_calibration_": self.n_calibration_,
            "calibration_start_": self.calibration_start_.isoformat(),
            "feature_names_": self.feature_names_,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ConformalRegressor:
        """The conformal forecaster saved in ``path``; the wrapped model comes back through its own ``load``."""
        folder = Path(path)
        config = _read_config(folder, cls.family)
        module = importlib.import_module(config["base_class"]["module"])
        model_class = getattr(module, config["base_class"]["name"])
        model = model_class.load(folder / "base")
        wrapper = cls(model, **config["params"])
        wrapper.model_ = model
        wrapper.residual_quantile_ = float(config["residual_quantile_"])
        wrapper.n_calibration_ = int(config["n_calibration_"])
        wrapper.calibration_start_ = pd.Timestamp(config["calibration_start_"])
        wrapper.feature_names_ = list(config["feature_names_"])
        return wrapper


# --------------------------------------------------------------------------------------------
# Quantile LightGBM
# --------------------------------------------------------------------------------------------


class QuantileLightGBM:
    """Three LightGBM models: the point forecast and the ``alpha / 2`` and ``1 - alpha / 2`` quantiles.

    The hyperparameters are those of :class:`alphaforge.models.tabular.LightGBMForecaster` (shared by the
    three models; ``objective`` applies to the point model only). Where the two quantile models cross, the
    interval is their sorted pair. Learned: ``point_``, ``lower_``, ``upper_``, ``feature_names_``.
    """

    family: ClassVar[str] = "lightgbm_quantile"
    row_wise: ClassVar[bool] = True

    def __init__(self, *, task: Task = "regression", alpha: float = 0.1, **hyperparameters: Any) -> None:
        if task != "regression":
            raise ValueError(f"quantile intervals need task='regression', got {task!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"lightgbm_quantile: alpha must be in (0, 1), got {alpha!r}")
        for reserved in ("quantile_level",):
            if reserved in hyperparameters:
                raise ValueError(f"lightgbm_quantile: {reserved} is set from alpha; do not pass it")
        LightGBMForecaster(task=task, **hyperparameters)  # validates the hyperparameters now, not at fit
        self.task: Task = task
        self.alpha = float(alpha)
        self.hyperparameters = dict(hyperparameters)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"QuantileLightGBM(alpha={self.alpha!r}{', ' if arguments else ''}{arguments})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"task": self.task, "alpha": self.alpha, **self.hyperparameters}

    def _quantile_model(self, level: float) -> LightGBMForecaster:
        settings = {**self.hyperparameters, "objective": "quantile", "quantile_level": level}
        return LightGBMForecaster(task="regression", **settings)

    def fit(self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None) -> QuantileLightGBM:
        """Fit the point and the two quantile models on the same rows."""
        point = LightGBMForecaster(task="regression", **self.hyperparameters)
        self.point_ = point.fit(frame, target, fit_mask=fit_mask)
        self.lower_ = self._quantile_model(self.alpha / 2.0).fit(frame, target, fit_mask=fit_mask)
        self.upper_ = self._quantile_model(1.0 - self.alpha / 2.0).fit(frame, target, fit_mask=fit_mask)
        self.feature_names_: list[str] = list(self.point_.feature_names_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "point_"):
            raise RuntimeError("this QuantileLightGBM is not fitted yet; call fit first")

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        """The point model's forecast for the masked rows."""
        self._check_fitted()
        return self.point_.predict(frame, predict_mask=predict_mask)

    def predict_interval(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> pd.DataFrame:
        """``prediction`` (point model) and ``lower`` / ``upper`` (the quantile models, sorted) per masked row."""
        self._check_fitted()
        rows = row_mask(predict_mask, len(frame), "predict_mask")
        low = self.lower_.predict(frame, predict_mask=rows)
        high = self.upper_.predict(frame, predict_mask=rows)
        prediction = self.point_.predict(frame, predict_mask=rows)
        return _interval_frame(frame, rows, prediction, np.minimum(low, high), np.maximum(low, high))

    def feature_importance(self) -> pd.Series:
        """Total gain of the point model."""
        self._check_fitted()
        return self.point_.feature_importance()

    def save(self, path: Path) -> None:
        """``config.json`` and the three boosters in ``point/``, ``lower/``, ``upper/``."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("point", "lower", "upper"):
            getattr(self, f"{name}_").save(folder / name)
        config = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "task": self.task,
            "alpha": self.alpha,
            "params": self.hyperparameters,
            "feature_names_": self.feature_names_,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> QuantileLightGBM:
        """The quantile forecaster saved in ``path``."""
        folder = Path(path)
        config = _read_config(folder, cls.family)
        model = cls(task=config["task"], alpha=config["alpha"], **config["params"])
        for name in ("point", "lower", "upper"):
            loaded = LightGBMForecaster.load(folder / name)
            setattr(model, f"{name}_", loaded)
        model.feature_names_ = list(config["feature_names_"])
        return model
