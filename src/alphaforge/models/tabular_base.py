"""The machinery every tabular family shares: frame checks, the :class:`TabularForecaster` base class
(parameters, masks, NaN targets, ``config.json`` save/load). The families live in
:mod:`alphaforge.models.boosted` and :mod:`alphaforge.models.sklearn_models`; :mod:`alphaforge.models.tabular`
re-exports them all."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, get_args

import numpy as np
import pandas as pd
from pydantic import ValidationError

from alphaforge.features import feature_columns
from alphaforge.models.base import Task, row_mask  # noqa: F401  (row_mask re-exported)
from alphaforge.models.params import _Params

# The public classes say they live in alphaforge.models.tabular, their public path: wrappers that save a base
# model (normalise, uncertainty) record its class by module and name, so a file saved after the split names
# the same path as one saved before it, and loads with either version of the code.
PUBLIC_MODULE = "alphaforge.models.tabular"

log = logging.getLogger("alphaforge.models.tabular")  # the logger name from before the split

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TASKS: tuple[str, ...] = get_args(Task)


# --------------------------------------------------------------------------------------------
# Frame checks shared by every family
# --------------------------------------------------------------------------------------------


def feature_matrix(frame: pd.DataFrame, names: list[str], rows: np.ndarray) -> np.ndarray:
    """The float64 matrix of columns ``names`` at the boolean ``rows``; missing, non-numeric or infinite
    values raise, naming the column (and the row)."""
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the feature column(s) {missing} the model was fitted on")
    dtypes = frame.dtypes
    for name in names:
        dtype = dtypes[name]
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise TypeError(f"feature column {name!r} must be numeric, got dtype {dtype}")
    # Select rows before converting: a small test window of a large panel stays small.
    selected = frame[names] if rows.all() else frame.loc[rows, names]
    values = selected.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        position, column = (int(i) for i in np.argwhere(infinite)[0])
        row = frame.index[np.flatnonzero(rows)[position]]
        raise ValueError(f"feature column {names[column]!r} is infinite at row {row!r}")
    return values


def target_values(target: pd.Series | np.ndarray, frame: pd.DataFrame, task: Task) -> np.ndarray:
    """``target`` as float64 aligned with ``frame``; infinities, and non-0/1 classes for classification, raise."""
    if len(target) != len(frame):
        raise ValueError(f"target has {len(target)} rows, frame has {len(frame)}")
    if isinstance(target, pd.Series):
        if not target.index.equals(frame.index):
            raise ValueError("target must be aligned with frame (same index, same order)")
        values = pd.to_numeric(target, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = np.asarray(target, dtype=np.float64)
    infinite = np.isinf(values)
    if infinite.any():
        raise ValueError(f"target is infinite at row {frame.index[int(np.flatnonzero(infinite)[0])]!r}")
    if task == "classification":
        bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"classification target must be 0/1 (e.g. forward_direction), got {values[row]!r} at row "
                f"{frame.index[row]!r}"
            )
    return values


@contextmanager
def _blas_threads(n_threads: int) -> Iterator[None]:
    """Cap the BLAS/OpenMP threads numpy-heavy scikit-learn estimators use while fitting, and only then."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n_threads):
        yield


# --------------------------------------------------------------------------------------------
# The shared base class
# --------------------------------------------------------------------------------------------


class TabularForecaster:
    """Common machinery: parameter handling, masks, NaN targets, config.json; subclasses supply the model."""

    __module__ = PUBLIC_MODULE

    family: ClassVar[str]
    params_class: ClassVar[type[_Params]]
    model_file: ClassVar[str] = "model.joblib"
    # Each prediction depends on its own row only (no look-back), so callers may slice the frame.
    row_wise: ClassVar[bool] = True

    def __init__(self, *, task: Task = "regression", **hyperparameters: Any) -> None:
        if task not in TASKS:
            raise ValueError(f"{self.family}: task must be one of {TASKS}, got {task!r}")
        try:
            params = self.params_class(**hyperparameters)
        except ValidationError as err:
            raise ValueError(f"{self.family} hyperparameters: {err}") from err
        self._check_task_params(task, params)
        self.task: Task = task
        self.params = params
        self._given = dict(hyperparameters)

    def _check_task_params(self, task: Task, params: _Params) -> None:
        """Hook: reject hyperparameters that make no sense for ``task``."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"{type(self).__name__}({arguments})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``task`` and the hyperparameters given to ``__init__`` (defaults are in ``self.params``)."""
        return {"task": self.task, **self._given}

    def set_params(self, **params: Any) -> TabularForecaster:
        """Change parameters (validated again) and return ``self``; a fitted model keeps its fit until ``fit``."""
        merged = {**self.get_params(), **params}
        task = merged.pop("task")
        type(self).__init__(self, task=task, **merged)
        return self

    # ---------------------------------------------------------------------------- fit / predict

    def fit(
        self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None
    ) -> TabularForecaster:
        """Learn from the rows where ``fit_mask`` is true and the target is known (NaN-target rows are dropped)."""
        names = feature_columns(frame)
        if not names:
            raise ValueError(
                "frame has no feature columns besides the keys, raw bar columns and labels; "
                "pass the output of compute_features"
            )
        requested = row_mask(fit_mask, len(frame), "fit_mask")
        y = target_values(target, frame, self.task)
        rows = requested & ~np.isnan(y)
        if not rows.any():
            raise ValueError(
                f"{self.family}: no row to fit: fit_mask selects {int(requested.sum())} rows, none with a known target"
            )
        x = feature_matrix(frame, names, rows)
        y_fit = y[rows]
        if self.task == "classification" and len(np.unique(y_fit)) < 2:
            raise ValueError(
                f"{self.family}: the classification target has a single class {np.unique(y_fit)} on the fit rows"
            )
        empty = [name for name, known in zip(names, (~np.isnan(x)).any(axis=0), strict=True) if not known]
        if empty:
            log.warning("%s: feature column(s) %s are entirely NaN on the fit rows", self.family, empty)
        self.feature_names_ = names
        timestamps = frame["timestamp"].to_numpy()[rows] if "timestamp" in frame.columns else None
        self._fit_rows(x, y_fit, timestamps)
        self.n_fit_rows_ = int(rows.sum())
        self.n_dropped_unlabelled_ = int((requested & ~rows).sum())
        return self

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        """One float per masked row: the forecast (regression) or P(target = 1) (classification)."""
        self._check_fitted()
        rows = row_mask(predict_mask, len(frame), "predict_mask")
        x = feature_matrix(frame, self.feature_names_, rows)
        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(self._predict_matrix(x), dtype=np.float64).reshape(-1)

    def feature_importance(self) -> pd.Series:
        """Built-in importance per feature, largest first (see the module docstring for which kind)."""
        self._check_fitted()
        values, kind = self._importance_values()
        if values is None:
            return pd.Series(dtype=np.float64, name=kind)
        series = pd.Series(np.asarray(values, dtype=np.float64), index=self.feature_names_, name=kind)
        return series.sort_values(ascending=False, kind="stable")

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit first")

    # ---------------------------------------------------------------------------- persistence

    def save(self, path: Path) -> None:
        """Write ``config.json`` and the model file into the folder ``path`` (created if needed)."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_model(folder / self.model_file)
        config = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "task": self.task,
            "params": self.params.model_dump(mode="json"),
            "feature_names_": self.feature_names_,
            "n_fit_rows_": self.n_fit_rows_,
            "n_dropped_unlabelled_": self.n_dropped_unlabelled_,
            "state": self._extra_state(),
            "library_versions": self._library_versions(),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TabularForecaster:
        """The forecaster saved in folder ``path`` (by this class, or any tabular class when called on the base)."""
        folder = Path(path)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} is missing: not a saved forecaster")
        config = json.loads(config_path.read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {config.get('format_version')!r} is not {FORMAT_VERSION}")
        family = config.get("family")
        family_classes = _family_classes()
        target_class = family_classes.get(family)  # type: ignore[arg-type]
        if target_class is None:
            raise ValueError(f"{config_path}: family {family!r} is not a tabular family ({', '.join(family_classes)})")
        if cls is not TabularForecaster and cls is not target_class:
            raise TypeError(f"{folder} holds a {family!r} model, which {cls.__name__}.load cannot return")
        model_path = folder / target_class.model_file
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path} is missing: the saved {family!r} model is incomplete")
        model = target_class(task=config["task"], **config["params"])
        model.feature_names_ = list(config["feature_names_"])
        model.n_fit_rows_ = int(config["n_fit_rows_"])
        model.n_dropped_unlabelled_ = int(config["n_dropped_unlabelled_"])
        model._load_model(model_path, config.get("state", {}))
        return model

    # ---------------------------------------------------------------------------- family hooks

    def _fit_rows(self, x: np.ndarray, y: np.ndarray, timestamps: np.ndarray | None) -> None:
        """Fit on the rows' features and targets; ``timestamps`` (None when the frame has none) group the rows
        for ranking objectives. Families without one ignore it."""
        self._fit_matrix(x, y)

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _library_versions(self) -> dict[str, str]:
        import sklearn

        return {"scikit-learn": sklearn.__version__}

    def _save_model(self, path: Path) -> None:
        import joblib

        joblib.dump(self.model_, path)

    def _load_model(self, path: Path, state: dict[str, Any]) -> None:
        import joblib

        self.model_ = joblib.load(path)


# --------------------------------------------------------------------------------------------
# Gradient boosting
# --------------------------------------------------------------------------------------------


def _family_classes() -> dict[str, type[TabularForecaster]]:
    """Every concrete family class by its ``family``, in definition order (the classes live in the modules that
    import this one, so they are found as subclasses; :mod:`alphaforge.models.tabular` imports them all)."""
    found: dict[str, type[TabularForecaster]] = {}

    def visit(cls: type[TabularForecaster]) -> None:
        for subclass in cls.__subclasses__():
            if "family" in vars(subclass):
                found.setdefault(subclass.family, subclass)
            visit(subclass)

    visit(TabularForecaster)
    return found
