"""Static combiners fitted on out-of-fold predictions: non-negative ridge stacking (:class:`StackingEnsemble`) and
weighted voting (:class:`VotingEnsemble`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import DEFAULT_META_LIGHTGBM, EnsembleParams, _base_matrix
from alphaforge.models.importance import rank_ic
from alphaforge.schema import DataError


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
