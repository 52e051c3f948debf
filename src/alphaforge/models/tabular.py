"""Tabular model families: gradient boosting, forests, linear models and a small MLP.

Every class implements :class:`alphaforge.models.base.Forecaster` and behaves like a
scikit-learn estimator: ``__init__(*, task, **hyperparameters)`` only validates and stores
parameters, ``fit`` returns ``self``, learned attributes end in ``_``, ``get_params`` /
``set_params`` work (so :func:`sklearn.base.clone` does too).

========================  ==================  =============================================
class                     ``family``          model (regression / classification)
========================  ==================  =============================================
LightGBMForecaster        ``lightgbm``        LGBMRegressor / LGBMClassifier
XGBoostForecaster         ``xgboost``         XGBRegressor / XGBClassifier, ``tree_method="hist"``
RandomForestForecaster    ``random_forest``   RandomForestRegressor / RandomForestClassifier
ExtraTreesForecaster      ``extra_trees``     ExtraTreesRegressor / ExtraTreesClassifier
RidgeForecaster           ``ridge``           Ridge / L2 LogisticRegression
ElasticNetForecaster      ``elastic_net``     ElasticNet / elastic-net LogisticRegression (saga)
MLPForecaster             ``mlp``             MLPRegressor / MLPClassifier
========================  ==================  =============================================

**Rows and columns.** A forecaster looks at one row at a time, so the order of the frame does
not matter. The features are :func:`alphaforge.features.feature_columns` of the frame handed to
``fit`` (every column except ``timestamp``, ``symbol``, the raw bar columns and the label
columns), in frame order; ``predict`` selects the same columns by name. A non-numeric or
infinite feature value raises, naming the column and row. Rows inside ``fit_mask`` whose target
is NaN (the last ``horizon`` bars of every symbol, whose future is unknown) are *dropped* from
fitting; ``n_fit_rows_`` and ``n_dropped_unlabelled_`` record how many. For classification the
target is 0/1 (``forward_direction``) and ``predict`` returns P(target = 1).

**Missing feature values.** LightGBM and XGBoost take NaN natively (they learn a default
direction per split). The scikit-learn families get a pipeline whose first step is a median
imputer fitted on the fit rows only; linear models and the MLP then standardise the inputs
(``StandardScaler``, also fitted on the fit rows only). For regression the linear models and the
MLP also standardise the *target* (a ``TransformedTargetRegressor``), so ``alpha`` means the same
whether the target is a daily return of 1e-2 or a volatility of 1e-3.

**Importance** (:meth:`feature_importance`, largest first; the ``name`` of the series says which):
total split gain for LightGBM and XGBoost (``"gain"``), mean impurity decrease for the forests
(``"impurity"``), absolute coefficients on standardised inputs for the linear models
(``"abs_coef"``), and an *empty* series for the MLP, which has no built-in importance (use
:func:`alphaforge.models.importance.permutation_importance`, which works for every family).

**Threads.** Two by default (``num_threads`` for LightGBM, ``n_jobs`` elsewhere; for the linear
models and the MLP it caps the BLAS threads during fit and predict).

**Devices.** XGBoost's ``device="auto"`` trains on CUDA when this xgboost build has CUDA and
torch sees a GPU, else on the CPU; prediction always runs on the CPU (numpy inputs). The other
families are CPU-only.

**Persistence.** ``save(path)`` writes a folder: ``config.json`` (format version, family, task,
hyperparameters, ``feature_names_``, fit statistics, library versions) and the model itself:
``model.txt`` (LightGBM booster text), ``model.json`` (XGBoost JSON) or ``model.joblib``
(scikit-learn pipeline; a pickle, so load only folders you trust). ``load`` restores a
forecaster whose predictions equal the saved one's exactly.
"""

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
from alphaforge.models.base import Task
from alphaforge.models.params import (  # noqa: F401  (re-exported)
    ElasticNetParams,
    ForestParams,
    LightGBMParams,
    MLPParams,
    RidgeParams,
    XGBoostParams,
    _Params,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TASKS: tuple[str, ...] = get_args(Task)


# --------------------------------------------------------------------------------------------
# Hyperparameters, one pydantic model per family (unknown keys raise, naming the key)
# --------------------------------------------------------------------------------------------



# --------------------------------------------------------------------------------------------
# Frame checks shared by every family
# --------------------------------------------------------------------------------------------


def row_mask(mask: np.ndarray | pd.Series | None, n_rows: int, name: str) -> np.ndarray:
    """``mask`` as a boolean array with one entry per row (all true when None); anything else raises."""
    if mask is None:
        return np.ones(n_rows, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {array.dtype}")
    if array.shape != (n_rows,):
        raise ValueError(f"{name} must have one entry per frame row: shape {array.shape} vs {n_rows} rows")
    return array


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
        target_class = TABULAR_CLASSES.get(family)  # type: ignore[arg-type]
        if target_class is None:
            raise ValueError(f"{config_path}: family {family!r} is not a tabular family ({', '.join(TABULAR_CLASSES)})")
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


RANKING_OBJECTIVES: frozenset[str] = frozenset({"lambdarank", "rank_xendcg"})


def ranking_relevance(y: np.ndarray, groups: np.ndarray, buckets: int) -> np.ndarray:
    """Integer relevance 0..buckets-1 of each row: the quantile bucket of its target among the rows of its group
    (its timestamp), from the percentile rank with ties averaged: ``ceil(pct * buckets) - 1``."""
    pct = pd.Series(y).groupby(groups).rank(method="average", pct=True).to_numpy()
    return np.clip(np.ceil(pct * buckets) - 1.0, 0, buckets - 1).astype(np.int32)


class LightGBMForecaster(TabularForecaster):
    """LightGBM gradient-boosted trees; NaN features are handled natively. ``booster_`` is the fitted booster.

    ``objective`` picks the regression loss (squared error by default; ``"quantile"`` with
    ``quantile_level`` fits a conditional quantile, used by
    :class:`alphaforge.models.uncertainty.QuantileLightGBM`), or a ranking objective (``"lambdarank"``,
    ``"rank_xendcg"``): the rows are grouped by timestamp and the target becomes its per-timestamp quantile
    bucket (:func:`ranking_relevance`), so the forecast is a score that orders the symbols of a timestamp,
    not a return.
    """

    family: ClassVar[str] = "lightgbm"
    params_class: ClassVar[type[_Params]] = LightGBMParams
    model_file: ClassVar[str] = "model.txt"
    params: LightGBMParams

    def _check_task_params(self, task: Task, params: _Params) -> None:
        assert isinstance(params, LightGBMParams)
        if task == "classification" and params.objective is not None:
            raise ValueError(
                f"lightgbm: objective {params.objective!r} is a regression loss; leave it unset for classification"
            )

    def _fit_rows(self, x: np.ndarray, y: np.ndarray, timestamps: np.ndarray | None) -> None:
        if self.params.objective not in RANKING_OBJECTIVES:
            self._fit_matrix(x, y)
            return
        if timestamps is None:
            raise ValueError(f"lightgbm: objective {self.params.objective!r} ranks the symbols of each timestamp; the "
                             "frame has no 'timestamp' column to group the rows by")
        import lightgbm as lgb

        order = np.argsort(timestamps, kind="stable")  # LightGBM's groups are runs of consecutive rows
        codes, _ = pd.factorize(timestamps[order])
        relevance = ranking_relevance(y[order], codes, self.params.rank_buckets)
        estimator = lgb.LGBMRanker(objective=self.params.objective, **self._settings())
        estimator.fit(x[order], relevance, group=np.bincount(codes), feature_name=self.feature_names_)
        self.booster_ = estimator.booster_

    def _settings(self) -> dict[str, Any]:
        p = self.params
        return dict(
            n_estimators=p.n_estimators, learning_rate=p.learning_rate, num_leaves=p.num_leaves, max_depth=p.max_depth,
            min_child_samples=p.min_child_samples, subsample=p.subsample, subsample_freq=p.subsample_freq,
            colsample_bytree=p.colsample_bytree, reg_alpha=p.reg_alpha, reg_lambda=p.reg_lambda,
            min_split_gain=p.min_split_gain, max_bin=p.max_bin, n_jobs=p.num_threads, random_state=p.seed,
            verbose=-1, deterministic=True, force_col_wise=True,
        )

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        import lightgbm as lgb

        p = self.params
        settings = self._settings()
        if self.task == "classification":
            estimator = lgb.LGBMClassifier(objective="binary", **settings)
        else:
            objective = p.objective or "regression"
            extra = {"alpha": p.quantile_level} if objective == "quantile" else {}
            estimator = lgb.LGBMRegressor(objective=objective, **settings, **extra)
        estimator.fit(x, y, feature_name=self.feature_names_)
        self.booster_ = estimator.booster_

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        # For the binary objective the booster's output is already P(y = 1).
        return self.booster_.predict(x, num_threads=self.params.num_threads)

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        return self.booster_.feature_importance(importance_type="gain"), "gain"

    def _library_versions(self) -> dict[str, str]:
        import lightgbm as lgb

        return {"lightgbm": lgb.__version__}

    def _save_model(self, path: Path) -> None:
        self.booster_.save_model(str(path))

    def _load_model(self, path: Path, state: dict[str, Any]) -> None:
        import lightgbm as lgb

        self.booster_ = lgb.Booster(model_file=str(path))


def resolve_xgboost_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: ``auto`` is CUDA when this xgboost build has CUDA *and* torch sees a GPU.

    torch is only imported when the xgboost build could use a GPU at all (never with ``xgboost-cpu``).
    """
    import xgboost as xgb

    built_with_cuda = bool(xgb.build_info().get("USE_CUDA", False))
    if device == "cpu":
        return "cpu"
    gpu_visible = False
    if built_with_cuda:
        try:
            import torch
        except ImportError:
            gpu_visible = False
        else:
            gpu_visible = bool(torch.cuda.is_available())
    if device == "cuda" and not (built_with_cuda and gpu_visible):
        reason = "this xgboost build has no CUDA support" if not built_with_cuda else "torch sees no CUDA GPU"
        raise RuntimeError(f"xgboost: device='cuda' was asked for but {reason}; use device='auto' or 'cpu'")
    return "cuda" if built_with_cuda and gpu_visible else "cpu"


class XGBoostForecaster(TabularForecaster):
    """XGBoost with ``tree_method="hist"``; NaN features are handled natively.

    Trains on the GPU when ``device`` resolves to CUDA (``device_`` records where), and always
    predicts on the CPU, where the numpy inputs are.
    """

    family: ClassVar[str] = "xgboost"
    params_class: ClassVar[type[_Params]] = XGBoostParams
    model_file: ClassVar[str] = "model.json"
    params: XGBoostParams

    def _estimator(self, device: str) -> Any:
        import xgboost as xgb

        p = self.params
        settings: dict[str, Any] = dict(
            n_estimators=p.n_estimators, learning_rate=p.learning_rate, max_depth=p.max_depth,
            min_child_weight=p.min_child_weight, subsample=p.subsample, colsample_bytree=p.colsample_bytree,
            reg_alpha=p.reg_alpha, reg_lambda=p.reg_lambda, gamma=p.gamma, max_bin=p.max_bin, n_jobs=p.n_jobs,
            random_state=p.seed, tree_method="hist", device=device, verbosity=0,
        )
        if self.task == "classification":
            return xgb.XGBClassifier(objective="binary:logistic", **settings)
        return xgb.XGBRegressor(objective="reg:squarederror", **settings)

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        self.device_ = resolve_xgboost_device(self.params.device)
        model = self._estimator(self.device_)
        model.fit(x, y if self.task == "regression" else y.astype(np.int64))
        model.get_booster().set_param({"device": "cpu"})
        self.model_ = model

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return self.model_.predict_proba(x)[:, 1]
        return self.model_.predict(x)

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        scores = self.model_.get_booster().get_score(importance_type="total_gain")
        # Boosters fitted on numpy name features f0, f1, ...; a feature never split on has no entry.
        return np.array([scores.get(f"f{i}", 0.0) for i in range(len(self.feature_names_))]), "gain"

    def _extra_state(self) -> dict[str, Any]:
        return {"device_": self.device_}

    def _library_versions(self) -> dict[str, str]:
        import xgboost as xgb

        return {"xgboost": xgb.__version__}

    def _save_model(self, path: Path) -> None:
        self.model_.save_model(str(path))

    def _load_model(self, path: Path, state: dict[str, Any]) -> None:
        model = self._estimator("cpu")
        model.load_model(str(path))
        model.get_booster().set_param({"device": "cpu"})
        self.model_ = model
        self.device_ = str(state.get("device_", "cpu"))


# --------------------------------------------------------------------------------------------
# scikit-learn families
# --------------------------------------------------------------------------------------------


def _imputer() -> Any:
    from sklearn.impute import SimpleImputer

    # keep_empty_features: a column that is all-NaN on the fit rows becomes 0 instead of vanishing,
    # so the matrix keeps one column per feature name.
    return SimpleImputer(strategy="median", keep_empty_features=True)


class _ForestForecaster(TabularForecaster):
    """Shared by the random forest and extra trees: impute (median), then the forest."""

    params_class: ClassVar[type[_Params]] = ForestParams
    params: ForestParams

    def _forest_classes(self) -> tuple[type, type]:
        raise NotImplementedError

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.pipeline import Pipeline

        p = self.params
        regressor_class, classifier_class = self._forest_classes()
        forest_class = classifier_class if self.task == "classification" else regressor_class
        forest = forest_class(
            n_estimators=p.n_estimators, max_depth=p.max_depth, min_samples_leaf=p.min_samples_leaf,
            max_features=p.max_features, bootstrap=p.bootstrap, max_samples=p.max_samples if p.bootstrap else None,
            n_jobs=p.n_jobs, random_state=p.seed,
        )
        self.model_ = Pipeline([("impute", _imputer()), ("model", forest)]).fit(x, y)

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return self.model_.predict_proba(x)[:, 1]
        return self.model_.predict(x)

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        return self.model_.named_steps["model"].feature_importances_, "impurity"


class RandomForestForecaster(_ForestForecaster):
    """A random forest (bootstrap rows, ``max_features`` of the features per split) on median-imputed features."""

    family: ClassVar[str] = "random_forest"

    def _forest_classes(self) -> tuple[type, type]:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        return RandomForestRegressor, RandomForestClassifier


class ExtraTreesForecaster(_ForestForecaster):
    """Extremely randomised trees (random split thresholds) on median-imputed features."""

    family: ClassVar[str] = "extra_trees"

    def _forest_classes(self) -> tuple[type, type]:
        from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor

        return ExtraTreesRegressor, ExtraTreesClassifier


class _ScaledForecaster(TabularForecaster):
    """Impute (median), standardise, then the model; regression also standardises the target."""

    def _estimator(self, n_rows: int) -> Any:
        raise NotImplementedError

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        pipeline = Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("model", self._estimator(len(y)))])
        with _blas_threads(self.params.n_jobs):  # type: ignore[attr-defined]
            if self.task == "classification":
                self.model_ = pipeline.fit(x, y.astype(np.int64))
            else:
                self.model_ = TransformedTargetRegressor(
                    regressor=pipeline, transformer=StandardScaler(), check_inverse=False
                ).fit(x, y)

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        # No thread cap here: prediction is one small matrix product per layer, and threadpoolctl's
        # library scan would cost more than it (permutation importance predicts ~100 times).
        if self.task == "classification":
            return self.model_.predict_proba(x)[:, 1]
        return self.model_.predict(x)

    def _pipeline(self) -> Any:
        return self.model_ if self.task == "classification" else self.model_.regressor_

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        coefficients = np.asarray(self._pipeline().named_steps["model"].coef_, dtype=np.float64).reshape(-1)
        return np.abs(coefficients), "abs_coef"


class RidgeForecaster(_ScaledForecaster):
    """Ridge regression on standardised features (L2 logistic regression for classification)."""

    family: ClassVar[str] = "ridge"
    params_class: ClassVar[type[_Params]] = RidgeParams
    params: RidgeParams

    def _estimator(self, n_rows: int) -> Any:
        from sklearn.linear_model import LogisticRegression, Ridge

        if self.task == "classification":
            return LogisticRegression(C=1.0 / (2.0 * self.params.alpha), l1_ratio=0.0, max_iter=1000)
        return Ridge(alpha=self.params.alpha, random_state=self.params.seed)


class ElasticNetForecaster(_ScaledForecaster):
    """Elastic net on standardised features (elastic-net logistic regression, saga, for classification)."""

    family: ClassVar[str] = "elastic_net"
    params_class: ClassVar[type[_Params]] = ElasticNetParams
    params: ElasticNetParams

    def _estimator(self, n_rows: int) -> Any:
        from sklearn.linear_model import ElasticNet, LogisticRegression

        p = self.params
        if self.task == "classification":
            return LogisticRegression(
                C=1.0 / (p.alpha * n_rows), l1_ratio=p.l1_ratio, solver="saga", max_iter=p.max_iter, tol=p.tol,
                random_state=p.seed,
            )
        # precompute: coordinate descent on the Gram matrix, far faster when rows >> features.
        return ElasticNet(
            alpha=p.alpha, l1_ratio=p.l1_ratio, max_iter=p.max_iter, tol=p.tol, precompute=True, random_state=p.seed
        )


class MLPForecaster(_ScaledForecaster):
    """A small scikit-learn MLP on standardised features. No built-in importance: ``feature_importance``
    returns an empty series (name ``"none"``); use permutation importance."""

    family: ClassVar[str] = "mlp"
    params_class: ClassVar[type[_Params]] = MLPParams
    params: MLPParams

    def _estimator(self, n_rows: int) -> Any:
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        p = self.params
        settings: dict[str, Any] = dict(
            hidden_layer_sizes=p.hidden_layer_sizes, alpha=p.alpha, learning_rate_init=p.learning_rate_init,
            batch_size=min(p.batch_size, n_rows), max_iter=p.max_iter, early_stopping=p.early_stopping,
            validation_fraction=p.validation_fraction, n_iter_no_change=p.n_iter_no_change, random_state=p.seed,
        )
        return MLPClassifier(**settings) if self.task == "classification" else MLPRegressor(**settings)

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # Hitting max_iter is the budget working as configured, not an error; n_iter_ records it.
            warnings.simplefilter("ignore", ConvergenceWarning)
            super()._fit_matrix(x, y)
        network = self._pipeline().named_steps["model"]
        if network.n_iter_ >= self.params.max_iter:
            log.info("mlp: stopped at max_iter=%d epochs before early stopping triggered", self.params.max_iter)

    def _importance_values(self) -> tuple[np.ndarray | None, str]:
        return None, "none"


TABULAR_CLASSES: dict[str, type[TabularForecaster]] = {
    cls.family: cls
    for cls in (
        LightGBMForecaster, XGBoostForecaster, RandomForestForecaster, ExtraTreesForecaster,
        RidgeForecaster, ElasticNetForecaster, MLPForecaster,
    )
}

