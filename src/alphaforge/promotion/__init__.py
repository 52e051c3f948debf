"""Promotion: the challenger becomes champion only when it earns it, and the switch is one atomic step.

The MLflow Model Registry holds every candidate as a version of one registered model
(``PromotionParams.model_name``). Aliases, not stages, say what each version is for:
``champion`` is what serves (``models:/NAME@champion``), ``challenger`` the newest candidate.

Rules (:func:`decide`, a pure function; each rule leaves one reason line starting PASS, FAIL, SKIP or INFO,
and one structured entry with its figure, threshold and verdict). On the whole out-of-sample span (every
walk-forward fold), for the promoted strategy (``strategy``; ``auto``: long_short across symbols, long_flat for
a single series), traded at the next bar's price with costs (:mod:`alphaforge.backtest`):

* signal: the candidate's rank IC has a Newey-West t-stat of at least ``min_ic_tstat``;
* edge: its per-bar net return beats every naive baseline's, built the same way, by a margin whose one-sided
  HAC test has a p-value, times the number of trials behind the candidate (Optuna trials times families,
  Bonferroni), of at most ``alpha``;
* overfitting: its probability of backtest overfitting (CSCV over the tuning trials) is at most ``max_pbo``;
* plausibility: a net Sharpe above ``max_plausible_sharpe`` (daily bars; scaled by sqrt(bars a year / 252)), or
  a P&L that comes mostly from the least liquid fifth of names, from bars that did not trade, or from a handful
  of symbols, blocks promotion with a diagnosis that says which;
* champion: it beats the serving champion on ``metric`` by more than ``margin``, both scored on the *same* latest
  out-of-sample window (:class:`OOSWindow`; the champion is rescored there on bars it never trained on);
* the data passed validation; drift alerts block only where they concern this model (``drift_blocks``: a
  measured performance drop), never the data drift on the newest bars that retraining answers.

How :func:`promote` keeps the champion safe:

1. It takes a registry-wide lock (an empty registered model ``<name>.promotion-lock``, created through the
   tracking server: the backend store's unique key lets exactly one racer create it), so promotions run one
   after another and each one compares against the champion that is really there. A lock left by a crashed
   promoter is broken when its process is gone (same host) or it is older than ``lock_stale_seconds``;
   :func:`force_unlock` removes one by hand.
2. It registers the candidate as a new version (tags: its window and metrics), points ``challenger`` at it,
   scores the champion on the candidate's window, decides, and records the decision with its reasons as
   version tags, tags on the candidate's run and (``decision_path``) a JSON file.
3. Only then, and only when promoting, it tags the new version with the champion it replaces
   (``alphaforge.previous_champion``, what :func:`rollback` follows), re-reads the champion alias and refuses
   if it moved since step 2 (compare-and-set against a rollback or a broken lock), and moves ``champion``:
   one ``set_registered_model_alias`` call, the single atomic step.

A crash, an error or an unreachable tracking server anywhere before step 3's alias call leaves the champion
as it was, and :class:`PromotionError` says so ("champion unchanged"). MLflow's HTTP client would retry a dead
server for minutes; the stage sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to
``http_max_retries`` / ``http_timeout_seconds`` for its duration (see :func:`alphaforge.tracking.fail_fast_http`;
values you export yourself win), so it fails in seconds.

:func:`rollback` moves ``champion`` back to the version the current champion replaced (one alias write, well
under a second); :func:`show` lists versions, aliases and their metrics. All MLflow calls go through
:mod:`alphaforge.tracking`, so the store is ``MLFLOW_TRACKING_URI`` or the local SQLite file.
"""

from alphaforge.errors import PromotionConflict, PromotionError, RegistryError
from alphaforge.promotion.gate import decide, gate_evidence, gate_strategy, plausible_sharpe_limit, window_scorecards
from alphaforge.promotion.lock import force_unlock, lock_name
from alphaforge.promotion.params import (
    CHALLENGER,
    CHAMPION,
    CHAMPION_SCORES_TAG,
    COMPARED_WITH_TAG,
    DECISION_TAG,
    LAST_EVENT_TAG,
    MAX_TAG_CHARS,
    METRIC_TAG_PREFIX,
    MODEL_URI_TAG,
    NO_VERSION,
    PREVIOUS_CHAMPION_TAG,
    PROMOTED_AT_TAG,
    REASONS_TAG,
    ROLLED_BACK_AT_TAG,
    TAG,
    WINDOW_END_TAG,
    WINDOW_START_TAG,
    BaselineTest,
    ChampionRef,
    ChampionRescorer,
    Decision,
    GateEvidence,
    GateRule,
    GateStrategy,
    Metric,
    OOSWindow,
    PromotionOutcome,
    PromotionParams,
    RollbackOutcome,
    Scorecard,
)
from alphaforge.promotion.promote import promote
from alphaforge.promotion.registry import CROWNED_BY_HAND_TAG, RegistryView, VersionRow, crown, rollback, show

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ChampionRef",
    "Decision",
    "OOSWindow",
    "PromotionConflict",
    "PromotionError",
    "PromotionOutcome",
    "PromotionParams",
    "RegistryError",
    "RegistryView",
    "RollbackOutcome",
    "Scorecard",
    "GateEvidence",
    "decide",
    "force_unlock",
    "gate_evidence",
    "lock_name",
    "promote",
    "rollback",
    "show",
    "window_scorecards",
]
