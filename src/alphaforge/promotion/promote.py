"""Promote a candidate under the lock: register, compare with the champion, move the aliases, record
each stage reached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from alphaforge import tracking
from alphaforge.errors import PromotionConflict, PromotionError
from alphaforge.io import write_json_atomic
from alphaforge.promotion.gate import decide
from alphaforge.promotion.lock import _acquire_lock
from alphaforge.promotion.params import (
    CHALLENGER,
    CHAMPION,
    CHAMPION_SCORES_TAG,
    COMPARED_WITH_TAG,
    DECISION_TAG,
    LAST_EVENT_TAG,
    MAX_TAG_CHARS,
    MODEL_URI_TAG,
    NO_VERSION,
    PREVIOUS_CHAMPION_TAG,
    PROMOTED_AT_TAG,
    REASONS_TAG,
    TAG,
    ChampionRef,
    ChampionRescorer,
    GateEvidence,
    OOSWindow,
    PromotionOutcome,
    PromotionParams,
    Scorecard,
    _now,
    _scorecard_from_tags,
    _scorecard_tags,
    _version_label,
)

log = logging.getLogger("alphaforge.promotion")


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
