"""Ensembles of the trained model families: stacking, weighted voting and an online Hedge.

Three ways to combine the families the train stage produced, all fitted on *out-of-fold*
predictions only (``data/predictions/oof.parquet``: each row predicted by the fold model that
never saw it):

* **Stacking** (:class:`StackingEnsemble`): a meta-learner maps the base predictions to the
  target. The default is a non-negative ridge (``nnls_ridge``): ``y ~ b + sum_i w_i p_i`` with
  ``w_i >= 0`` and an L2 penalty, solved exactly with ``scipy.optimize.nnls`` on the augmented
  system ``[Xc; sqrt(alpha) D] w = [yc; 0]`` (``Xc``, ``yc`` centred, so the intercept is
  free; ``D`` the diagonal of the columns' norms, so the penalty is that of a ridge on
  standardised predictions and ``ridge_alpha`` does not depend on the scale of any family's
  forecasts). Non-negativity keeps the stack a blend of forecasters rather than a long/short bet
  on their differences, which overfits on noisy financial targets; the penalty steadies the
  weights of families whose forecasts are nearly collinear.
  A small LightGBM (``lightgbm``) can replace it where the families' relative skill depends on
  the level of their forecasts.
* **Weighted voting** (:class:`VotingEnsemble`): a weighted average with weights from each
  family's out-of-fold rank IC (its positive part, normalised; equal weights when no family has
  a positive rank IC). Nothing is fitted beyond one number per family, so it cannot overfit the
  combination.
* **Hedge** (:class:`HedgeEnsemble`): exponential weights for serving, updated whenever realised
  outcomes arrive, persisted to JSON so a restart continues where it stopped, and reporting its
  regret against the best single family in hindsight.

Why only out-of-fold predictions: a base model's predictions on its own training rows are
better than it will ever be again, so a meta-learner fitted on them learns to trust the most
overfitted family. :func:`check_out_of_fold` refuses any prediction whose timestamp falls inside
the training span of the fold model that made it (or within the purge gap after it), and any
row without a fold id (an in-sample prediction). The stack's own quality is then measured with a
further walk-forward over the OOF timestamps (:func:`walk_forward_meta_evaluation`): the
meta-learner of each meta-fold sees only earlier OOF rows, ``purge`` bars away.

:class:`PanelEnsemble` is the deployable whole: the base models' final fits, a fitted combiner
and the feature specification, predicting from a panel frame of features. ``alphaforge.pyfunc``
wraps it as one MLflow model. This module does not import MLflow.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.io import write_json_atomic
from alphaforge.models.importance import rank_ic
from alphaforge.schema import DataError
from alphaforge.splits import WalkForward, WalkForwardParams

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------------------------ the OOF check


@dataclass(frozen=True)
class FoldSpan:
    """Where one fold model of one family trained and where it was tested (inclusive timestamps)."""

    fold: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def fold_spans_from_metrics(train_metrics: Mapping[str, Any]) -> dict[str, dict[int, FoldSpan]]:
    """Per family, per fold id, the spans the train stage recorded in ``reports/train_metrics.json``."""
    families = train_metrics.get("families")
    if not isinstance(families, Mapping) or not families:
        raise DataError("train metrics: no 'families' mapping; rerun the train stage (reports/train_metrics.json)")
    spans: dict[str, dict[int, FoldSpan]] = {}
    for family, report in families.items():
        folds = report.get("folds") if isinstance(report, Mapping) else None
        if not folds:
            raise DataError(f"train metrics: family {family!r} has no 'folds' list with the fold spans")
        spans[family] = {}
        for entry in folds:
            try:
                span = FoldSpan(
                    fold=int(entry["fold"]),
                    train_start=_utc(entry["train_start"]), train_end=_utc(entry["train_end"]),
                    test_start=_utc(entry["test_start"]), test_end=_utc(entry["test_end"]),
                )
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"train metrics: family {family!r} fold entry {entry!r} is unreadable: {err}") from err
            spans[family][span.fold] = span
    return spans


def check_out_of_fold(
    oof: pd.DataFrame,
    fold_spans: Mapping[str, Mapping[int, FoldSpan]],
    *,
    calendar: Sequence[Any] | pd.DatetimeIndex | pd.Series,
    purge: int,
    families: Sequence[str] | None = None,
) -> dict[str, int]:
    """Refuse any base prediction a meta-learner must not see; return the rows checked per family.

    For every row with a finite ``prediction_<family>``:

    * it must carry a fold id (a row without one is an in-sample prediction);
    * that fold must be one the train stage recorded for the family;
    * its timestamp must lie more than ``purge`` bars after the end of that fold's training span
      (on or before it, the base model trained on this very row; within ``purge`` bars, on rows
      whose labels overlap this row's label window);
    * and inside the fold's recorded test window.

    Bars are counted on ``calendar``, the sorted unique timestamps of the whole dataset (the OOF
    frame alone lacks the bars of the gap before the first test window). The first offence found
    raises :class:`DataError` naming the family, the fold, the row (index label, timestamp, symbol)
    and the rule.
    """
    caller = "stack: out-of-fold check"
    families = list(families) if families is not None else families_in(oof)
    if not families:
        raise DataError(f"{caller}: no prediction_<family> columns in the OOF frame")
    _require_columns(oof, ["timestamp", "symbol", "fold", *[prediction_column(f) for f in families]], caller)
    if purge < 0:
        raise ValueError(f"{caller}: purge must be >= 0 bars, got {purge}")
    stamps = _utc_index(oof["timestamp"])
    grid = _utc_index(pd.Index(calendar)).union(stamps).unique().sort_values()
    position = grid.get_indexer(stamps)
    folds_numeric = pd.to_numeric(oof["fold"], errors="coerce").astype("Float64")  # Int64 with <NA> too
    fold_values = folds_numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    checked: dict[str, int] = {}

    def describe(i: int) -> str:
        return f"row {oof.index[i]!r} (timestamp {stamps[i]}, symbol {oof['symbol'].iloc[i]!r})"

    for family in families:
        if family not in fold_spans:
            raise DataError(f"{caller}: family {family!r} has no fold spans in the train metrics; "
                            f"known: {sorted(fold_spans)}")
        predicted = np.isfinite(oof[prediction_column(family)].to_numpy(dtype=np.float64, na_value=np.nan))
        no_fold = predicted & ~np.isfinite(fold_values)
        if no_fold.any():
            i = int(np.flatnonzero(no_fold)[0])
            raise DataError(
                f"{caller}: family {family!r}, {describe(i)} has a prediction but no fold id: an in-sample "
                "prediction; rule: the meta-learner sees only out-of-fold predictions"
            )
        spans = fold_spans[family]
        for fold in np.unique(fold_values[predicted]).astype(int):
            rows = predicted & (fold_values == fold)
            if fold not in spans:
                i = int(np.flatnonzero(rows)[0])
                raise DataError(f"{caller}: family {family!r}, {describe(i)} names fold {fold}, which the train "
                                f"stage did not record (folds {sorted(spans)})")
            span = spans[fold]
            train_end_position = int(grid.searchsorted(span.train_end, side="right")) - 1
            bars_after = position[rows] - train_end_position
            indices = np.flatnonzero(rows)
            inside = stamps[indices] <= span.train_end
            if inside.any():
                i = int(indices[np.flatnonzero(inside)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} lies inside that fold model's training "
                    f"span {span.train_start} .. {span.train_end}: the base model predicted a row it trained on; "
                    "rule: the meta-learner sees only out-of-fold predictions"
                )
            purged = bars_after <= purge
            if purged.any():
                i = int(indices[np.flatnonzero(purged)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} is {int(bars_after[purged][0])} bar(s) "
                    f"after the training span's end {span.train_end}, within the purge of {purge} bars (its label "
                    "overlaps labels the model trained on); rule: out-of-fold rows start after train end + purge"
                )
            outside = (stamps[indices] < span.test_start) | (stamps[indices] > span.test_end)
            if outside.any():
                i = int(indices[np.flatnonzero(outside)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} lies outside that fold's test window "
                    f"{span.test_start} .. {span.test_end}; rule: a fold's predictions are its test window's"
                )
        checked[family] = int(predicted.sum())
    return checked


# ------------------------------------------------------------------------------------------------ combiners


def _complete_rows(matrix: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    rows = np.isfinite(matrix).all(axis=1)
    if target is not None:
        rows &= np.isfinite(target)
    return rows


def nonnegative_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """``(w, b)`` minimising ``|y - b - x w|^2 + alpha * sum_j |xc_j|^2 w_j^2`` subject to ``w >= 0``.

    ``xc`` is the centred ``x``: the penalty on each weight is scaled by its column's sum of
    squares, i.e. a ridge with penalty ``alpha`` on standardised columns, expressed in the units
    of ``x``. The intercept is not penalised (centring removes it, ``b = mean(y) - mean(x) w``).
    Exact, via ``scipy.optimize.nnls`` on the augmented system.
    """
    from scipy.optimize import nnls

    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    xc, yc = x - x_mean, y - y_mean
    n_features = x.shape[1]
    column_norms = np.sqrt(np.sum(xc * xc, axis=0))
    augmented_x = np.vstack([xc, math.sqrt(alpha) * np.diag(column_norms)])
    augmented_y = np.concatenate([yc, np.zeros(n_features)])
    weights, _ = nnls(augmented_x, augmented_y, maxiter=50 * n_features + 100)
    return weights, y_mean - float(x_mean @ weights)


class StackingEnsemble:
    """A meta-learner over the families' predictions (columns ``prediction_<family>``).

    ``meta_learner``: ``nnls_ridge`` (non-negative ridge, see the module docstring) or
    ``lightgbm`` (a small LightGBM regressor; ``lightgbm_params`` override its defaults).
    Learned: ``weights_`` (family -> weight: the ridge coefficients, or LightGBM's normalised
    gain importance), ``intercept_`` (ridge), ``n_rows_`` (rows fitted on). Rows where any base
    prediction or the target is missing are not fitted on; they predict NaN.
    """

    kind: ClassVar[str] = "stacking"

    def __init__(
        self,
        families: Sequence[str],
        *,
        meta_learner: Literal["nnls_ridge", "lightgbm"] = "nnls_ridge",
        ridge_alpha: float = 0.1,
        lightgbm_params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if not families:
            raise ValueError("StackingEnsemble: name at least one family")
        if meta_learner not in ("nnls_ridge", "lightgbm"):
            raise ValueError(f"StackingEnsemble: meta_learner must be nnls_ridge or lightgbm, got {meta_learner!r}")
        if ridge_alpha < 0:
            raise ValueError(f"StackingEnsemble: ridge_alpha must be >= 0, got {ridge_alpha}")
        self.families = list(families)
        self.meta_learner = meta_learner
        self.ridge_alpha = float(ridge_alpha)
        self.lightgbm_params = {**DEFAULT_META_LIGHTGBM, **dict(lightgbm_params or {})}
        self.seed = seed

    def fit(self, oof_predictions: pd.DataFrame, target: pd.Series | np.ndarray) -> StackingEnsemble:
        """Fit the meta-learner on out-of-fold base predictions (check them first with :func:`check_out_of_fold`)."""
        x = _base_matrix(oof_predictions, self.families, "StackingEnsemble.fit")
        y = np.asarray(target, dtype=np.float64).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"StackingEnsemble.fit: {len(x)} prediction rows but {len(y)} target values")
        rows = _complete_rows(x, y)
        if rows.sum() < len(self.families) + 2:
            raise DataError(f"StackingEnsemble.fit: only {int(rows.sum())} rows have every base prediction and the "
                            f"target; need at least {len(self.families) + 2}")
        self.n_rows_ = int(rows.sum())
        if self.meta_learner == "nnls_ridge":
            weights, intercept = nonnegative_ridge(x[rows], y[rows], self.ridge_alpha)
            self.weights_ = {f: float(w) for f, w in zip(self.families, weights, strict=True)}
            self.intercept_ = float(intercept)
            self.booster_ = None
        else:
            import lightgbm

            model = lightgbm.LGBMRegressor(**self.lightgbm_params, random_state=self.seed, n_jobs=1, verbose=-1)
            model.fit(x[rows], y[rows])
            self.booster_ = model.booster_
            self._load_booster_string(self.booster_.model_to_string())
            gain = self.booster_.feature_importance(importance_type="gain")
            total = float(gain.sum())
            self.weights_ = {f: (float(g) / total if total > 0 else 1.0 / len(self.families))
                             for f, g in zip(self.families, gain, strict=True)}
            self.intercept_ = 0.0
        return self

    def _load_booster_string(self, text: str) -> None:
        """Predict through a booster rebuilt from its text, so a saved and reloaded stack predicts identically."""
        import lightgbm

        self.booster_text_ = text
        self.booster_ = lightgbm.Booster(model_str=text)

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("this StackingEnsemble is not fitted yet; call fit first")

    def predict(self, base_predictions: pd.DataFrame) -> np.ndarray:
        """The stacked forecast per row; NaN where any base prediction is missing."""
        self._check_fitted()
        return self.predict_matrix(_base_matrix(base_predictions, self.families, "StackingEnsemble.predict"))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """:meth:`predict` on a rows x families matrix (columns in ``families`` order), as the service calls it."""
        rows = _complete_rows(x)
        out = np.full(len(x), np.nan)
        if not rows.any():
            return out
        if self.meta_learner == "nnls_ridge":
            weights = np.array([self.weights_[f] for f in self.families])
            out[rows] = self.intercept_ + x[rows] @ weights
        else:
            out[rows] = self.booster_.predict(x[rows], num_threads=1)
        return out

    def interval_weights(self) -> dict[str, float]:
        """Weights (summing to 1) for combining the families' interval offsets: ``weights_`` normalised."""
        self._check_fitted()
        return _normalised(self.weights_)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to predict, as JSON-able data (the LightGBM booster as its model text)."""
        self._check_fitted()
        payload: dict[str, Any] = {
            "kind": self.kind, "families": self.families, "meta_learner": self.meta_learner,
            "ridge_alpha": self.ridge_alpha, "lightgbm_params": self.lightgbm_params, "seed": self.seed,
            "weights": self.weights_, "intercept": self.intercept_, "n_rows": self.n_rows_,
        }
        if self.meta_learner == "lightgbm":
            payload["booster"] = self.booster_text_
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> StackingEnsemble:
        """The stack :meth:`to_dict` described."""
        stack = cls(payload["families"], meta_learner=payload["meta_learner"], ridge_alpha=payload["ridge_alpha"],
                    lightgbm_params=payload.get("lightgbm_params"), seed=payload.get("seed", 0))
        stack.weights_ = {f: float(w) for f, w in payload["weights"].items()}
        stack.intercept_ = float(payload["intercept"])
        stack.n_rows_ = int(payload["n_rows"])
        stack.booster_ = None
        if stack.meta_learner == "lightgbm":
            stack._load_booster_string(payload["booster"])
        return stack


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    """Non-negative weights scaled to sum to 1; equal weights when they sum to zero."""
    clipped = {k: max(float(v), 0.0) for k, v in weights.items()}
    total = sum(clipped.values())
    if total <= 0:
        return {k: 1.0 / len(clipped) for k in clipped}
    return {k: v / total for k, v in clipped.items()}


class VotingEnsemble:
    """A weighted average of the families' predictions, weighted by out-of-fold rank IC.

    Each family's weight is the positive part of its rank IC against the target over the fitted
    rows (cross-sectional per timestamp when the frame has a ``timestamp`` column with 3+ symbols
    per timestamp, else pooled; see :func:`alphaforge.models.importance.rank_ic`), normalised to
    sum to 1; all families get equal weight when none has a positive rank IC. Learned:
    ``weights_``, ``rank_ic_``.
    """

    kind: ClassVar[str] = "voting"

    def __init__(self, families: Sequence[str]) -> None:
        if not families:
            raise ValueError("VotingEnsemble: name at least one family")
        self.families = list(families)

    def fit(self, oof_predictions: pd.DataFrame, target: pd.Series | np.ndarray) -> VotingEnsemble:
        """Weights from each family's rank IC on the out-of-fold rows."""
        x = _base_matrix(oof_predictions, self.families, "VotingEnsemble.fit")
        y = np.asarray(target, dtype=np.float64).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"VotingEnsemble.fit: {len(x)} prediction rows but {len(y)} target values")
        stamps = (oof_predictions["timestamp"].to_numpy() if "timestamp" in oof_predictions.columns
                  else np.zeros(len(x)))
        rows = _complete_rows(x, y)
        if rows.sum() < 3:
            raise DataError(f"VotingEnsemble.fit: only {int(rows.sum())} rows have every base prediction and the "
                            "target; need at least 3")
        self.rank_ic_ = {f: rank_ic(x[rows, i], y[rows], stamps[rows]) for i, f in enumerate(self.families)}
        self.weights_ = _normalised({f: (ic if math.isfinite(ic) else 0.0) for f, ic in self.rank_ic_.items()})
        self.n_rows_ = int(rows.sum())
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("this VotingEnsemble is not fitted yet; call fit first")

    def predict(self, base_predictions: pd.DataFrame) -> np.ndarray:
        """The weighted average per row; NaN where any base prediction is missing."""
        self._check_fitted()
        return self.predict_matrix(_base_matrix(base_predictions, self.families, "VotingEnsemble.predict"))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """:meth:`predict` on a rows x families matrix (columns in ``families`` order), as the service calls it."""
        weights = np.array([self.weights_[f] for f in self.families])
        out = np.full(len(x), np.nan)
        rows = _complete_rows(x)
        out[rows] = x[rows] @ weights
        return out

    def interval_weights(self) -> dict[str, float]:
        self._check_fitted()
        return dict(self.weights_)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kind": self.kind, "families": self.families, "weights": self.weights_,
                "rank_ic": {f: (v if math.isfinite(v) else None) for f, v in self.rank_ic_.items()},
                "n_rows": self.n_rows_}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> VotingEnsemble:
        voting = cls(payload["families"])
        voting.weights_ = {f: float(w) for f, w in payload["weights"].items()}
        voting.rank_ic_ = {f: (math.nan if v is None else float(v)) for f, v in payload["rank_ic"].items()}
        voting.n_rows_ = int(payload["n_rows"])
        return voting


Combiner = StackingEnsemble | VotingEnsemble


def make_combiner(params: EnsembleParams, families: Sequence[str]) -> Combiner:
    """An unfitted combiner as ``params`` configure it."""
    if params.method == "voting":
        return VotingEnsemble(families)
    return StackingEnsemble(families, meta_learner=params.meta_learner, ridge_alpha=params.ridge_alpha,
                            lightgbm_params=params.lightgbm)


def combiner_from_dict(payload: Mapping[str, Any]) -> Combiner:
    """A fitted combiner from its :meth:`to_dict` payload (``meta.json`` of the stack stage)."""
    kinds: dict[str, Any] = {StackingEnsemble.kind: StackingEnsemble, VotingEnsemble.kind: VotingEnsemble}
    kind = payload.get("kind")
    if kind not in kinds:
        raise ValueError(f"ensemble meta-learner file: unknown kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_dict(payload)


# ------------------------------------------------------------------------------------------------ meta evaluation


@dataclass
class MetaEvaluation:
    """The stack judged out of sample: its own OOF predictions and per-meta-fold reports."""

    oof: pd.DataFrame
    folds: list[dict[str, Any]]
    families: list[str]
    target: str

    def summary(self) -> dict[str, Any]:
        """Rank IC of the ensemble, each family and their plain average over the same meta-test rows."""
        frame = self.oof
        stamps = frame["timestamp"].to_numpy()
        y = frame[self.target].to_numpy(dtype=np.float64)
        scores = {"ensemble": rank_ic(frame[ENSEMBLE_COLUMN].to_numpy(dtype=np.float64), y, stamps)}
        for family in self.families:
            scores[family] = rank_ic(frame[prediction_column(family)].to_numpy(dtype=np.float64), y, stamps)
        average = frame[[prediction_column(f) for f in self.families]].mean(axis=1, skipna=False)
        scores["equal_weight"] = rank_ic(average.to_numpy(dtype=np.float64), y, stamps)
        finite = {k: v for k, v in scores.items() if math.isfinite(v)}
        return {
            "rows": len(frame),
            "rank_ic": {k: (v if math.isfinite(v) else None) for k, v in scores.items()},
            "best": max(finite, key=finite.__getitem__) if finite else None,
            "folds": self.folds,
        }


def walk_forward_meta_evaluation(
    oof: pd.DataFrame,
    families: Sequence[str],
    target: str,
    *,
    walk_forward: WalkForwardParams,
    purge: int,
    make: Callable[[], Combiner],
) -> MetaEvaluation:
    """The stack's own out-of-fold predictions: a walk-forward over the OOF timestamps.

    Each meta-fold fits a fresh combiner (``make()``) on the OOF rows before its test window,
    ``purge`` (+ ``walk_forward.embargo``) timestamps away (the label horizon: a row's label
    window must not overlap the test rows'), and predicts the test window. Returns the test rows
    with the original OOF columns, ``fold`` replaced by the meta-fold id (the base fold kept as
    ``base_fold``) and ``prediction_ensemble`` added, so the frame can go to
    :func:`alphaforge.evaluate.evaluate_oof` like any OOF frame.
    """
    _require_columns(oof, ["timestamp", "symbol", target, *[prediction_column(f) for f in families]],
                     "walk_forward_meta_evaluation")
    frame = oof.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    splitter = WalkForward(walk_forward, purge=purge)
    try:
        folds = splitter.split(frame["timestamp"])
    except ValueError as err:
        raise ValueError(f"stack: the meta walk-forward over {frame['timestamp'].nunique()} OOF timestamps does not "
                         f"fit; adjust ensemble.meta_walk_forward ({err})") from err
    pieces, reports = [], []
    y = frame[target].to_numpy(dtype=np.float64)
    for fold in folds:
        train = frame.iloc[fold.train_rows]
        combiner = make().fit(train, y[fold.train_rows])
        test = frame.iloc[fold.test_rows].copy()
        test[ENSEMBLE_COLUMN] = combiner.predict(test)
        if "fold" in test.columns:
            test = test.rename(columns={"fold": "base_fold"})
        test.insert(2, "fold", fold.number)
        pieces.append(test)
        score = rank_ic(test[ENSEMBLE_COLUMN].to_numpy(dtype=np.float64), test[target].to_numpy(dtype=np.float64),
                        test["timestamp"].to_numpy())
        reports.append({
            "fold": fold.number, "train_start": str(fold.train_start), "train_end": str(fold.train_end),
            "test_start": str(fold.test_start), "test_end": str(fold.test_end),
            "n_train": len(train), "n_test": len(test),
            "rank_ic": score if math.isfinite(score) else None,
            "weights": dict(combiner.weights_),
        })
        log.info("stack: meta-fold %d  train ..%s  test %s..%s  rank IC %.4f  weights %s", fold.number,
                 fold.train_end.date(), fold.test_start.date(), fold.test_end.date(), score,
                 {k: round(v, 4) for k, v in combiner.weights_.items()})
    result = pd.concat(pieces, ignore_index=True)
    return MetaEvaluation(oof=result, folds=reports, families=list(families), target=target)


# ------------------------------------------------------------------------------------------------ Hedge


def bounded_loss(
    prediction: np.ndarray, realised: np.ndarray, *, loss: Literal["sign", "squared"], scale: float, centre: float,
) -> np.ndarray:
    """Per-row loss in [0, 1]: ``sign``: (1 - sign(p - c) * sign(y - c)) / 2; ``squared``: min(((p - y) / scale)^2, 1).

    ``centre`` is 0 for returns and 0.5 for probabilities of an up move (realised 0/1).
    """
    if loss == "sign":
        return (1.0 - np.sign(prediction - centre) * np.sign(realised - centre)) / 2.0
    return np.minimum(((prediction - realised) / scale) ** 2, 1.0)


class HedgeEnsemble:
    """Exponential weights over the families, for serving (Freund & Schapire 1997, "Hedge").

    ``w_i`` is proportional to ``exp(-eta * L_i)``, ``L_i`` the family's cumulative loss. Each
    :meth:`update` takes the families' predictions for one timestamp and the realised outcomes,
    scores every family with a bounded loss in [0, 1] (the mean over the rows where every family
    and the outcome are known, so no family is rewarded for abstaining), and adds to ``L_i``.
    The ensemble's loss at that step is the mixture's expected loss ``sum_i w_i l_i`` under the
    weights in force before the update; :meth:`regret` is the ensemble's cumulative loss minus
    the best single family's. With a fixed ``eta`` the regret is at most ``ln N / eta + eta T / 8``;
    with ``learning_rate=None`` the anytime rate ``eta_t = sqrt(8 ln N / t)`` gives at most
    ``sqrt(2 T ln N) + sqrt(ln N / 8)`` (Cesa-Bianchi & Lugosi 2006, thm 2.2-2.3): sublinear in T.

    Labels arrive ``horizon`` bars after the prediction, so serving calls :meth:`update` for the
    timestamp whose outcome just became known; ``timestamp`` must increase from call to call,
    which also stops a restarted server from applying the same outcome twice. :meth:`save` and
    :meth:`load` persist the whole state as JSON (atomically), and a loaded ensemble continues
    exactly as the saved one would have.
    """

    def __init__(
        self,
        families: Sequence[str],
        *,
        learning_rate: float | None = None,
        loss: Literal["sign", "squared"] = "sign",
        loss_scale: float = 0.02,
        centre: float = 0.0,
    ) -> None:
        if len(families) < 1 or len(set(families)) != len(families):
            raise ValueError(f"HedgeEnsemble: families must be distinct and at least one, got {list(families)}")
        if learning_rate is not None and learning_rate <= 0:
            raise ValueError(f"HedgeEnsemble: learning_rate must be > 0 or None, got {learning_rate}")
        if loss not in ("sign", "squared"):
            raise ValueError(f"HedgeEnsemble: loss must be sign or squared, got {loss!r}")
        if loss_scale <= 0:
            raise ValueError(f"HedgeEnsemble: loss_scale must be > 0, got {loss_scale}")
        self.families = list(families)
        self.learning_rate = learning_rate
        self.loss = loss
        self.loss_scale = float(loss_scale)
        self.centre = float(centre)
        self.cumulative_loss = dict.fromkeys(self.families, 0.0)
        self.ensemble_loss = 0.0
        self.n_updates = 0
        self.last_timestamp: pd.Timestamp | None = None

    @classmethod
    def from_params(cls, families: Sequence[str], params: HedgeParams, *, centre: float = 0.0) -> HedgeEnsemble:
        return cls(families, learning_rate=params.learning_rate, loss=params.loss, loss_scale=params.loss_scale,
                   centre=centre)

    def eta(self) -> float:
        """The learning rate for the next update (fixed, or the anytime schedule at step t = n_updates + 1)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return math.sqrt(8.0 * math.log(max(len(self.families), 2)) / (self.n_updates + 1))

    def weights(self) -> dict[str, float]:
        """Current weights, summing to 1 (computed from the cumulative losses, shifted for stability)."""
        losses = np.array([self.cumulative_loss[f] for f in self.families])
        logits = -self.eta() * (losses - losses.min())
        raw = np.exp(logits)
        return {f: float(w) for f, w in zip(self.families, raw / raw.sum(), strict=True)}

    def combine(self, base_predictions: pd.DataFrame) -> np.ndarray:
        """The weighted average of the ``prediction_<family>`` columns; NaN where any is missing."""
        x = _base_matrix(base_predictions, self.families, "HedgeEnsemble.combine")
        weights = self.weights()
        out = np.full(len(x), np.nan)
        rows = _complete_rows(x)
        out[rows] = x[rows] @ np.array([weights[f] for f in self.families])
        return out

    def family_losses(self, predictions: pd.DataFrame | Mapping[str, Any], realised: Any) -> dict[str, float]:
        """Each family's mean bounded loss over the rows where every family and the outcome are known."""
        table = predictions if isinstance(predictions, pd.DataFrame) else pd.DataFrame(
            {prediction_column(f): np.atleast_1d(np.asarray(v, dtype=np.float64)) for f, v in predictions.items()})
        x = _base_matrix(table, self.families, "HedgeEnsemble.update")
        y = np.atleast_1d(np.asarray(realised, dtype=np.float64)).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"HedgeEnsemble.update: {len(x)} prediction rows but {len(y)} realised values")
        rows = _complete_rows(x, y)
        if not rows.any():
            raise DataError("HedgeEnsemble.update: no row has every family's prediction and a realised value")
        losses = bounded_loss(x[rows], y[rows, None], loss=self.loss, scale=self.loss_scale, centre=self.centre)
        return {f: float(v) for f, v in zip(self.families, losses.mean(axis=0), strict=True)}

    def update(
        self, predictions: pd.DataFrame | Mapping[str, Any], realised: Any, *, timestamp: Any = None,
    ) -> dict[str, float]:
        """Score one timestamp's predictions against its outcomes and move the weights; returns the new weights.

        ``predictions``: a frame with ``prediction_<family>`` columns, or family -> values; ``realised``:
        the outcomes, row for row. ``timestamp`` (optional) must be later than the last one applied.
        """
        if timestamp is not None:
            stamp = _utc(timestamp)
            if self.last_timestamp is not None and stamp <= self.last_timestamp:
                raise ValueError(f"HedgeEnsemble.update: timestamp {stamp} is not after the last update "
                                 f"{self.last_timestamp}; an outcome is applied once, in time order")
        return self.update_losses(self.family_losses(predictions, realised), timestamp=timestamp)

    def update_losses(self, losses: Mapping[str, float], *, timestamp: Any = None) -> dict[str, float]:
        """Apply one step of already-computed per-family losses (each in [0, 1])."""
        missing = [f for f in self.families if f not in losses]
        if missing:
            raise ValueError(f"HedgeEnsemble.update: no loss for family(ies) {missing}")
        bad = {f: losses[f] for f in self.families if not (0.0 <= float(losses[f]) <= 1.0)}
        if bad:
            raise ValueError(f"HedgeEnsemble.update: losses must lie in [0, 1], got {bad}")
        weights = self.weights()
        self.ensemble_loss += sum(weights[f] * float(losses[f]) for f in self.families)
        for family in self.families:
            self.cumulative_loss[family] += float(losses[family])
        self.n_updates += 1
        if timestamp is not None:
            self.last_timestamp = _utc(timestamp)
        return self.weights()

    def regret(self) -> float:
        """Cumulative loss of the ensemble minus that of the best single family in hindsight."""
        return self.ensemble_loss - min(self.cumulative_loss.values())

    def regret_bound(self) -> float:
        """The worst-case regret guarantee after ``n_updates`` steps (see the class docstring)."""
        n, t = max(len(self.families), 2), self.n_updates
        if self.learning_rate is not None:
            return math.log(n) / self.learning_rate + self.learning_rate * t / 8.0
        return math.sqrt(2.0 * t * math.log(n)) + math.sqrt(math.log(n) / 8.0)

    def report(self) -> dict[str, Any]:
        """Weights, regret, regret per step and its bound, the best family: what the stack stage writes."""
        best = min(self.cumulative_loss, key=self.cumulative_loss.__getitem__)
        return {
            "weights": self.weights(),
            "n_updates": self.n_updates,
            "ensemble_loss": self.ensemble_loss,
            "cumulative_loss": dict(self.cumulative_loss),
            "best_family": best,
            "regret": self.regret(),
            "regret_per_update": self.regret() / self.n_updates if self.n_updates else None,
            "regret_bound": self.regret_bound(),
            "last_timestamp": None if self.last_timestamp is None else str(self.last_timestamp),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION, "kind": "hedge", "families": self.families,
            "learning_rate": self.learning_rate, "loss": self.loss, "loss_scale": self.loss_scale,
            "centre": self.centre, "cumulative_loss": self.cumulative_loss, "ensemble_loss": self.ensemble_loss,
            "n_updates": self.n_updates,
            "last_timestamp": None if self.last_timestamp is None else self.last_timestamp.isoformat(),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> HedgeEnsemble:
        if payload.get("kind") != "hedge" or payload.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"Hedge state: expected kind 'hedge' format {STATE_FORMAT_VERSION}, got kind "
                             f"{payload.get('kind')!r} format {payload.get('format_version')!r}")
        hedge = cls(payload["families"], learning_rate=payload["learning_rate"], loss=payload["loss"],
                    loss_scale=payload["loss_scale"], centre=payload["centre"])
        hedge.cumulative_loss = {f: float(payload["cumulative_loss"][f]) for f in hedge.families}
        hedge.ensemble_loss = float(payload["ensemble_loss"])
        hedge.n_updates = int(payload["n_updates"])
        hedge.last_timestamp = None if payload["last_timestamp"] is None else _utc(payload["last_timestamp"])
        return hedge

    def save(self, path: str | Path) -> None:
        """Write the state atomically (temporary file + rename), so a crash mid-write keeps the previous state."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> HedgeEnsemble:
        """The ensemble saved at ``path``."""
        target = Path(path)
        if not target.is_file():
            raise FileNotFoundError(f"{target}: no Hedge state saved there")
        return cls.from_dict(json.loads(target.read_text()))

    @classmethod
    def resume(cls, state_path: str | Path, seed_path: str | Path) -> HedgeEnsemble:
        """The serving state at ``state_path`` when a server saved one, else the stack stage's seed."""
        return cls.load(state_path if Path(state_path).is_file() else seed_path)


def replay_hedge(hedge: HedgeEnsemble, oof: pd.DataFrame, target: str) -> HedgeEnsemble:
    """Feed the OOF predictions through ``hedge`` one timestamp at a time, in time order (the serving seed)."""
    _require_columns(oof, ["timestamp", target, *[prediction_column(f) for f in hedge.families]], "replay_hedge")
    columns = [prediction_column(f) for f in hedge.families]
    frame = oof.sort_values("timestamp", kind="stable")
    known = frame[columns + [target]].notna().all(axis=1)
    for stamp, group in frame[known].groupby("timestamp", sort=True):
        hedge.update(group[columns], group[target].to_numpy(), timestamp=stamp)
    return hedge


# ------------------------------------------------------------------------------------------------ the stack stage


@dataclass
class StackResult:
    """What :func:`fit_stack` produced: the combiner fitted on every OOF row, its evaluation, the Hedge seed."""

    combiner: Combiner
    evaluation: MetaEvaluation
    hedge: HedgeEnsemble
    families: list[str]
    checked_rows: dict[str, int]
    metrics: dict[str, Any] = field(default_factory=dict)


def fit_stack(
    oof: pd.DataFrame,
    train_metrics: Mapping[str, Any],
    *,
    calendar: Sequence[Any] | pd.DatetimeIndex | pd.Series,
    spec: Mapping[str, Any],
    params: EnsembleParams,
) -> StackResult:
    """Check the OOF frame, judge the combiner by a walk-forward over it, fit it on all of it, seed the Hedge.

    ``train_metrics`` is ``reports/train_metrics.json`` (fold spans), ``calendar`` the dataset's
    timestamps, ``spec`` ``models/trained/spec.json`` (target, horizon, task, families).
    """
    families = list(params.families or spec["families"])
    unknown = [f for f in families if f not in spec["families"]]
    if unknown:
        raise DataError(f"stack: ensemble.families {unknown} were not trained (trained: {spec['families']})")
    target, horizon = spec["target"], int(spec["horizon"])
    checked = check_out_of_fold(oof, fold_spans_from_metrics(train_metrics), calendar=calendar, purge=horizon,
                                families=families)
    evaluation = walk_forward_meta_evaluation(oof, families, target, walk_forward=params.meta_walk_forward,
                                              purge=horizon, make=lambda: make_combiner(params, families))
    combiner = make_combiner(params, families).fit(oof, oof[target].to_numpy(dtype=np.float64))
    centre = 0.5 if spec.get("task") == "classification" else 0.0
    hedge = replay_hedge(HedgeEnsemble.from_params(families, params.hedge, centre=centre), oof, target)
    metrics = {
        "method": params.method,
        "meta_learner": params.meta_learner if params.method == "stacking" else None,
        "families": families,
        "target": target,
        "oof_rows_checked": checked,
        "weights": dict(combiner.weights_),
        "intercept": getattr(combiner, "intercept_", None),
        "meta_evaluation": evaluation.summary(),
        "hedge": hedge.report(),
    }
    return StackResult(combiner=combiner, evaluation=evaluation, hedge=hedge, families=families,
                       checked_rows=checked, metrics=metrics)


# ------------------------------------------------------------------------------------------------ deployable


def _predict_with_interval(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Point forecast, and the interval where the family gives one (the same calls the train stage makes)."""
    if hasattr(model, "predict_interval"):
        table = model.predict_interval(frame)
        return pd.DataFrame({"prediction": table["prediction"].to_numpy(), "lower": table["lower"].to_numpy(),
                             "upper": table["upper"].to_numpy()})
    if hasattr(model, "predict_with_uncertainty"):
        table = model.predict_with_uncertainty(frame)
        return pd.DataFrame({"prediction": table["mean"].to_numpy(), "lower": table["lower"].to_numpy(),
                             "upper": table["upper"].to_numpy()})
    return pd.DataFrame({"prediction": np.asarray(model.predict(frame), dtype=np.float64)})


class PanelEnsemble:
    """The deployable ensemble: the families' final models, a fitted combiner and the feature spec.

    ``spec`` is ``models/trained/spec.json`` (``feature_version``, ``features``, ``horizon``,
    ``target``, ``task``, ``families``). :meth:`predict` takes a panel frame like the dataset the
    models trained on: ``timestamp``, ``symbol`` and every feature column, sorted by (symbol,
    timestamp); sequence families need each symbol's last ``lookback`` bars before the rows that
    matter (rows without a full window predict NaN).

    It returns one row per input row: ``timestamp``, ``symbol``, ``prediction`` (the combiner's
    output), each family's ``prediction_<family>`` (what an online :class:`HedgeEnsemble` re-weights),
    and, when every family gives an interval, ``lower`` and ``upper``: the ensemble prediction plus
    the weighted average of the families' interval offsets (``lower_i - p_i``, ``upper_i - p_i``)
    with :meth:`Combiner.interval_weights` (non-negative, summing to 1). The offsets are averaged
    rather than the bounds pushed through the combiner because the meta-learner rescales forecasts
    (a stack's weights rarely sum to 1) and the interval's width is about the target's spread, not
    the forecast's. The result always contains the prediction; its coverage is not re-calibrated.

    The feature version: a frame whose ``attrs["feature_version"]`` or ``feature_version`` column
    (every row) differs from the spec's is refused; through MLflow the column is the one that
    reaches the model (MLflow rebuilds the frame, dropping ``attrs``).
    """

    def __init__(self, base_models: Mapping[str, Any], combiner: Combiner, spec: Mapping[str, Any]) -> None:
        missing = [f for f in combiner.families if f not in base_models]
        if missing:
            raise ValueError(f"PanelEnsemble: the combiner needs family(ies) {missing} but no model was given")
        self.base_models = {f: base_models[f] for f in combiner.families}
        self.combiner = combiner
        self.spec = dict(spec)
        self.features: list[str] = list(spec["features"])
        for family, model in self.base_models.items():
            extra = [name for name in getattr(model, "feature_names_", []) if name not in self.features]
            if extra:
                raise ValueError(f"PanelEnsemble: the {family} model uses feature(s) {extra} absent from the spec")

    def check_input(self, frame: pd.DataFrame) -> None:
        """Raise :class:`DataError` naming what is wrong with ``frame`` (columns, feature version, order)."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"ensemble input: expected a pandas DataFrame, got {type(frame).__name__}")
        missing = [c for c in ("timestamp", "symbol", *self.features) if c not in frame.columns]
        if missing:
            raise DataError(f"ensemble input: missing feature column(s) {missing} (feature version "
                            f"{self.spec['feature_version']} needs {len(self.features)} features)")
        expected = str(self.spec["feature_version"])
        stamped = frame.attrs.get(FEATURE_VERSION_ATTR)
        if stamped is not None and str(stamped) != expected:
            raise DataError(f"ensemble input: frame.attrs['feature_version'] is {stamped!r} but the ensemble was "
                            f"trained on feature version {expected!r}; recompute the features")
        if FEATURE_VERSION_ATTR in frame.columns:
            versions = frame[FEATURE_VERSION_ATTR].astype(str)
            wrong = versions != expected
            if wrong.any():
                row = frame.index[wrong.to_numpy()][0]
                raise DataError(f"ensemble input: column 'feature_version' is {versions.loc[row]!r} at row {row!r} "
                                f"but the ensemble was trained on feature version {expected!r}")
        if frame.empty:
            raise DataError("ensemble input: no rows")
        symbols = frame["symbol"].astype(str).to_numpy()
        stamps = _utc_index(frame["timestamp"]).asi8
        out_of_order = (symbols[1:] < symbols[:-1]) | ((symbols[1:] == symbols[:-1]) & (stamps[1:] <= stamps[:-1]))
        if out_of_order.any():
            row = frame.index[int(np.flatnonzero(out_of_order)[0]) + 1]
            raise DataError(f"ensemble input: row {row!r} breaks the order; rule: sorted by symbol then timestamp, "
                            "one row per (symbol, timestamp)")

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Ensemble forecast (and interval) per row of the panel ``frame``; see the class docstring."""
        self.check_input(frame)
        panel = frame[["timestamp", "symbol", *self.features]].reset_index(drop=True)
        panel["timestamp"] = _utc_index(panel["timestamp"])
        out = pd.DataFrame({"timestamp": panel["timestamp"], "symbol": panel["symbol"].astype(str)})
        per_family = {family: _predict_with_interval(model, panel) for family, model in self.base_models.items()}
        base = pd.DataFrame({prediction_column(f): t["prediction"].to_numpy() for f, t in per_family.items()})
        prediction = self.combiner.predict(base)
        out["prediction"] = prediction
        if all("lower" in t.columns for t in per_family.values()):
            weights = self.combiner.interval_weights()
            lower_offset = sum(weights[f] * (t["lower"].to_numpy() - t["prediction"].to_numpy())
                               for f, t in per_family.items())
            upper_offset = sum(weights[f] * (t["upper"].to_numpy() - t["prediction"].to_numpy())
                               for f, t in per_family.items())
            out["lower"] = prediction + lower_offset
            out["upper"] = prediction + upper_offset
        for column in base.columns:
            out[column] = base[column].to_numpy()
        return out
