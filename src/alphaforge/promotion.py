"""Promotion: the challenger becomes champion only when it earns it, and the switch is one atomic step.

The MLflow Model Registry holds every candidate as a version of one registered model
(``PromotionParams.model_name``). Aliases, not stages, say what each version is for:
``champion`` is what serves (``models:/NAME@champion``), ``challenger`` the newest candidate.

Rules (:func:`decide`, a pure function; each rule leaves one reason line starting PASS, FAIL, SKIP or INFO):

* the candidate beats the champion on ``metric`` by more than ``margin``, both scored on the *same* latest
  out-of-sample window (:class:`OOSWindow`). The champion's stored scores are used when they were computed on
  that window; otherwise the caller's ``rescore_champion`` scores it there, and without one the comparison
  fails (never a comparison across windows). No champion yet: the rule passes.
* it beats every naive baseline on ``metric`` (a baseline whose metric is undefined, e.g. the IC of
  buy-and-hold, has no dispersion to beat and is skipped, with a line saying so);
* the data passed validation, and the drift report raised no blocking alert.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alphaforge import tracking
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
    "decide",
    "force_unlock",
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

Metric = Literal["sharpe", "rank_ic_mean", "ic_mean", "directional_accuracy"]


class PromotionParams(BaseModel):
    """The promotion rules (``promote:`` in params.yaml) and how patient the stage is with the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("alphaforge-signal", min_length=1, description="registered model in the MLflow registry")
    metric: Metric = Field("sharpe", description="compared on the latest out-of-sample window; higher is better")
    margin: float = Field(0.0, ge=0.0, description="the challenger must beat the champion by more than this")
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


class Decision(BaseModel):
    """What :func:`decide` concluded and why (one reason line per rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promote: bool
    reasons: tuple[str, ...]
    metric: str
    margin: float
    window: OOSWindow
    candidate_value: float | None
    champion_value: float | None


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


class PromotionError(RuntimeError):
    """The promote stage failed; the message says whether the champion changed."""


class PromotionConflict(PromotionError):
    """The champion moved while this promotion ran (a rollback, or a promoter that broke the lock)."""


class RegistryError(RuntimeError):
    """A registry command (rollback, show) cannot do what was asked; the message says why."""


# ---------------------------------------------------------------------------------------------- decide


def decide(
    candidate: Scorecard,
    champion: Scorecard | None,
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    validation_passed: bool,
    drift_alert: bool,
    params: PromotionParams,
    champion_label: str = "champion",
    drift_detail: str = "",
) -> Decision:
    """Apply the promotion rules; pure (no I/O), so every outcome is testable and explainable.

    ``baselines`` maps each naive baseline to its metrics on the candidate's window (the same evaluation
    that scored the candidate). ``champion`` is None when nothing serves yet; when given it must be scored
    on ``candidate.window``, or the champion rule fails (scores on different windows do not compare).
    """
    metric = params.metric
    reasons: list[str] = []
    failed = False

    def rule(passed: bool, line: str, *, required: bool = True) -> None:
        nonlocal failed
        if required:
            reasons.append(f"{'PASS' if passed else 'FAIL'} {line}")
            failed = failed or not passed
        else:
            reasons.append(f"INFO (not required) {'passes' if passed else 'fails'}: {line}")

    ours = candidate.value(metric)
    rule(ours is not None, f"candidate {metric} on window {candidate.window} is {_fmt(ours)} (must be defined)")

    theirs: float | None = None
    if champion is None:
        rule(True, f"no {champion_label} serves yet: nothing to beat on {metric}")
    elif champion.window != candidate.window:
        rule(False, f"{champion_label} was scored on window {champion.window}, the candidate on {candidate.window}: "
                    "scores on different windows do not compare (rescore the champion on the latest window)")
    else:
        theirs = champion.value(metric)
        if theirs is None:
            rule(ours is not None, f"{champion_label} {metric} is undefined on window {candidate.window}; "
                                   f"candidate {_fmt(ours)} is defined")
        else:
            beats = ours is not None and ours > theirs + params.margin
            rule(beats, f"candidate {metric} {_fmt(ours)} {'>' if beats else '<='} {champion_label} {_fmt(theirs)} "
                        f"+ margin {params.margin:g} on window {candidate.window}")

    if not baselines:
        rule(False, "no baseline scores supplied: cannot show the candidate beats the naive baselines",
             required=params.require_beat_baselines)
    for name, scores in sorted(baselines.items()):
        value = _finite(scores.get(metric))
        if value is None:
            reasons.append(f"SKIP baseline {name}: {metric} undefined on this window (no dispersion to beat)")
            continue
        beats = ours is not None and ours > value
        rule(beats, f"candidate {metric} {_fmt(ours)} {'>' if beats else '<='} baseline {name} {_fmt(value)}",
             required=params.require_beat_baselines)

    rule(validation_passed, f"data validation {'passed' if validation_passed else 'failed'}",
         required=params.require_validation)
    detail = f" ({drift_detail})" if drift_detail else ""
    rule(not drift_alert, f"drift report {'raised a blocking alert' if drift_alert else 'raised no blocking alert'}"
                          f"{detail}", required=params.require_no_drift_alert)

    return Decision(promote=not failed, reasons=tuple(reasons), metric=metric, margin=params.margin,
                    window=candidate.window, candidate_value=ours, champion_value=theirs)


def window_scorecards(
    evaluation: Evaluation, oof: pd.DataFrame, model: str, *, fold: int | None = None
) -> tuple[Scorecard, dict[str, dict[str, float | None]]]:
    """One walk-forward fold's window from an evaluation (default: the last fold, the latest out-of-sample
    window): the model's scorecard and every baseline's metrics there, ready for :func:`promote`.

    ``oof`` is the frame that was evaluated (its ``fold`` and ``timestamp`` give the window's bounds);
    ``model`` is one of ``evaluation.models``.
    """
    from alphaforge.evaluate import BASELINES, METRICS
    from alphaforge.schema import DataError

    if model not in evaluation.models:
        raise DataError(f"window_scorecards: model {model!r} not in the evaluation's models {list(evaluation.models)}")
    folds = sorted(int(f) for f in evaluation.per_fold["fold"].unique())
    chosen = folds[-1] if fold is None else fold
    if chosen not in folds:
        raise DataError(f"window_scorecards: fold {chosen} not in the evaluation's folds {folds}")
    stamps = oof.loc[oof["fold"] == chosen, "timestamp"]
    if stamps.empty:
        raise DataError(f"window_scorecards: the OOF frame has no rows in fold {chosen}")
    window = OOSWindow(start=stamps.min().isoformat(), end=stamps.max().isoformat())
    rows = evaluation.per_fold[evaluation.per_fold["fold"] == chosen].set_index("signal")
    card = Scorecard(window=window, metrics={m: rows.at[model, m] for m in METRICS})
    baselines = {name: Scorecard(window=window, metrics={m: rows.at[name, m] for m in METRICS}).metrics
                 for name in BASELINES}
    return card, baselines


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
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    validation_passed: bool,
    drift_alert: bool,
    params: PromotionParams,
    run_id: str | None = None,
    rescore_champion: ChampionRescorer | None = None,
    decision_path: str | Path | None = None,
    drift_detail: str = "",
) -> PromotionOutcome:
    """Register ``model_uri`` as the challenger and make it champion if it passes :func:`decide`.

    ``candidate`` and ``baselines`` are scores on the latest out-of-sample window (see
    :func:`window_scorecards`). ``rescore_champion(champion, window)`` returns the serving champion's
    metrics on ``window``; it is called only when the champion's stored scores are from another window.
    ``run_id`` is the run that produced the candidate (its tags get the decision; default: the version's run).
    ``decision_path`` gets the decision as JSON, also when the stage fails.

    Returns the outcome (promoted or refused: a refusal is a normal result, not an error). Raises
    :class:`PromotionError` when anything fails; before the champion switch its message says
    "champion unchanged" and the champion is exactly as it was.
    """
    started = _now()
    uri = tracking.tracking_uri()
    baselines = {str(name): {str(k): _finite(v) for k, v in dict(scores).items()} for name, scores in baselines.items()}
    record: dict[str, Any] = {"model_name": params.model_name, "candidate_uri": model_uri, "tracking_uri": uri,
                              "started_at": started, "candidate": candidate.model_dump(), "baselines": baselines,
                              "validation_passed": validation_passed, "drift_alert": drift_alert,
                              "params": params.model_dump()}
    path = Path(decision_path) if decision_path is not None else None
    try:
        with tracking.fail_fast_http(params.http_max_retries, params.http_timeout_seconds):
            outcome = _promote_locked(model_uri, candidate, baselines, validation_passed=validation_passed,
                                      drift_alert=drift_alert, drift_detail=drift_detail, params=params,
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
    baselines: Mapping[str, Mapping[str, Any]],
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
        outcome = _promote_under_lock(model_uri, candidate, baselines, params=params, record=record,
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
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    validation_passed: bool,
    drift_alert: bool,
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
        decision = decide(candidate, champion_card, baselines, validation_passed=validation_passed,
                          drift_alert=drift_alert, params=params, drift_detail=drift_detail,
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
