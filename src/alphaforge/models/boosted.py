"""Gradient-boosted tree families: LightGBM (regression, classification, quantile, ranking objectives) and
XGBoost (``tree_method="hist"``, GPU training when one is visible)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from alphaforge.models.base import Task
from alphaforge.models.params import LightGBMParams, XGBoostParams, _Params
from alphaforge.models.tabular_base import TabularForecaster

# The public classes say they live in alphaforge.models.tabular, their public path: wrappers that save a base
# model (normalise, uncertainty) record its class by module and name, so a file saved after the split names
# the same path as one saved before it, and loads with either version of the code.
PUBLIC_MODULE = "alphaforge.models.tabular"

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

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE

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
