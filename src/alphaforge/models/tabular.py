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

Layout: :mod:`alphaforge.models.tabular_base` (frame checks, the base class), :mod:`alphaforge.models.boosted`
(LightGBM, XGBoost), :mod:`alphaforge.models.sklearn_models` (forests, ridge, elastic net, MLP); this module
re-exports them all and maps each family name to its class.
"""

from alphaforge.models.boosted import (
    RANKING_OBJECTIVES,
    LightGBMForecaster,
    XGBoostForecaster,
    ranking_relevance,
    resolve_xgboost_device,
)
from alphaforge.models.params import (  # noqa: F401  (_Params: still importable from here)
    ElasticNetParams,
    ForestParams,
    LightGBMParams,
    MLPParams,
    RidgeParams,
    XGBoostParams,
    _Params,
)
from alphaforge.models.sklearn_models import (  # noqa: F401  (the private ones: still importable from here)
    ElasticNetForecaster,
    ExtraTreesForecaster,
    MLPForecaster,
    RandomForestForecaster,
    RidgeForecaster,
    _ForestForecaster,
    _imputer,
    _ScaledForecaster,
)
from alphaforge.models.tabular_base import (  # noqa: F401  (the private ones: still importable from here)
    CONFIG_FILE,
    FORMAT_VERSION,
    TASKS,
    TabularForecaster,
    _blas_threads,
    feature_matrix,
    row_mask,
    target_values,
)

TABULAR_CLASSES: dict[str, type[TabularForecaster]] = {
    cls.family: cls
    for cls in (
        LightGBMForecaster, XGBoostForecaster, RandomForestForecaster, ExtraTreesForecaster,
        RidgeForecaster, ElasticNetForecaster, MLPForecaster,
    )
}

__all__ = [
    "CONFIG_FILE", "FORMAT_VERSION", "RANKING_OBJECTIVES", "TABULAR_CLASSES", "TASKS",
    "ElasticNetForecaster", "ElasticNetParams", "ExtraTreesForecaster", "ForestParams", "LightGBMForecaster",
    "LightGBMParams", "MLPForecaster", "MLPParams", "RandomForestForecaster", "RidgeForecaster", "RidgeParams",
    "TabularForecaster", "XGBoostForecaster", "XGBoostParams", "feature_matrix", "ranking_relevance",
    "resolve_xgboost_device", "row_mask", "target_values",
]
