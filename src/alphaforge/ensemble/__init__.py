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

from alphaforge.ensemble.base import (
    DEFAULT_META_LIGHTGBM,
    ENSEMBLE_COLUMN,
    FEATURE_VERSION_ATTR,
    PREDICTION_PREFIX,
    STATE_FORMAT_VERSION,
    EnsembleParams,
    HedgeParams,
    families_in,
    prediction_column,
)
from alphaforge.ensemble.combiners import (
    Combiner,
    StackingEnsemble,
    VotingEnsemble,
    combiner_from_dict,
    make_combiner,
    nonnegative_ridge,
)
from alphaforge.ensemble.hedge import HedgeEnsemble, bounded_loss, replay_hedge
from alphaforge.ensemble.meta import MetaEvaluation, walk_forward_meta_evaluation
from alphaforge.ensemble.oof import FoldSpan, check_out_of_fold, fold_spans_from_metrics
from alphaforge.ensemble.panel import PanelEnsemble
from alphaforge.ensemble.stack import StackResult, fit_stack
from alphaforge.io import write_json_atomic  # noqa: F401  (alphaforge.pyfunc imports it from here)

__all__ = [
    "Combiner",
    "DEFAULT_META_LIGHTGBM",
    "ENSEMBLE_COLUMN",
    "EnsembleParams",
    "FEATURE_VERSION_ATTR",
    "FoldSpan",
    "HedgeEnsemble",
    "HedgeParams",
    "MetaEvaluation",
    "PREDICTION_PREFIX",
    "PanelEnsemble",
    "STATE_FORMAT_VERSION",
    "StackResult",
    "StackingEnsemble",
    "VotingEnsemble",
    "bounded_loss",
    "check_out_of_fold",
    "combiner_from_dict",
    "families_in",
    "fit_stack",
    "fold_spans_from_metrics",
    "make_combiner",
    "nonnegative_ridge",
    "prediction_column",
    "replay_hedge",
    "walk_forward_meta_evaluation",
]
