"""The scikit-learn tabular families: random forest, extra trees, ridge, elastic net and MLP, each behind a
median imputer fitted on the fit rows (the linear models and the MLP also standardise)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from alphaforge.models.params import ElasticNetParams, ForestParams, MLPParams, RidgeParams, _Params
from alphaforge.models.tabular_base import TabularForecaster, _blas_threads

# The public classes say they live in alphaforge.models.tabular, their public path: wrappers that save a base
# model (normalise, uncertainty) record its class by module and name, so a file saved after the split names
# the same path as one saved before it, and loads with either version of the code.
PUBLIC_MODULE = "alphaforge.models.tabular"

log = logging.getLogger("alphaforge.models.tabular")  # the logger name from before the split


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

    __module__ = PUBLIC_MODULE

    family: ClassVar[str] = "random_forest"

    def _forest_classes(self) -> tuple[type, type]:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        return RandomForestRegressor, RandomForestClassifier


class ExtraTreesForecaster(_ForestForecaster):
    """Extremely randomised trees (random split thresholds) on median-imputed features."""

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE

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
