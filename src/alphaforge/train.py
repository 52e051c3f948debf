"""Walk-forward training: one model per fold, out-of-fold predictions, a final model.

Each fold's model sees only rows before its test window (less the purge and embargo
gap, see :mod:`alphaforge.splits`), so every out-of-fold prediction is one a trader
could have made at the time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alphaforge.features import feature_columns
from alphaforge.splits import Fold, WalkForward

log = logging.getLogger(__name__)

TARGET = "forward_return"
OOF_COLUMNS = (
    "timestamp", "symbol", "fold", "prediction", "forward_return", "forward_return_1", "log_return_1", "log_return_20",
)


class LightGBMForecaster:
    """A LightGBM regressor on the feature columns; scikit-learn style (``fit`` returns self)."""

    def __init__(self, **params: object) -> None:
        self.params = params

    def fit(self, features: pd.DataFrame, target: pd.Series) -> LightGBMForecaster:
        import lightgbm as lgb

        self.feature_names_ = list(features.columns)
        self.model_ = lgb.LGBMRegressor(
            **{k: v for k, v in self.params.items() if k not in {"seed", "num_threads"}},
            random_state=self.params.get("seed"),
            n_jobs=self.params.get("num_threads"),
            verbose=-1,
        )
        self.model_.fit(features, target)
        return self

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.model_.predict(features[self.feature_names_])

    def feature_importance(self) -> pd.Series:
        """Total gain per feature, largest first."""
        gains = self.model_.booster_.feature_importance(importance_type="gain")
        return pd.Series(gains, index=self.feature_names_, name="gain").sort_values(ascending=False)

    def save(self, path: str | Path) -> None:
        self.model_.booster_.save_model(str(path))


@dataclass
class FoldReport:
    """What a fold's training produced, for the progress line and the metrics file."""

    fold: int
    train_start: str
    train_end: str
    test_start: str
    test_end: str
    n_train: int
    n_test: int
    seconds: float
    ic: float


@dataclass
class WalkForwardResult:
    """Out-of-fold predictions, per-fold reports, fold models and the final model."""

    oof: pd.DataFrame
    folds: list[FoldReport]
    models: list[LightGBMForecaster]
    importance: pd.DataFrame
    final_model: LightGBMForecaster | None = None
    feature_names: list[str] = field(default_factory=list)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def walk_forward_train(
    dataset: pd.DataFrame,
    splitter: WalkForward,
    model_params: dict[str, object],
    *,
    fit_final_model: bool = True,
) -> WalkForwardResult:
    """Train one model per fold on ``dataset`` (features + labels) and predict its test window.

    Rows whose target is not yet known (the last ``horizon`` bars) are not trained on.
    """
    names = feature_columns(dataset)
    if not names:
        raise ValueError("the dataset has no feature columns; check the features stage output")
    folds: list[Fold] = splitter.split(dataset["timestamp"])
    target = dataset[TARGET].to_numpy()
    reports, models, pieces, importances = [], [], [], []
    for fold in folds:
        started = time.perf_counter()
        train_rows = fold.train_rows[np.isfinite(target[fold.train_rows])]
        model = LightGBMForecaster(**model_params).fit(dataset.iloc[train_rows][names], dataset[TARGET].iloc[train_rows])
        test = dataset.iloc[fold.test_rows]
        prediction = model.predict(test[names])
        piece = test[[c for c in OOF_COLUMNS if c in test.columns and c not in {"fold", "prediction"}]].copy()
        piece.insert(2, "fold", fold.number)
        piece.insert(3, "prediction", prediction)
        pieces.append(piece)
        models.append(model)
        importances.append(model.feature_importance().rename(f"fold_{fold.number}"))
        report = FoldReport(
            fold=fold.number,
            train_start=str(fold.train_start),
            train_end=str(fold.train_end),
            test_start=str(fold.test_start),
            test_end=str(fold.test_end),
            n_train=int(len(train_rows)),
            n_test=int(len(fold.test_rows)),
            seconds=round(time.perf_counter() - started, 3),
            ic=_pearson(prediction, test[TARGET].to_numpy()),
        )
        reports.append(report)
        log.info(
            "fold %d/%d  train %s..%s (%d rows)  test %s..%s (%d rows)  IC %.4f  %.1fs",
            fold.number + 1, len(folds), fold.train_start.date(), fold.train_end.date(), report.n_train,
            fold.test_start.date(), fold.test_end.date(), report.n_test, report.ic, report.seconds,
        )
    oof = pd.concat(pieces, ignore_index=True)
    final_model = None
    if fit_final_model:
        labelled = np.isfinite(target)
        final_model = LightGBMForecaster(**model_params).fit(dataset.loc[labelled, names], dataset.loc[labelled, TARGET])
        log.info("final model fitted on %d rows up to %s", int(labelled.sum()), dataset.loc[labelled, "timestamp"].max())
    importance = pd.concat(importances, axis=1)
    importance["mean_gain"] = importance.mean(axis=1)
    importance = importance.sort_values("mean_gain", ascending=False)
    return WalkForwardResult(
        oof=oof, folds=reports, models=models, importance=importance, final_model=final_model, feature_names=names
    )


def plot_feature_importance(importance: pd.DataFrame, path: str | Path, top: int = 25) -> None:
    """A horizontal bar chart of the mean gain across folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = importance["mean_gain"].head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(shown))))
    ax.barh(shown.index, shown.to_numpy(), color="#3b75af")
    ax.set_xlabel("mean gain across walk-forward folds")
    ax.set_title("LightGBM feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
