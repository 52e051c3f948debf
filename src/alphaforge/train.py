"""Walk-forward training: one model per fold, out-of-fold predictions, a final model.

Each fold's model sees only rows before its test window (less the purge and embargo
gap, see :mod:`alphaforge.splits`), so every out-of-fold prediction is one a trader
could have made at the time. Any family of :mod:`alphaforge.models` goes through the
same loop; sequence models look back into earlier rows of the same symbol, which is
why the whole frame is passed with masks rather than sliced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.features import LabelNormalise, feature_columns, normalised_label
from alphaforge.models.base import Forecaster, Task
from alphaforge.models.importance import rank_ic
from alphaforge.splits import Fold, WalkForward

log = logging.getLogger(__name__)

TARGETS: dict[str, Task] = {
    "forward_return": "regression",
    "forward_direction": "classification",
    "forward_volatility": "regression",
}
OOF_KEEP = ("timestamp", "symbol", "forward_return", "forward_direction", "forward_volatility",
            "forward_return_1", "log_return_1", "log_return_20", "volatility_20")


def task_of(target: str) -> Task:
    """Regression or classification, from the label column the model predicts."""
    if target not in TARGETS:
        raise ValueError(f"labels.target {target!r} is not one of {', '.join(TARGETS)}")
    return TARGETS[target]


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
    rank_ic: float
    coverage: float | None = None


@dataclass
class WalkForwardResult:
    """Out-of-fold predictions, per-fold reports, fold models and the final model."""

    oof: pd.DataFrame
    folds: list[FoldReport]
    models: list[Forecaster]
    feature_names: list[str]
    final_model: Forecaster | None = None
    importance: pd.DataFrame = field(default_factory=pd.DataFrame)

    def metrics(self) -> dict[str, object]:
        """The JSON summary: per-fold reports and their means."""
        from alphaforge.schema import finite_or_none

        ics = [f.rank_ic for f in self.folds if f.rank_ic is not None and np.isfinite(f.rank_ic)]
        coverages = [f.coverage for f in self.folds if f.coverage is not None]
        # a fold whose model predicts one constant (no split was possible) has no rank IC: null, not NaN
        folds = [{**asdict(f), "rank_ic": finite_or_none(f.rank_ic)} for f in self.folds]
        return {
            "n_folds": len(self.folds),
            "mean_fold_rank_ic": float(np.mean(ics)) if ics else None,
            "interval_coverage": float(np.mean(coverages)) if coverages else None,
            "oof_rows": int(len(self.oof)),
            "seconds": round(sum(f.seconds for f in self.folds), 3),
            "folds": folds,
        }


def _predict_with_interval(model: Forecaster, frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """Point forecast, and an interval when the family offers one (conformal, quantile or MC dropout)."""
    if hasattr(model, "predict_interval"):
        table = model.predict_interval(frame, predict_mask=mask)
        return pd.DataFrame({"prediction": table["prediction"].to_numpy(),
                             "lower": table["lower"].to_numpy(), "upper": table["upper"].to_numpy()})
    if hasattr(model, "predict_with_uncertainty"):
        table = model.predict_with_uncertainty(frame, predict_mask=mask)
        return pd.DataFrame({"prediction": table["mean"].to_numpy(),
                             "lower": table["lower"].to_numpy(), "upper": table["upper"].to_numpy()})
    return pd.DataFrame({"prediction": model.predict(frame, predict_mask=mask)})


def coverage_of(target: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float | None:
    """Fraction of realised targets inside their interval (None without finite pairs)."""
    ok = np.isfinite(target) & np.isfinite(lower) & np.isfinite(upper)
    if not ok.any():
        return None
    return float(np.mean((target[ok] >= lower[ok]) & (target[ok] <= upper[ok])))


def walk_forward_train(
    dataset: pd.DataFrame,
    splitter: WalkForward,
    make_model: Callable[[], Forecaster],
    *,
    target: str = "forward_return",
    fit_final_model: bool = True,
    on_fold: Callable[[FoldReport], None] | None = None,
    importance: Callable[[Forecaster, pd.DataFrame, np.ndarray], pd.Series] | None = None,
    label: str = "",
    label_normalise: LabelNormalise = "none",
) -> WalkForwardResult:
    """Train one model per fold on ``dataset`` (features + labels, sorted by symbol then time).

    Rows whose target is not yet known (the last ``horizon`` bars) are not trained on.
    ``on_fold`` sees each fold's report as it completes (the tuner prunes there);
    ``importance`` scores a fold model on its test rows (permutation importance).
    ``label_normalise`` (``labels.normalise``) transforms the label the models fit among the symbols of each
    timestamp (:func:`alphaforge.features.normalised_label`); the fold metrics and the OOF frame keep the raw label.
    """
    names = feature_columns(dataset)
    if not names:
        raise ValueError("the dataset has no feature columns; check the features stage output")
    if target not in dataset.columns:
        raise ValueError(f"the dataset has no label column {target!r}; rerun the features stage")
    folds: list[Fold] = splitter.split(dataset["timestamp"])
    if label_normalise != "none" and task_of(target) != "regression":
        raise ValueError(f"labels.normalise {label_normalise!r} transforms a regression target, not {target!r}")
    y = normalised_label(dataset[target], dataset["timestamp"], label_normalise)
    known = np.isfinite(y.to_numpy(dtype=float))
    timestamps = dataset["timestamp"].to_numpy()
    reports, models, pieces, importances = [], [], [], []
    for fold in folds:
        started = time.perf_counter()
        fit_mask = np.zeros(len(dataset), dtype=bool)
        fit_mask[fold.train_rows] = True
        fit_mask &= known
        test_mask = np.zeros(len(dataset), dtype=bool)
        test_mask[fold.test_rows] = True
        model = make_model().fit(dataset, y, fit_mask=fit_mask)
        predicted = _predict_with_interval(model, dataset, test_mask)
        piece = dataset.loc[test_mask, [c for c in OOF_KEEP if c in dataset.columns]].reset_index(drop=True)
        piece.insert(2, "fold", fold.number)
        for column in predicted.columns:
            piece[column] = predicted[column].to_numpy()
        pieces.append(piece)
        models.append(model)
        if importance is not None:
            importances.append(importance(model, dataset, test_mask).rename(f"fold_{fold.number}"))
        realised = piece[target].to_numpy(dtype=float)
        report = FoldReport(
            fold=fold.number,
            train_start=str(fold.train_start),
            train_end=str(fold.train_end),
            test_start=str(fold.test_start),
            test_end=str(fold.test_end),
            n_train=int(fit_mask.sum()),
            n_test=int(test_mask.sum()),
            seconds=round(time.perf_counter() - started, 3),
            rank_ic=rank_ic(piece["prediction"].to_numpy(), realised, piece["timestamp"].to_numpy()),
            coverage=coverage_of(realised, piece["lower"].to_numpy(), piece["upper"].to_numpy())
            if "lower" in piece else None,
        )
        reports.append(report)
        log.info(
            "%sfold %d/%d  train %s..%s (%d rows)  test %s..%s (%d rows)  rank IC %.4f%s  %.1fs",
            f"{label}: " if label else "", fold.number + 1, len(folds), fold.train_start.date(),
            fold.train_end.date(), report.n_train, fold.test_start.date(), fold.test_end.date(), report.n_test,
            report.rank_ic, f"  coverage {report.coverage:.3f}" if report.coverage is not None else "", report.seconds,
        )
        if on_fold is not None:
            on_fold(report)
    oof = pd.concat(pieces, ignore_index=True)
    final_model = None
    if fit_final_model:
        final_model = make_model().fit(dataset, y, fit_mask=known)
        log.info("%sfinal model fitted on %d rows up to %s", f"{label}: " if label else "", int(known.sum()),
                 pd.Timestamp(timestamps[known].max()))
    table = pd.DataFrame()
    if importances:
        table = pd.concat(importances, axis=1)
        table["mean"] = table.mean(axis=1)
        table = table.sort_values("mean", ascending=False)
    return WalkForwardResult(
        oof=oof, folds=reports, models=models, feature_names=names, final_model=final_model, importance=table
    )


def plot_importance_bars(importance: pd.Series, path: str | Path, title: str, top: int = 25) -> None:
    """A horizontal bar chart of an importance series (largest at the top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = importance.sort_values(ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(shown))))
    ax.barh(shown.index, shown.to_numpy(), color="#3b75af")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_factory(
    family: str, *, task: Task, hyperparameters: dict[str, object], uncertainty_method: str = "none",
    alpha: float = 0.1, calibration_fraction: float = 0.2, purge: int = 0, feature_processing: str = "none",
) -> Callable[[], Forecaster]:
    """A function making a fresh forecaster of ``family``, wrapped for intervals where asked.

    Tabular regression gets split-conformal intervals (``conformal``) or quantile LightGBM
    (``quantile``, LightGBM only); sequence families carry Monte Carlo dropout themselves.
    ``purge`` bars separate the conformal model's rows from its calibration slice (the label horizon).
    ``feature_processing`` (``features.processing``): a fitted kind (``robust_zscore``) puts the model behind
    :class:`alphaforge.models.normalise.RobustZScoreForecaster`, fitted on each fold's training rows.
    """
    from alphaforge.models.normalise import with_fitted_processing
    from alphaforge.models.registry import SEQUENCE_FAMILIES, make_forecaster

    def base() -> Forecaster:
        return with_fitted_processing(make_forecaster(family, task=task, params=hyperparameters), feature_processing)

    def make() -> Forecaster:
        if family in SEQUENCE_FAMILIES or task != "regression" or uncertainty_method == "none":
            return base()
        from alphaforge.models import uncertainty

        if uncertainty_method == "quantile" and family == "lightgbm":
            return with_fitted_processing(uncertainty.QuantileLightGBM(task=task, alpha=alpha, **hyperparameters),
                                          feature_processing)
        return uncertainty.ConformalRegressor(
            base(), calibration_fraction=calibration_fraction, alpha=alpha, gap=purge,
        )

    return make


def permutation_scorer(repeats: int, target: str) -> Any:
    """Permutation importance of a fold model on its test slice (None when turned off)."""
    if repeats <= 0:
        return None
    from alphaforge.models.importance import permutation_importance

    def score(model: Any, frame: pd.DataFrame, mask: Any) -> pd.Series:
        from alphaforge.models.importance import rank_ic

        baseline = rank_ic(model.predict(frame, predict_mask=mask), frame[target].to_numpy(dtype=float)[mask],
                           frame["timestamp"].to_numpy()[mask])
        if not np.isfinite(baseline):  # e.g. a model that could not split its (short, early) training window
            log.warning("train: permutation importance skipped on a fold: the fold model's rank IC on its test rows "
                        "is undefined (constant predictions or too few rows), so there is nothing to compare with")
            return pd.Series(dtype=float)
        table = permutation_importance(model, frame, frame[target], predict_mask=mask, n_repeats=repeats)
        return table.set_index("feature")["importance_mean"]

    return score


def mean_gain(models: list[Any]) -> pd.Series:
    """Mean of the fold models' own importance (gain, impurity or |coef|); empty when the family has none."""
    series = [m.feature_importance() for m in models if hasattr(m, "feature_importance")]
    series = [s for s in series if s is not None and len(s)]
    if not series:
        return pd.Series(dtype=float)
    return pd.concat(series, axis=1).mean(axis=1).sort_values(ascending=False).rename("gain")


def plot_attention(model: Any, dataset: pd.DataFrame, path: Path) -> None:
    """Attention of the final Transformer on the last bar of each symbol, per layer and head."""
    from alphaforge.models.sequence import plot_attention as plot

    last = dataset.groupby("symbol", sort=False).tail(1).index
    mask = dataset.index.isin(last)
    plot(model.attention_weights(dataset, predict_mask=mask), path)
