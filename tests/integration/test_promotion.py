"""Promotion through the MLflow Model Registry: who becomes champion, why, and that the champion is never torn.

The scores come from a real evaluation (``evaluate_oof``) of seeded synthetic data: ``planted`` is the planted
expected return (a genuinely good signal), ``noisy`` the same drowned in noise, ``flipped`` its opposite.
Registry tests run against a real ``mlflow server`` on PostgreSQL (the ``mlflow_server`` plugin fixture);
the crash test kills a throwaway server mid-promotion and reads its store directly afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import pytest

from alphaforge import tracking
from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.evaluate import EvaluationParams, evaluate_oof, market_for
from alphaforge.features import compute_labels
from alphaforge.promotion import (
    CHALLENGER,
    CHAMPION,
    ChampionRef,
    GateEvidence,
    OOSWindow,
    PromotionError,
    PromotionParams,
    RegistryError,
    Scorecard,
    decide,
    gate_evidence,
    promote,
    rollback,
    show,
    window_scorecards,
)

N_FOLDS = 3


class ConstantModel(mlflow.pyfunc.PythonModel):
    """Predicts one number for every row, so a loaded champion tells which version it is."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow's signature)
        return np.full(len(model_input), self.value)


@dataclass(frozen=True)
class Scores:
    """Scorecards per signal and fold (the champion comparison) and the gate's evidence per signal."""

    cards: dict[tuple[str, int], Scorecard]
    evidence: dict[str, GateEvidence]

    def card(self, signal: str, fold: int = N_FOLDS - 1) -> Scorecard:
        return self.cards[(signal, fold)]


@pytest.fixture(scope="module")
def scores() -> Scores:
    """Evaluate three signals on seeded synthetic bars split into three time folds."""
    bars, truth = make_synthetic(SyntheticParams(n_symbols=20, n_bars=600, seed=3, signal_strength=0.1))
    labels = compute_labels(bars, 5)
    oof = bars[["timestamp", "symbol"]].copy()
    oof["forward_return"] = labels["forward_return"]
    planted = truth["expected_return_1"].to_numpy()
    oof["planted"] = planted
    oof["noisy"] = planted + np.random.default_rng(0).normal(0.0, 3 * np.nanstd(planted), len(planted))
    oof["flipped"] = -planted
    oof = oof.dropna().reset_index(drop=True)
    rank = oof["timestamp"].rank(method="dense")
    oof["fold"] = np.minimum((N_FOLDS * (rank - 1) // rank.max()).astype(int), N_FOLDS - 1)
    params = EvaluationParams()
    evaluation = evaluate_oof(oof, params, models={s: s for s in ("planted", "noisy", "flipped")},
                              market=market_for(bars, params), horizon=5)
    cards = {(signal, fold): window_scorecards(evaluation, oof, signal, fold=fold)
             for fold in range(N_FOLDS) for signal in evaluation.models}
    evidence = {signal: gate_evidence(evaluation, signal, PromotionParams()) for signal in evaluation.models}
    result = Scores(cards=cards, evidence=evidence)
    last = result.card("planted").metrics["sharpe"], result.card("noisy").metrics["sharpe"]
    assert last[0] > last[1], f"seeded data no longer orders planted > noisy on sharpe: {last}"
    return result


def _gates(scores: Scores) -> dict:
    """Whole-span evidence that passes the gate, so the registry tests turn on the champion comparison alone."""
    return {"evidence": scores.evidence["planted"], "validation_passed": True, "drift_rules": []}


# ---------------------------------------------------------------------------------------------- pure rules


def test_window_scorecards_cover_the_last_fold_and_decide_reads_them(scores: Scores) -> None:
    card = scores.card("planted")
    earlier = scores.card("planted", fold=N_FOLDS - 2)
    assert pd.Timestamp(card.window.start) > pd.Timestamp(earlier.window.end)
    params = PromotionParams()
    good = decide(card, None, scores.evidence["planted"], validation_passed=True, params=params)
    assert good.promote and all(line.startswith(("PASS", "SKIP")) for line in good.reasons), good.reasons
    bad = decide(scores.card("flipped"), None, scores.evidence["flipped"], validation_passed=True, params=params)
    assert not bad.promote
    assert any(line.startswith("FAIL") and "baseline equal_weight" in line for line in bad.reasons), bad.reasons


def test_each_rule_can_refuse_and_says_why(scores: Scores) -> None:
    planted, noisy = scores.card("planted"), scores.card("noisy")
    gap = planted.metrics["sharpe"] - noisy.metrics["sharpe"]

    def verdict(**changes: object) -> tuple[bool, list[str]]:
        inputs = {"champion": noisy, "validation_passed": True, "drift_rules": [], "params": PromotionParams()}
        inputs.update(changes)
        decision = decide(planted, inputs.pop("champion"), scores.evidence["planted"], **inputs)
        return decision.promote, [line for line in decision.reasons if line.startswith("FAIL")]

    assert verdict() == (True, [])
    promoted, failed = verdict(params=PromotionParams(margin=gap + 0.01))
    assert not promoted and f"+ margin {gap + 0.01:g}" in failed[0]
    assert verdict(validation_passed=False) == (False, ["FAIL data validation failed"])
    promoted, failed = verdict(drift_rules=["performance"])
    assert not promoted and failed[0].startswith("FAIL drift alert 'performance' blocks")
    assert verdict(drift_rules=["performance"], params=PromotionParams(require_no_drift_alert=False))[0]
    assert verdict(drift_rules=["data_drift"])[0]
    promoted, failed = verdict(champion=scores.card("noisy", fold=0))
    assert not promoted and "different windows" in failed[0]
    promoted, failed = verdict(params=PromotionParams(min_ic_tstat=1e6))
    assert not promoted and failed[0].startswith("FAIL rank IC")
    promoted, failed = verdict(params=PromotionParams(metric="rank_ic_mean"))
    assert promoted, failed


# ---------------------------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def logged_models(mlflow_server, tmp_path_factory) -> Iterator[dict[float, tracking.LoggedModelRef]]:
    """Three constant pyfunc models logged to the PostgreSQL-backed server, by their constant."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    patch.setenv("ALPHAFORGE_HOME", str(tmp_path_factory.mktemp("alphaforge_home")))
    try:
        yield {value: tracking.log_python_model("promotion-tests", ConstantModel(value), pip_requirements=["mlflow"],
                                                run_name=f"constant {value}") for value in (1.0, 2.0, 3.0)}
    finally:
        patch.undo()


@pytest.fixture()
def registry(mlflow_server, logged_models, monkeypatch) -> PromotionParams:
    """Promotion params on a registered model name of this test's own, on the PostgreSQL-backed server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return PromotionParams(model_name=f"signal-{uuid.uuid4().hex[:8]}")


def _serving_value(uri: str, name: str) -> float:
    mlflow.set_tracking_uri(uri)
    return float(mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(pd.DataFrame({"x": [0.0]}))[0])


def test_worse_challenger_is_refused_and_champion_untouched(registry, logged_models, scores, mlflow_server,
                                                            tmp_path) -> None:
    first = promote(logged_models[1.0].model_uri, scores.card("noisy"), **_gates(scores), params=registry)
    assert (first.status, first.champion_after) == ("promoted", first.version)

    decision_file = tmp_path / "promotion.json"
    worse = promote(f"runs:/{logged_models[2.0].run_id}/model", scores.card("flipped"), **_gates(scores),
                    params=registry, decision_path=decision_file)
    assert worse.status == "refused"
    assert tracking.get_model_aliases(registry.model_name) == {CHAMPION: first.version, CHALLENGER: worse.version}
    assert _serving_value(mlflow_server.uri, registry.model_name) == 1.0
    recorded = json.loads(decision_file.read_text())
    assert recorded["status"] == "refused"
    assert any(line.startswith("FAIL candidate sharpe") and f"champion v{first.version}" in line
               for line in recorded["decision"]["reasons"])
    version_tags = tracking.get_model_version(registry.model_name, worse.version).tags
    assert version_tags["alphaforge.decision"] == "refuse"
    assert json.loads(version_tags["alphaforge.reasons"]) == list(worse.decision.reasons)
    run_tags = mlflow.MlflowClient(mlflow_server.uri).get_run(logged_models[2.0].run_id).data.tags
    assert run_tags["alphaforge.promotion.decision"] == "refuse"
    assert run_tags["alphaforge.promotion.version"] == worse.version


def test_better_challenger_is_promoted_and_rollback_restores_the_previous_champion(
        registry, logged_models, scores, mlflow_server) -> None:
    first = promote(logged_models[1.0].model_uri, scores.card("noisy"), **_gates(scores), params=registry)
    better = promote(logged_models[3.0].model_uri, scores.card("planted"), **_gates(scores), params=registry)
    assert (better.status, better.champion_before, better.champion_after) == ("promoted", first.version,
                                                                              better.version)
    assert _serving_value(mlflow_server.uri, registry.model_name) == 3.0

    started = time.perf_counter()
    undone = rollback(registry.model_name)
    elapsed = time.perf_counter() - started
    assert (undone.from_version, undone.to_version) == (better.version, first.version)
    assert elapsed < 1.0, f"rollback took {elapsed:.2f} s"
    assert tracking.get_model_aliases(registry.model_name)[CHAMPION] == first.version
    assert _serving_value(mlflow_server.uri, registry.model_name) == 1.0
    with pytest.raises(RegistryError, match="first champion"):
        rollback(registry.model_name)

    view = show(registry.model_name)
    rows = {row.version: row for row in view.versions}
    assert rows[first.version].aliases == (CHAMPION,)
    assert rows[better.version].aliases == (CHALLENGER,) and rows[better.version].rolled_back_at != "-"
    assert rows[better.version].metrics["sharpe"] == pytest.approx(scores.card("planted").metrics["sharpe"])
    assert f"{CHAMPION} -> v{first.version}" in view.table()


def test_a_version_crowned_by_hand_says_why_and_rolls_back(registry, logged_models, scores) -> None:
    from alphaforge.promotion import CROWNED_BY_HAND_TAG, LAST_EVENT_TAG, crown

    worse = promote(logged_models[1.0].model_uri, scores.card("noisy"), **_gates(scores), params=registry)
    refused = promote(logged_models[3.0].model_uri, scores.card("noisy"), **_gates(scores), params=registry)
    assert refused.status == "refused" and tracking.get_model_aliases(registry.model_name)[CHAMPION] == worse.version
    with pytest.raises(RegistryError, match="--reason"):
        crown(registry.model_name, refused.version, "  ")
    with pytest.raises(RegistryError, match="no version '999'"):
        crown(registry.model_name, "999", "pin it")
    with pytest.raises(RegistryError, match="already the champion"):
        crown(registry.model_name, worse.version, "pin it")
    assert tracking.get_model_aliases(registry.model_name)[CHAMPION] == worse.version  # refusals changed nothing

    outcome = crown(registry.model_name, refused.version, "serve the newer one during the audit")
    assert (outcome.from_version, outcome.to_version) == (worse.version, refused.version)
    assert tracking.get_model_aliases(registry.model_name)[CHAMPION] == refused.version
    tags = tracking.get_model_version(registry.model_name, refused.version).tags
    assert json.loads(tags[CROWNED_BY_HAND_TAG])["reason"] == "serve the newer one during the audit"
    event = json.loads(tracking.get_registered_model_tags(registry.model_name)[LAST_EVENT_TAG])
    assert event["event"] == "crown" and event["to"] == refused.version
    assert rollback(registry.model_name).to_version == worse.version  # undone like a promotion


def test_champion_scored_on_an_older_window_is_rescored_on_the_latest(registry, logged_models, scores) -> None:
    older = scores.card("noisy", fold=N_FOLDS - 2)
    first = promote(logged_models[1.0].model_uri, older, **_gates(scores), params=registry)
    unscored = promote(logged_models[3.0].model_uri, scores.card("planted"), **_gates(scores), params=registry)
    assert unscored.status == "refused" and unscored.champion_scores == "other_window"

    asked: list[tuple[ChampionRef, OOSWindow]] = []

    def rescore(champion: ChampionRef, window: OOSWindow) -> dict[str, float | None]:
        asked.append((champion, window))
        return scores.card("noisy").metrics

    latest = scores.card("planted")
    rescored = promote(logged_models[3.0].model_uri, latest, **_gates(scores), params=registry,
                       rescore_champion=rescore)
    assert [(ref.version, ref.model_uri, window) for ref, window in asked] == [
        (first.version, f"models:/{registry.model_name}/{first.version}", latest.window)]
    assert rescored.status == "promoted" and rescored.champion_scores == "rescored"
    assert rescored.decision.champion_value == pytest.approx(scores.card("noisy").metrics["sharpe"])


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from alphaforge.promotion import PromotionParams, Scorecard, promote
    from alphaforge.promotion import GateEvidence
    uri, card, evidence, name, go = json.loads(sys.argv[1])
    while not Path(go).exists():
        time.sleep(0.01)
    outcome = promote(uri, Scorecard.model_validate(card), GateEvidence.model_validate(evidence),
                      validation_passed=True, params=PromotionParams(model_name=name))
    print(json.dumps(outcome.model_dump()))
""")


def test_two_racing_promotions_leave_one_consistent_champion(registry, logged_models, scores, mlflow_server,
                                                             tmp_path, workdir) -> None:
    first = promote(logged_models[1.0].model_uri, scores.card("noisy"), **_gates(scores), params=registry)
    # two candidates that both beat the champion; the better one must end up serving whatever the order
    between = scores.card("noisy").model_copy(
        update={"metrics": {"sharpe": (scores.card("noisy").metrics["sharpe"] +
                                       scores.card("planted").metrics["sharpe"]) / 2}})
    go = tmp_path / "go"
    racers = []
    for value, card in ((3.0, scores.card("planted")), (2.0, between)):
        argument = json.dumps([logged_models[value].model_uri, card.model_dump(),
                               scores.evidence["planted"].model_dump(mode="json"), registry.model_name, str(go)])
        racers.append(subprocess.Popen([sys.executable, "-c", RACER, argument], cwd=workdir, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}))
    time.sleep(4.0)  # both are imported and polling for the go file by now (a late one only races less)
    go.touch()
    outcomes = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=120)
        assert racer.returncode == 0, stderr[-3000:]
        outcomes.append(json.loads(stdout.strip().splitlines()[-1]))

    best = outcomes[0]["version"]
    aliases = tracking.get_model_aliases(registry.model_name)
    assert aliases[CHAMPION] == best
    # the history is one chain: each promoted version replaced exactly the champion it was compared with
    chain, version = [], aliases[CHAMPION]
    while version != "none":
        tags = tracking.get_model_version(registry.model_name, version).tags
        chain.append(version)
        version = tags.get("alphaforge.previous_champion", "none")
        if version != "none":
            assert tags["alphaforge.compared_with"] == version
    promoted = [o["version"] for o in outcomes if o["status"] == "promoted"]
    assert sorted(chain) == sorted([first.version, *promoted])
    assert tracking.get_registered_model_tags(f"{registry.model_name}.promotion-lock") is None


# ---------------------------------------------------------------------------------------------- failures


def test_tracking_server_stopped_mid_promotion_leaves_the_champion(disposable_mlflow_server, scores, monkeypatch,
                                                                   tmp_path) -> None:
    server = disposable_mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("ALPHAFORGE_HOME", str(tmp_path / "home"))
    params = PromotionParams(model_name="signal")
    old = tracking.log_python_model("crash", ConstantModel(1.0), pip_requirements=["mlflow"])
    new = tracking.log_python_model("crash", ConstantModel(3.0), pip_requirements=["mlflow"])
    first = promote(old.model_uri, scores.card("noisy", fold=N_FOLDS - 2), **_gates(scores), params=params)
    stopped_at: list[float] = []

    def stop_server_then_score(champion: ChampionRef, window: OOSWindow) -> dict[str, float | None]:
        server.stop()  # the tracking server dies while the promotion is under way
        stopped_at.append(time.monotonic())
        return scores.card("noisy").metrics  # a score the candidate beats: it would be promoted

    decision_file = tmp_path / "promotion.json"
    with pytest.raises(PromotionError, match="Champion unchanged: still version 1") as failure:
        promote(new.model_uri, scores.card("planted"), **_gates(scores), params=params,
                rescore_champion=stop_server_then_score, decision_path=decision_file)
    assert time.monotonic() - stopped_at[0] < 15.0, "a dead server must fail the stage in seconds"
    assert "recording the decision" in str(failure.value)
    assert json.loads(decision_file.read_text())["status"] == "failed"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.backend_uri)  # read the dead server's store directly
    assert first.version == "1"
    assert tracking.get_model_aliases(params.model_name) == {CHAMPION: "1", CHALLENGER: "2"}


def test_unreachable_tracking_server_fails_fast_without_touching_anything(scores, monkeypatch, tmp_path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(PromotionError, match="Champion unchanged"):
        promote("models:/m-0123456789abcdef", scores.card("planted"), **_gates(scores), params=PromotionParams())
    assert time.monotonic() - started < 10.0


def test_default_local_sqlite_store_promotes_and_rolls_back(scores, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ALPHAFORGE_HOME", str(tmp_path / "home"))
    assert tracking.tracking_uri().startswith("sqlite:///")
    params = PromotionParams()
    old = tracking.log_python_model("local", ConstantModel(1.0), pip_requirements=["mlflow"])
    first = promote(old.model_uri, scores.card("noisy"), **_gates(scores), params=params)
    second = promote(old.model_uri, scores.card("planted"), **_gates(scores), params=params)
    assert (first.status, second.status, second.champion_before) == ("promoted", "promoted", first.version)
    assert rollback(params.model_name).to_version == first.version
    assert [row.aliases for row in show(params.model_name).versions] == [(CHALLENGER,), (CHAMPION,)]
