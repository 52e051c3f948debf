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

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alphaforge import tracking
from alphaforge.errors import PromotionConflict, PromotionError, RegistryError  # noqa: F401  (re-exported: the errors live in alphaforge.errors)
from alphaforge.io import write_json_atomic
from alphaforge.processes import pid_alive
from alphaforge.schema import finite_or_none as _finite
from alphaforge.schema import format_metric as _fmt

if TYPE_CHECKING:
    import pandas as pd

    from alphaforge.evaluate import Evaluation

log = logging.getLogger(__name__)

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

CHAMPION = "champion"
CHALLENGER = "challenger"

TAG = "alphaforge."
WINDOW_START_TAG = f"{TAG}window.start"
WINDOW_END_TAG = f"{TAG}window.end"
METRIC_TAG_PREFIX = f"{TAG}metric."
MODEL_URI_TAG = f"{TAG}model_uri"
DECISION_TAG = f"{TAG}decision"
REASONS_TAG = f"{TAG}reasons"
COMPARED_WITH_TAG = f"{TAG}compared_with"
CHAMPION_SCORES_TAG = f"{TAG}champion_scores"
PREVIOUS_CHAMPION_TAG = f"{TAG}previous_champion"
PROMOTED_AT_TAG = f"{TAG}promoted_at"
ROLLED_BACK_AT_TAG = f"{TAG}rolled_back_at"
LAST_EVENT_TAG = f"{TAG}last_event"
NO_VERSION = "none"
MAX_TAG_CHARS = 5000

Metric = Literal["sharpe", "information_ratio", "rank_ic_mean", "ic_mean", "directional_accuracy"]
GateStrategy = Literal["auto", "long_short", "topk", "long_flat", "long_short_band"]


class PromotionParams(BaseModel):
    """The promotion rules (``promote:`` in params.yaml) and how patient the stage is with the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("alphaforge-signal", min_length=1, description="registered model in the MLflow registry")
    metric: Metric = Field("sharpe", description="the champion comparison, on the latest out-of-sample window; "
                           "higher is better")
    margin: float = Field(0.0, ge=0.0, description="the challenger must beat the champion by more than this")
    strategy: GateStrategy = Field("auto", description="the strategy the gate judges; auto: long_short across "
                                   "symbols, long_flat for a single series")
    min_ic_tstat: float = Field(2.0, description="least Newey-West t-stat of the candidate's rank IC")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance of the edge over each baseline, after "
                         "multiplying the p-value by the number of trials")
    max_pbo: float = Field(0.5, ge=0.0, le=1.0, description="largest probability of backtest overfitting")
    min_pbo_trials: int = Field(6, ge=2, description="tuning trials with complete out-of-sample returns needed for a "
                                "PBO worth gating on; fewer: the rule is skipped and says so")
    max_plausible_sharpe: float = Field(4.0, gt=0.0, description="net Sharpe above this (daily bars; scaled by "
                                        "sqrt(bars a year / 252)) is a bug until shown otherwise")
    max_illiquid_pnl_share: float = Field(0.5, gt=0.0, le=1.0, description="largest share of gross P&L from the "
                                          "least liquid fifth of names")
    max_stale_pnl_share: float = Field(0.25, gt=0.0, le=1.0, description="largest share of gross P&L earned over "
                                       "bars that did not trade")
    max_top_symbols_pnl_share: float = Field(0.6, gt=0.0, le=1.0, description="largest share of the positive "
                                             "P&L from the top max(3, 5%) symbols (10 symbols or more)")
    drift_blocks: tuple[str, ...] = Field(("performance",), description="drift rules that block the challenger")
    require_beat_baselines: bool = True
    require_validation: bool = True
    require_no_drift_alert: bool = True
    min_unseen_bars: int = Field(20, ge=1, description="bars of the window the champion must not have trained on "
                                 "before it can be rescored there")
    lock_wait_seconds: float = Field(60.0, gt=0, description="how long to wait for another promotion to finish")
    lock_stale_seconds: float = Field(600.0, gt=0, description="a lock older than this was left by a crash")
    http_max_retries: int = Field(1, ge=0, le=10, description="MLflow HTTP retries during the stage")
    http_timeout_seconds: int = Field(10, ge=1, description="MLflow HTTP timeout during the stage")

    @field_validator("model_name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        if "/" in name or ":" in name:
            raise ValueError(f"model_name {name!r}: MLflow registered model names cannot contain '/' or ':'")
        return name


class OOSWindow(BaseModel):
    """The out-of-sample period a score was computed on (ISO timestamps, inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(min_length=1)
    end: str = Field(min_length=1)

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


class Scorecard(BaseModel):
    """Metrics of one signal on one window; NaN and inf are stored as None (undefined)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: OOSWindow
    metrics: dict[str, float | None]

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_or_none(cls, metrics: Mapping[str, Any]) -> dict[str, float | None]:
        return {str(name): _finite(value) for name, value in dict(metrics).items()}

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)


class GateRule(BaseModel):
    """One rule of the gate with its figure, threshold and verdict (PASS, FAIL, SKIP, INFO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    verdict: Literal["PASS", "FAIL", "SKIP", "INFO"]
    figure: float | str | None = None
    threshold: float | str | None = None
    detail: str


class BaselineTest(BaseModel):
    """The candidate's per-bar net return minus one baseline's, tested with a HAC t-test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline_sharpe: float | None
    mean_difference: float | None
    annual_difference: float | None
    t_stat: float | None
    p_value: float | None
    adjusted_p_value: float | None
    n: int
    lags: int


class GateEvidence(BaseModel):
    """What the whole out-of-sample span says about the candidate (:func:`gate_evidence`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str
    strategy: str
    mode: str
    execution: str
    periods_per_year: float
    n_periods: int
    n_trials: int
    net_sharpe: float | None
    gross_sharpe: float | None
    rank_ic_mean: float | None
    rank_ic_tstat: float | None
    baselines: dict[str, BaselineTest]
    pbo: float | None = None
    pbo_trials: int = 0
    pbo_detail: str = "no tuning trials to measure it on"
    dsr: float | None = None
    illiquid_share: float | None = None
    stale_share: float | None = None
    top_symbols_share: float | None = None
    top_symbols: tuple[str, ...] = ()
    n_symbols: int = 0

    @field_validator("net_sharpe", "gross_sharpe", "rank_ic_mean", "rank_ic_tstat", "pbo", "dsr", "illiquid_share",
                     "stale_share", "top_symbols_share", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> float | None:
        return _finite(value)


class Decision(BaseModel):
    """What :func:`decide` concluded and why (one reason line and one structured rule per check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promote: bool
    reasons: tuple[str, ...]
    rules: tuple[GateRule, ...] = ()
    metric: str
    margin: float
    window: OOSWindow
    candidate_value: float | None
    champion_value: float | None
    diagnosis: str | None = None


class ChampionRef(BaseModel):
    """The serving champion as a rescorer sees it: load ``model_uri`` and score it on the window asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    model_uri: str
    stored: Scorecard | None


ChampionRescorer = Callable[[ChampionRef, OOSWindow], Mapping[str, float | None]]


class PromotionOutcome(BaseModel):
    """The result of one :func:`promote` call; ``status`` is promoted or refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    candidate_uri: str
    version: str
    status: Literal["promoted", "refused"]
    decision: Decision
    champion_before: str | None
    champion_after: str | None
    champion_scores: Literal["stored", "rescored", "none", "other_window"]
    tracking_uri: str
    decided_at: str


class RollbackOutcome(BaseModel):
    """What :func:`rollback` did: ``champion`` moved from ``from_version`` to ``to_version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    from_version: str
    to_version: str
    seconds: float




# ---------------------------------------------------------------------------------------------- decide


def plausible_sharpe_limit(max_plausible_sharpe: float, periods_per_year: float) -> float:
    """The daily limit scaled to the bar frequency: an annualised Sharpe grows with sqrt(bars a year)."""
    return max_plausible_sharpe * math.sqrt(max(periods_per_year, 1.0) / 252.0)


def decide(
    candidate: Scorecard,
    champion: Scorecard | None,
    evidence: GateEvidence,
    *,
    validation_passed: bool,
    drift_rules: Sequence[str] = (),
    params: PromotionParams,
    champion_label: str = "champion",
    drift_detail: str = "",
) -> Decision:
    """Apply the promotion rules (module docstring); pure (no I/O), so every outcome is testable and explainable.

    ``evidence``: the whole out-of-sample span (:func:`gate_evidence`). ``candidate`` and ``champion``: scores on
    the latest window for the champion comparison; ``champion`` is None when nothing serves yet, and must be
    scored on ``candidate.window`` or that rule fails. ``drift_rules``: the drift rules that fired.
    """
    metric = params.metric
    reasons: list[str] = []
    rules: list[GateRule] = []
    failed = False
    diagnoses: list[str] = []

    def rule(name: str, passed: bool | None, line: str, *, figure: Any = None, threshold: Any = None,
             required: bool = True) -> None:
        nonlocal failed
        if passed is None:
            verdict = "SKIP"
        elif not required:
            verdict = "INFO"
            line = f"(not required) {'passes' if passed else 'fails'}: {line}"
        else:
            verdict = "PASS" if passed else "FAIL"
            failed = failed or not passed
        reasons.append(f"{verdict} {line}")
        number = _finite(figure) if not isinstance(figure, str) else figure
        limit = _finite(threshold) if not isinstance(threshold, str) else threshold
        rules.append(GateRule(rule=name, verdict=verdict, figure=number, threshold=limit, detail=line))

    span = (f"{evidence.strategy} on the whole out-of-sample span ({evidence.n_periods} bars, "
            f"{evidence.execution} execution)")
    ic_t = evidence.rank_ic_tstat
    rule("ic_tstat", ic_t is not None and ic_t >= params.min_ic_tstat,
         f"rank IC {_fmt(evidence.rank_ic_mean)} with Newey-West t-stat {_fmt(ic_t)} "
         f"{'>=' if ic_t is not None and ic_t >= params.min_ic_tstat else '<'} min_ic_tstat {params.min_ic_tstat:g}",
         figure=ic_t, threshold=params.min_ic_tstat)

    if not evidence.baselines:
        rule("baselines", False, "no baseline was scored: cannot show the candidate beats the naive baselines",
             required=params.require_beat_baselines)
    for name, test in sorted(evidence.baselines.items()):
        adjusted = test.adjusted_p_value
        if adjusted is None:
            rule(f"beats_{name}", False,
                 f"net return vs baseline {name} ({span}): no test possible (too few bars or no difference)",
                 required=params.require_beat_baselines)
            continue
        passed = adjusted <= params.alpha
        rule(f"beats_{name}", passed,
             f"net return over baseline {name}: {_pct(test.annual_difference)} a year, HAC t {_fmt(test.t_stat)}, "
             f"p {_fmt(test.p_value)} x {evidence.n_trials} trial(s) = {_fmt(adjusted)} "
             f"{'<=' if passed else '>'} alpha {params.alpha:g} ({span})",
             figure=adjusted, threshold=params.alpha, required=params.require_beat_baselines)

    if evidence.pbo is None:
        rule("pbo", None, f"probability of backtest overfitting not measured: {evidence.pbo_detail}")
    elif evidence.pbo_trials < params.min_pbo_trials:
        rule("pbo", None, f"probability of backtest overfitting {_fmt(evidence.pbo)} over only {evidence.pbo_trials} "
                          f"complete tuning trial(s) (< min_pbo_trials {params.min_pbo_trials}): too few to judge; "
                          "not gated")
    else:
        rule("pbo", evidence.pbo <= params.max_pbo,
             f"probability of backtest overfitting {_fmt(evidence.pbo)} "
             f"{'<=' if evidence.pbo <= params.max_pbo else '>'} max_pbo {params.max_pbo:g} ({evidence.pbo_detail})",
             figure=evidence.pbo, threshold=params.max_pbo)

    limit = plausible_sharpe_limit(params.max_plausible_sharpe, evidence.periods_per_year)
    sharpe = evidence.net_sharpe
    too_good = sharpe is not None and sharpe > limit
    rule("plausible_sharpe", not too_good,
         f"net Sharpe {_fmt(sharpe)} {'>' if too_good else '<='} max_plausible_sharpe {limit:.2f} "
         f"({params.max_plausible_sharpe:g} for daily bars at {evidence.periods_per_year:g} bars a year)",
         figure=sharpe, threshold=limit)
    if too_good:
        diagnoses.append(f"too good to be true: net Sharpe {sharpe:.1f} above {limit:.1f}")
    for key, label, threshold in (
        ("illiquid_share", "of P&L from the least liquid quintile", params.max_illiquid_pnl_share),
        ("stale_share", "of P&L from bars that did not trade", params.max_stale_pnl_share),
        ("top_symbols_share", f"of the positive P&L from {len(evidence.top_symbols) or 'the top'} symbols "
                              f"({', '.join(evidence.top_symbols)})", params.max_top_symbols_pnl_share),
    ):
        share = getattr(evidence, key)
        if share is None:
            why = {"illiquid_share": "no volume to rank liquidity, or no positive P&L",
                   "stale_share": "no positive P&L", "top_symbols_share": "fewer than 10 symbols or no positive P&L"}
            rule(f"plausible_{key}", None, f"P&L attribution {key}: not measured ({why[key]})")
            continue
        passed = share <= threshold
        rule(f"plausible_{key}", passed, f"{100 * share:.0f}% {label} {'<=' if passed else '>'} "
                                         f"{100 * threshold:.0f}%", figure=share, threshold=threshold)
        if not passed:
            diagnoses.append(f"too good to be true: {100 * share:.0f}% {label}")

    ours = candidate.value(metric)
    theirs: float | None = None
    if champion is None:
        rule("champion", True, f"no {champion_label} serves yet: nothing to beat on {metric}")
    elif champion.window != candidate.window:
        rule("champion", False, f"{champion_label} was scored on window {champion.window}, the candidate on "
                                f"{candidate.window}: scores on different windows do not compare (rescore the "
                                "champion on the latest window)")
    else:
        theirs = champion.value(metric)
        if theirs is None:
            rule("champion", ours is not None, f"{champion_label} {metric} is undefined on window "
                                               f"{candidate.window}; candidate {_fmt(ours)} is defined")
        else:
            beats = ours is not None and ours > theirs + params.margin
            rule("champion", beats, f"candidate {metric} {_fmt(ours)} {'>' if beats else '<='} {champion_label} "
                                    f"{_fmt(theirs)} + margin {params.margin:g} on the latest window "
                                    f"{candidate.window}", figure=ours, threshold=theirs)

    rule("validation", validation_passed, f"data validation {'passed' if validation_passed else 'failed'}",
         required=params.require_validation)
    fired = list(dict.fromkeys(drift_rules))
    if not fired:
        rule("drift", True, f"drift report raised no alert{f' ({drift_detail})' if drift_detail else ''}",
             required=params.require_no_drift_alert)
    for name in fired:
        blocks = name in params.drift_blocks
        why = ("a measured drop in the model's own out-of-sample performance concerns this model"
               if name == "performance" else
               "listed in promote.drift_blocks" if blocks else
               "the challenger was just retrained on these bars: drift of the newest data against the old champion's "
               "training window is what retraining answers" if name in ("data_drift", "prediction_drift") else
               "not in promote.drift_blocks")
        rule(f"drift_{name}", not blocks, f"drift alert {name!r} {'blocks' if blocks else 'does not block'}: {why}",
             required=params.require_no_drift_alert)

    return Decision(promote=not failed, reasons=tuple(reasons), rules=tuple(rules), metric=metric,
                    margin=params.margin, window=candidate.window, candidate_value=ours, champion_value=theirs,
                    diagnosis="; ".join(diagnoses) or None)


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{100 * value:+.2f}%"


def gate_strategy(evaluation: Evaluation, params: PromotionParams) -> str:
    """The strategy the gate judges: ``params.strategy``, or the evaluation's primary one for ``auto``."""
    from alphaforge.schema import DataError

    if params.strategy == "auto":
        return evaluation.primary_strategy
    if params.strategy not in evaluation.strategies:
        raise DataError(f"promote.strategy {params.strategy!r}: the evaluation ({evaluation.mode}) has strategies "
                        f"{list(evaluation.strategies)}; rule: pick one of them, or auto")
    return params.strategy


def gate_evidence(evaluation: Evaluation, candidate: str, params: PromotionParams, *, n_trials: int = 1,
                  pbo: float | None = None, pbo_trials: int = 0, pbo_detail: str | None = None,
                  dsr: float | None = None) -> GateEvidence:
    """The gate's figures for ``candidate`` over every out-of-sample bar: the HAC test of its net return against
    every baseline (same strategy, same bars), its rank-IC t-stat and where its P&L came from.

    ``n_trials``: every configuration tried to reach the candidate (Optuna trials times families, at least 1).
    """
    from alphaforge.evaluate import BASELINES
    from alphaforge.stats import adjusted_p_value, newey_west

    strategy = gate_strategy(evaluation, params)
    ours = evaluation.returns[(candidate, strategy)]["net_return"].to_numpy(dtype=float)
    lags = max(evaluation.horizon - 1, 0)
    tests: dict[str, BaselineTest] = {}
    for name in BASELINES:
        theirs = evaluation.returns[(name, strategy)]["net_return"].to_numpy(dtype=float)
        test = newey_west(ours - theirs, min_lags=lags)
        tests[name] = BaselineTest(
            baseline_sharpe=_finite(evaluation.overall.at[(name, strategy), "sharpe"]),
            mean_difference=_finite(test.mean), annual_difference=_finite(test.mean * evaluation.periods_per_year),
            t_stat=_finite(test.t_stat), p_value=_finite(test.p_value),
            adjusted_p_value=_finite(adjusted_p_value(test.p_value, n_trials)), n=test.n, lags=test.lags)
    attribution = evaluation.attribution[(candidate, strategy)]
    return GateEvidence(
        candidate=candidate, strategy=strategy, mode=evaluation.mode, execution=evaluation.execution,
        periods_per_year=evaluation.periods_per_year, n_periods=int(ours.size), n_trials=max(int(n_trials), 1),
        net_sharpe=evaluation.overall.at[(candidate, strategy), "sharpe"],
        gross_sharpe=evaluation.overall.at[(candidate, strategy), "gross_sharpe"],
        rank_ic_mean=evaluation.signals.at[candidate, "rank_ic_mean"],
        rank_ic_tstat=evaluation.signals.at[candidate, "rank_ic_tstat"],
        baselines=tests, pbo=pbo, pbo_trials=int(pbo_trials), dsr=dsr,
        pbo_detail=pbo_detail or "no tuning trials to measure it on",
        illiquid_share=attribution.get("illiquid_share"), stale_share=attribution.get("stale_share"),
        top_symbols_share=attribution.get("top_symbols_share"), top_symbols=tuple(attribution.get("top_symbols", ())),
        n_symbols=int(attribution.get("n_symbols", 0)),
    )


def window_scorecards(evaluation: Evaluation, oof: pd.DataFrame, model: str, *, fold: int | None = None,
                      strategy: str | None = None) -> Scorecard:
    """One walk-forward fold's window from an evaluation (default: the last fold, the latest out-of-sample
    window): the model's scorecard there for ``strategy`` (default: the primary), for the champion comparison.

    ``oof`` is the frame that was evaluated (its ``fold`` and ``timestamp`` give the window's bounds);
    ``model`` is one of ``evaluation.models``.
    """
    from alphaforge.evaluate import METRICS
    from alphaforge.schema import DataError

    if model not in evaluation.models:
        raise DataError(f"window_scorecards: model {model!r} not in the evaluation's models {list(evaluation.models)}")
    strategy = strategy or evaluation.primary_strategy
    folds = sorted(int(f) for f in evaluation.per_fold["fold"].unique())
    chosen = folds[-1] if fold is None else fold
    if chosen not in folds:
        raise DataError(f"window_scorecards: fold {chosen} not in the evaluation's folds {folds}")
    stamps = oof.loc[oof["fold"] == chosen, "timestamp"]
    if stamps.empty:
        raise DataError(f"window_scorecards: the OOF frame has no rows in fold {chosen}")
    window = OOSWindow(start=stamps.min().isoformat(), end=stamps.max().isoformat())
    rows = evaluation.per_fold[(evaluation.per_fold["fold"] == chosen) & (evaluation.per_fold["strategy"] == strategy)]
    rows = rows.set_index("signal")
    return Scorecard(window=window, metrics={m: rows.at[model, m] for m in METRICS})


# ---------------------------------------------------------------------------------------------- tags


def _scorecard_tags(card: Scorecard) -> dict[str, str]:
    tags = {WINDOW_START_TAG: card.window.start, WINDOW_END_TAG: card.window.end}
    tags.update({f"{METRIC_TAG_PREFIX}{name}": "null" if v is None else repr(v) for name, v in card.metrics.items()})
    return tags


def _scorecard_from_tags(tags: Mapping[str, str]) -> Scorecard | None:
    if WINDOW_START_TAG not in tags or WINDOW_END_TAG not in tags:
        return None
    metrics = {key[len(METRIC_TAG_PREFIX):]: None if value == "null" else _finite(value)
               for key, value in tags.items() if key.startswith(METRIC_TAG_PREFIX)}
    return Scorecard(window=OOSWindow(start=tags[WINDOW_START_TAG], end=tags[WINDOW_END_TAG]), metrics=metrics)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version_label(version: str | None) -> str:
    return "none" if version is None else f"version {version}"


# ---------------------------------------------------------------------------------------------- the lock


def lock_name(model_name: str) -> str:
    """The registered model that serves as the promotion lock of ``model_name``."""
    return f"{model_name}.promotion-lock"


def _lock_is_stale(holder: Mapping[str, str], stale_seconds: float) -> str | None:
    """Why the lock's holder is gone (a reason), or None while it may still be working."""
    try:
        pid = int(holder.get("pid", "-1"))
        acquired = float(holder.get("acquired_at", "nan"))
    except ValueError:
        return "its owner tags are unreadable"
    if holder.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid):
        return f"its process {pid} on this host is gone"
    if math.isfinite(acquired) and time.time() - acquired > stale_seconds:
        return f"it is older than lock_stale_seconds={stale_seconds:g}"
    return None


def _acquire_lock(params: PromotionParams) -> str:
    name = lock_name(params.model_name)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "acquired_at": repr(time.time()),
             "purpose": f"promotion of {params.model_name}"}
    deadline = time.monotonic() + params.lock_wait_seconds
    while True:
        if tracking.create_registered_model_if_absent(name, tags=owner):
            return name
        holder = tracking.get_registered_model_tags(name)
        if holder is None:
            continue  # released between our create and our read: try again at once
        stale = _lock_is_stale(holder, params.lock_stale_seconds)
        if stale:
            log.warning("promote: breaking the promotion lock %s held by %s: %s", name, holder, stale)
            tracking.delete_registered_model(name, missing_ok=True)
            continue
        if time.monotonic() > deadline:
            raise PromotionError(
                f"promote: another promotion of {params.model_name} holds the lock {name!r} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}) and did not finish within "
                f"lock_wait_seconds={params.lock_wait_seconds:g}; champion unchanged. If no promotion is running, "
                "remove the lock with `alphaforge registry unlock`."
            )
        time.sleep(0.2)


def force_unlock(model_name: str) -> bool:
    """Remove the promotion lock of ``model_name`` (left by a crashed promoter); False when there was none."""
    name = lock_name(model_name)
    if tracking.get_registered_model_tags(name) is None:
        return False
    tracking.delete_registered_model(name, missing_ok=True)
    return True


# ---------------------------------------------------------------------------------------------- promote


def promote(
    model_uri: str,
    candidate: Scorecard,
    evidence: GateEvidence,
    *,
    validation_passed: bool,
    drift_rules: Sequence[str] = (),
    params: PromotionParams,
    run_id: str | None = None,
    rescore_champion: ChampionRescorer | None = None,
    decision_path: str | Path | None = None,
    drift_detail: str = "",
) -> PromotionOutcome:
    """Register ``model_uri`` as the challenger and make it champion if it passes :func:`decide`.

    ``evidence`` is the whole out-of-sample span's figures (:func:`gate_evidence`); ``candidate`` the scores on
    the latest out-of-sample window (:func:`window_scorecards`), for the champion comparison.
    ``drift_rules``: the drift rules that fired (the drift stage's ``alert.json``). ``rescore_champion(champion, window)`` returns the serving champion's
    metrics on ``window``; it is called only when the champion's stored scores are from another window.
    ``run_id`` is the run that produced the candidate (its tags get the decision; default: the version's run).
    ``decision_path`` gets the decision as JSON, also when the stage fails.

    Returns the outcome (promoted or refused: a refusal is a normal result, not an error). Raises
    :class:`PromotionError` when anything fails; before the champion switch its message says
    "champion unchanged" and the champion is exactly as it was.
    """
    started = _now()
    uri = tracking.tracking_uri()
    record: dict[str, Any] = {"model_name": params.model_name, "candidate_uri": model_uri, "tracking_uri": uri,
                              "started_at": started, "candidate": candidate.model_dump(), "evidence": evidence.model_dump(),
                              "validation_passed": validation_passed, "drift_rules": list(drift_rules),
                              "params": params.model_dump()}
    path = Path(decision_path) if decision_path is not None else None
    try:
        with tracking.fail_fast_http(params.http_max_retries, params.http_timeout_seconds):
            outcome = _promote_locked(model_uri, candidate, evidence, validation_passed=validation_passed,
                                      drift_rules=drift_rules, drift_detail=drift_detail, params=params,
                                      run_id=run_id, rescore_champion=rescore_champion, record=record)
    except BaseException as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", finished_at=_now())
        if path is not None:
            write_json_atomic(record, path, allow_nan=True)
        raise
    record.update(status=outcome.status, outcome=outcome.model_dump(), finished_at=_now())
    if path is not None:
        write_json_atomic(record, path, allow_nan=True)
    return outcome


def _promote_locked(
    model_uri: str,
    candidate: Scorecard,
    evidence: GateEvidence,
    *,
    params: PromotionParams,
    record: dict[str, Any],
    **decision_inputs: Any,
) -> PromotionOutcome:
    """Take the promotion lock, run the promotion, release the lock (also when the promotion fails)."""
    uri = tracking.tracking_uri()
    try:
        lock = _acquire_lock(params)
    except PromotionError:
        raise
    except Exception as err:
        raise PromotionError(
            f"promote: failed while taking the promotion lock on the tracking server {uri}: "
            f"{type(err).__name__}: {err}. Champion unchanged (nothing was written)."
        ) from err
    try:
        outcome = _promote_under_lock(model_uri, candidate, evidence, params=params, record=record,
                                      **decision_inputs)
    except BaseException as err:
        try:
            tracking.delete_registered_model(lock, missing_ok=True)
        except Exception as release_err:
            err.add_note(f"The promotion lock {lock!r} could not be released either ({release_err}); the next "
                         "promotion breaks it once its process is gone or it is older than lock_stale_seconds.")
        raise
    try:
        tracking.delete_registered_model(lock, missing_ok=True)
    except Exception as err:
        raise PromotionError(
            f"promote: {outcome.status} version {outcome.version} of {outcome.model_name} (champion now "
            f"{_version_label(outcome.champion_after)}), but releasing the promotion lock {lock!r} failed: "
            f"{type(err).__name__}: {err}. Remove it with `alphaforge registry unlock`."
        ) from err
    return outcome


def _promote_under_lock(
    model_uri: str,
    candidate: Scorecard,
    evidence: GateEvidence,
    *,
    validation_passed: bool,
    drift_rules: Sequence[str],
    drift_detail: str,
    params: PromotionParams,
    run_id: str | None,
    rescore_champion: ChampionRescorer | None,
    record: dict[str, Any],
) -> PromotionOutcome:
    """Steps 2 and 3 of the module docstring; the caller holds the lock."""
    name = params.model_name
    uri = tracking.tracking_uri()
    before: str | None = None
    stage = "reading the champion alias"
    try:
        before = tracking.get_model_aliases(name).get(CHAMPION)
        record["champion_before"] = before
        stage = "registering the candidate"
        version = tracking.register_model_version(
            name, model_uri, tags={**_scorecard_tags(candidate), MODEL_URI_TAG: model_uri}).version
        record["version"] = version
        log.info("promote: %s registered as %s version %s (champion: %s)", model_uri, name, version,
                 _version_label(before))
        stage = "pointing the challenger alias at the candidate"
        tracking.set_model_alias(name, CHALLENGER, version)

        stage = "scoring the champion on the candidate's window"
        champion_card, scores_from = _champion_scorecard(name, before, candidate.window, rescore_champion)
        record["champion"] = {"version": before, "scores": scores_from,
                              "scorecard": None if champion_card is None else champion_card.model_dump()}
        decision = decide(candidate, champion_card, evidence, validation_passed=validation_passed,
                          drift_rules=drift_rules, params=params, drift_detail=drift_detail,
                          champion_label="champion" if before is None else f"champion v{before}")
        record["decision"] = decision.model_dump()
        for line in decision.reasons:
            log.info("promote: %s", line)

        stage = "recording the decision"
        verdict = "promote" if decision.promote else "refuse"
        reasons_json = json.dumps(list(decision.reasons))[:MAX_TAG_CHARS]
        tracking.set_model_version_tags(name, version, {
            DECISION_TAG: verdict, REASONS_TAG: reasons_json, COMPARED_WITH_TAG: before or NO_VERSION,
            CHAMPION_SCORES_TAG: scores_from,
        })
        candidate_run = run_id or tracking.get_model_version(name, version).run_id
        if candidate_run:
            tracking.set_run_tags(candidate_run, {
                f"{TAG}promotion.decision": verdict, f"{TAG}promotion.reasons": reasons_json,
                f"{TAG}promotion.model": name, f"{TAG}promotion.version": version,
                f"{TAG}promotion.compared_with": before or NO_VERSION,
            })
        if not decision.promote:
            log.info("promote: refused %s version %s; champion stays %s", name, version, _version_label(before))
            return PromotionOutcome(
                model_name=name, candidate_uri=model_uri, version=version, status="refused", decision=decision,
                champion_before=before, champion_after=before, champion_scores=scores_from, tracking_uri=uri,
                decided_at=_now())

        stage = "recording the champion this version replaces"
        tracking.set_model_version_tags(name, version, {PREVIOUS_CHAMPION_TAG: before or NO_VERSION})
        stage = "re-reading the champion alias before the switch"
        now = tracking.get_model_aliases(name).get(CHAMPION)
    except Exception as err:
        raise PromotionError(
            f"promote: failed while {stage} (tracking server {uri}): {type(err).__name__}: {err}. "
            f"Champion unchanged: still {_version_label(before)}; the champion switch never ran."
        ) from err
    if now != before:
        raise PromotionConflict(
            f"promote: the champion of {name} moved from {_version_label(before)} to {_version_label(now)} "
            f"while this promotion compared version {version} against it (a rollback, or another promoter); "
            f"champion unchanged by this run: left at {_version_label(now)}. Rerun the stage to compare "
            "against the new champion."
        )

    try:
        tracking.set_model_alias(name, CHAMPION, version)  # the single atomic step
    except Exception as err:
        raise PromotionError(
            f"promote: the champion switch of {name} to version {version} failed (tracking server {uri}): "
            f"{type(err).__name__}: {err}. If the request never reached the server the champion is still "
            f"{_version_label(before)}; check with `alphaforge registry show`."
        ) from err
    record["switched"] = True
    log.info("promote: %s champion %s -> version %s", name, _version_label(before), version)

    try:
        stamp = _now()
        tracking.set_model_version_tags(name, version, {PROMOTED_AT_TAG: stamp})
        tracking.set_registered_model_tags(name, {
            PREVIOUS_CHAMPION_TAG: before or NO_VERSION,
            LAST_EVENT_TAG: json.dumps({"event": "promote", "from": before, "to": version, "at": stamp}),
        })
    except Exception as err:
        raise PromotionError(
            f"promote: version {version} IS now the champion of {name} (the switch succeeded), but recording "
            f"it afterwards failed: {type(err).__name__}: {err}"
        ) from err
    return PromotionOutcome(
        model_name=name, candidate_uri=model_uri, version=version, status="promoted", decision=decision,
        champion_before=before, champion_after=version, champion_scores=scores_from, tracking_uri=uri,
        decided_at=_now())


def _champion_scorecard(
    name: str, champion: str | None, window: OOSWindow, rescore: ChampionRescorer | None
) -> tuple[Scorecard | None, Literal["stored", "rescored", "none", "other_window"]]:
    """The champion's scores on ``window``: stored when computed there, else rescored, else the stored ones."""
    if champion is None:
        return None, "none"
    stored = _scorecard_from_tags(tracking.get_model_version(name, champion).tags)
    if stored is not None and stored.window == window:
        return stored, "stored"
    if rescore is None:
        return stored, "other_window"
    ref = ChampionRef(name=name, version=champion, model_uri=f"models:/{name}/{champion}", stored=stored)
    metrics = rescore(ref, window)
    return Scorecard(window=window, metrics=dict(metrics)), "rescored"


# ---------------------------------------------------------------------------------------------- rollback, show


def rollback(model_name: str, *, http_max_retries: int = 1, http_timeout_seconds: int = 10) -> RollbackOutcome:
    """Point ``champion`` back at the version the current champion replaced (one alias write).

    Follows the current champion's ``alphaforge.previous_champion`` tag, so repeated rollbacks walk back
    through the promotion history. Deliberately takes no promotion lock (a rollback is the emergency exit
    and must not wait); a promotion running meanwhile notices the moved alias and refuses to switch.
    """
    started = time.perf_counter()
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        current = tracking.get_model_aliases(model_name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"rollback: {model_name} has no champion (registered: "
                                f"{tracking.get_registered_model_tags(model_name) is not None}); nothing to roll back")
        target = tracking.get_model_version(model_name, current).tags.get(PREVIOUS_CHAMPION_TAG, NO_VERSION)
        if target == NO_VERSION:
            raise RegistryError(f"rollback: champion version {current} of {model_name} was the first champion "
                                "(it replaced none); nothing to roll back to")
        tracking.set_model_alias(model_name, CHAMPION, target)
        seconds = time.perf_counter() - started
        stamp = _now()
        tracking.set_model_version_tags(model_name, current, {ROLLED_BACK_AT_TAG: stamp})
        tracking.set_registered_model_tags(model_name, {
            LAST_EVENT_TAG: json.dumps({"event": "rollback", "from": current, "to": target, "at": stamp})})
    log.info("rollback: %s champion version %s -> %s in %.3f s", model_name, current, target, seconds)
    return RollbackOutcome(model_name=model_name, from_version=current, to_version=target, seconds=seconds)


CROWNED_BY_HAND_TAG = f"{TAG}crowned_by_hand"


def crown(model_name: str, version: str, reason: str, *, http_max_retries: int = 1,
          http_timeout_seconds: int = 10) -> RollbackOutcome:
    """Make ``version`` the champion by hand, past the gate, and say so in the registry.

    For a model the gate refused (on the bundled data buy-and-hold wins, so a fresh pipeline has no champion)
    that someone still wants served, or to pin a version. ``reason`` is required and kept on the version
    (``alphaforge.crowned_by_hand``) and in the model's last event; the replaced champion is recorded as
    ``alphaforge.previous_champion``, so :func:`rollback` undoes it. The tags are written before the alias
    moves: a service that sees the new champion can already fall back. No lock, like :func:`rollback`.
    """
    reason = reason.strip()
    if not reason:
        raise RegistryError("crown: give a --reason; a champion crowned past the gate must say why")
    started = time.perf_counter()
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        try:
            tracking.get_model_version(model_name, version)
        except Exception as err:
            raise RegistryError(f"crown: {model_name} has no version {version!r} ({type(err).__name__}); see "
                                "`alphaforge registry show`") from err
        before = tracking.get_model_aliases(model_name).get(CHAMPION)
        if before == str(version):
            raise RegistryError(f"crown: version {version} of {model_name} is already the champion")
        stamp = _now()
        tracking.set_model_version_tags(model_name, version, {
            PREVIOUS_CHAMPION_TAG: before or NO_VERSION, CROWNED_BY_HAND_TAG: json.dumps({"reason": reason,
                                                                                          "at": stamp})})
        tracking.set_model_alias(model_name, CHAMPION, version)
        tracking.set_registered_model_tags(model_name, {LAST_EVENT_TAG: json.dumps(
            {"event": "crown", "from": before, "to": str(version), "at": stamp, "reason": reason})})
    seconds = time.perf_counter() - started
    log.warning("crown: %s champion %s -> %s by hand, past the gate (%s)", model_name, before or "none", version,
                reason)
    return RollbackOutcome(model_name=model_name, from_version=before or NO_VERSION, to_version=str(version),
                           seconds=seconds)


@dataclass(frozen=True)
class VersionRow:
    """One line of :func:`show`."""

    version: str
    aliases: tuple[str, ...]
    created: str
    window: str
    metrics: dict[str, float | None]
    decision: str
    compared_with: str
    previous_champion: str
    rolled_back_at: str


@dataclass(frozen=True)
class RegistryView:
    """A registered model's versions (newest first) and aliases, with the metrics promotion recorded."""

    model_name: str
    aliases: dict[str, str]
    versions: list[VersionRow]

    def table(self, metrics: tuple[str, ...] = ("sharpe", "rank_ic_mean", "ic_mean", "directional_accuracy")) -> str:
        """A plain-text table for ``alphaforge registry show``."""
        if not self.versions:
            return f"{self.model_name}: no registered versions"
        header = ["version", "aliases", "created (UTC)", "window", *metrics, "decision", "vs", "replaced",
                  "rolled back"]
        rows = [[row.version, ",".join(row.aliases) or "-", row.created, row.window,
                 *[_fmt(row.metrics.get(m)) if row.metrics else "-" for m in metrics],
                 row.decision, row.compared_with, row.previous_champion, row.rolled_back_at]
                for row in self.versions]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                 for line in [header, *rows]]
        aliases = ", ".join(f"{alias} -> v{version}" for alias, version in sorted(self.aliases.items())) or "none"
        return "\n".join([f"{self.model_name}  (aliases: {aliases})", *lines])


def show(model_name: str, *, http_max_retries: int = 1, http_timeout_seconds: int = 10) -> RegistryView:
    """Versions, aliases and recorded metrics of ``model_name`` (newest version first)."""
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        aliases = tracking.get_model_aliases(model_name)
        versions = tracking.list_model_versions(model_name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for record in reversed(versions):
        card = _scorecard_from_tags(record.tags)
        rows.append(VersionRow(
            version=record.version, aliases=tuple(sorted(by_version.get(record.version, []))),
            created=datetime.fromtimestamp(record.created_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            window=str(card.window) if card else "-", metrics=card.metrics if card else {},
            decision=record.tags.get(DECISION_TAG, "-"), compared_with=record.tags.get(COMPARED_WITH_TAG, "-"),
            previous_champion=record.tags.get(PREVIOUS_CHAMPION_TAG, "-"),
            rolled_back_at=record.tags.get(ROLLED_BACK_AT_TAG, "-"),
        ))
    return RegistryView(model_name=model_name, aliases=aliases, versions=rows)
