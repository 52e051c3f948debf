"""The promotion gate on synthetic markets with a known truth: only a real, tradeable edge gets through.

Each test evaluates signals out of sample (traded at the next bar's open, with tradability and costs), builds
the gate's evidence over every fold and asks :func:`decide`: the verdict and the reason lines are what a user
reads in reports/promotion/decision.json.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from gate_markets import bounce_market, evaluate_market, tradeable_market

from alphaforge.evaluate import EvaluationParams, evaluate_oof, market_for
from alphaforge.promotion import Decision, PromotionParams, decide, gate_evidence, window_scorecards


def verdict(evaluation, oof, name: str, params: PromotionParams | None = None, n_trials: int = 8) -> Decision:
    params = params or PromotionParams()
    evidence = gate_evidence(evaluation, name, params, n_trials=n_trials)
    card = window_scorecards(evaluation, oof, name)
    return decide(card, None, evidence, validation_passed=True, params=params)


def failed(decision: Decision) -> list[str]:
    return [rule.rule for rule in decision.rules if rule.verdict == "FAIL"]


@pytest.fixture(scope="module")
def tradeable() -> pd.DataFrame:
    return tradeable_market(strength=0.0007)


@pytest.fixture(scope="module")
def bounce() -> pd.DataFrame:
    return bounce_market()


def test_a_tradeable_planted_signal_is_promoted(tradeable: pd.DataFrame) -> None:
    evaluation, oof = evaluate_market(tradeable, {"planted": tradeable["signal"]})
    decision = verdict(evaluation, oof, "planted", n_trials=16)
    assert decision.promote, decision.reasons
    sharpe = evaluation.overall.at[("planted", "long_short"), "sharpe"]
    assert 1.0 < sharpe < 4.0, sharpe  # a plausible edge, net of costs
    assert {rule.rule for rule in decision.rules} >= {"ic_tstat", "beats_equal_weight", "beats_reversal_1",
                                                      "beats_momentum_12_1", "plausible_sharpe", "pbo"}
    assert all(rule.figure is not None for rule in decision.rules if rule.rule.startswith("beats_"))


def test_shuffled_labels_are_not_promoted(tradeable: pd.DataFrame) -> None:
    shuffled = np.random.default_rng(5).permutation(tradeable["signal"].to_numpy())
    evaluation, oof = evaluate_market(tradeable, {"shuffled": shuffled})
    decision = verdict(evaluation, oof, "shuffled")
    assert not decision.promote
    assert "ic_tstat" in failed(decision) and "beats_equal_weight" in failed(decision)


def test_too_good_to_be_true_is_blocked_with_a_diagnosis() -> None:
    bars = tradeable_market(strength=0.003)
    evaluation, oof = evaluate_market(bars, {"planted": bars["signal"]})
    decision = verdict(evaluation, oof, "planted")
    assert not decision.promote
    assert failed(decision) == ["plausible_sharpe"]
    assert decision.diagnosis.startswith("too good to be true: net Sharpe")


def test_pnl_from_the_least_liquid_names_is_diagnosed() -> None:
    bars = tradeable_market(strength=0.0012, seed=3)
    codes = bars["symbol"].str[1:].astype(int)
    illiquid = codes < 8  # the least liquid fifth holds the whole edge
    bars.loc[illiquid, "volume"] = bars.loc[illiquid, "volume"] / 1000
    signal = bars["signal"].where(illiquid, 0.1 * np.random.default_rng(2).standard_normal(len(bars)))
    params = EvaluationParams(min_dollar_volume=0.0, max_participation=1.0, impact_coefficient=0.0, capital=1e4)
    evaluation, oof = evaluate_market(bars, {"thin": signal}, params=params)
    decision = verdict(evaluation, oof, "thin")
    assert not decision.promote
    assert "plausible_illiquid_share" in failed(decision), decision.reasons
    assert "of P&L from the least liquid quintile" in decision.diagnosis


def test_a_bounce_only_signal_shows_ic_but_is_not_promoted(bounce: pd.DataFrame) -> None:
    close_to_close = evaluate_market(bounce, {"bounce": bounce["signal"]}, horizon=1,
                                     params=EvaluationParams(execution="next_close"))[0]
    evaluation, oof = evaluate_market(bounce, {"bounce": bounce["signal"]}, horizon=1)
    assert evaluation.signals.at["bounce", "rank_ic_mean"] > 0.01  # the IC is there: stale opens echo the bounce
    decision = verdict(evaluation, oof, "bounce")
    assert not decision.promote
    assert {"beats_equal_weight", "beats_reversal_1"} <= set(failed(decision)), decision.reasons
    # it only matches a baseline (it is the same bar's reversal), so it cannot be shown to beat it
    assert "no test possible" in next(r.detail for r in decision.rules if r.rule == "beats_reversal_1")
    for result in (evaluation, close_to_close):
        assert result.overall.at[("bounce", "long_short"), "sharpe"] < 0


def test_look_ahead_canary_the_same_bars_reversal_earns_nothing_after_execution(bounce: pd.DataFrame) -> None:
    """Traded at the very close it was computed from, the same bar's return reversal looks like a fortune; traded
    at the next bar's open it earns nothing, gross of any cost."""
    params = EvaluationParams(cost_bps=0.0, fallback_spread_bps=0.0, impact_coefficient=0.0, min_dollar_volume=0.0)
    evaluation, oof = evaluate_market(bounce, {"canary": bounce["signal"]}, horizon=1, params=params)
    market = market_for(bounce.drop(columns=["signal"]), params)
    same_close = market.copy()
    ordered = bounce.sort_values(["symbol", "timestamp"])
    next_close = ordered.groupby("symbol")["close"].shift(-1) / ordered["close"] - 1
    same_close["exec_return"] = same_close[["timestamp", "symbol"]].merge(
        ordered[["timestamp", "symbol"]].assign(r=next_close.to_numpy()), on=["timestamp", "symbol"])["r"].to_numpy()
    same_close["tradable"] = True
    same_close["half_spread"] = 0.0
    same_close["cost_rate"] = 0.0
    illusion = evaluate_oof(oof, params, models={"canary": "canary"}, market=same_close, horizon=1)
    assert illusion.overall.at[("canary", "long_short"), "gross_sharpe"] > 5
    honest = evaluation.returns[("canary", "long_short")]["gross_return"]
    assert abs(honest.mean() / (honest.std() / np.sqrt(len(honest)))) < 3.0


def test_a_market_where_everything_loses_promotes_nothing(bounce: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    signals = {f"noise_{i}": rng.standard_normal(len(bounce)) for i in range(3)}
    evaluation, oof = evaluate_market(bounce, signals, horizon=1)
    primary = evaluation.overall.xs("long_short", level="strategy")
    assert (primary["sharpe"].dropna() < 0).all(), primary["sharpe"]
    for name in signals:
        assert not verdict(evaluation, oof, name).promote
    # the least bad loser still loses to cash
    best = primary.loc[list(signals), "sharpe"].idxmax()
    assert "beats_equal_weight" in failed(verdict(evaluation, oof, best))


def test_a_long_only_baseline_is_never_beaten_by_a_model_that_only_matches_it(tradeable: pd.DataFrame) -> None:
    one = tradeable[tradeable["symbol"] == "T000"].reset_index(drop=True)
    evaluation, oof = evaluate_market(one, {"always_long": np.ones(len(one))}, horizon=1)
    assert evaluation.mode == "single_series" and evaluation.primary_strategy == "long_flat"
    mine = evaluation.returns[("always_long", "long_flat")]["net_return"].to_numpy()
    theirs = evaluation.returns[("equal_weight", "long_flat")]["net_return"].to_numpy()
    np.testing.assert_allclose(mine, theirs)
    decision = verdict(evaluation, oof, "always_long")
    assert not decision.promote and "beats_equal_weight" in failed(decision)

    params = EvaluationParams(topk=40, n_drop=0)  # holding every name equally is the benchmark itself
    evaluation, oof = evaluate_market(tradeable, {"everything": np.ones(len(tradeable))}, params=params)
    gate = PromotionParams(strategy="topk")
    decision = verdict(evaluation, oof, "everything", params=gate)
    assert not decision.promote and "beats_equal_weight" in failed(decision)


def test_drift_on_new_bars_does_not_block_the_retrained_model_but_a_performance_drop_does(
        tradeable: pd.DataFrame) -> None:
    evaluation, oof = evaluate_market(tradeable, {"planted": tradeable["signal"]})
    params = PromotionParams()
    evidence = gate_evidence(evaluation, "planted", params, n_trials=4)
    card = window_scorecards(evaluation, oof, "planted")
    drifted = decide(card, None, evidence, validation_passed=True, drift_rules=["data_drift"], params=params)
    assert drifted.promote
    line = next(r for r in drifted.rules if r.rule == "drift_data_drift")
    assert line.verdict == "PASS" and "retrained on these bars" in line.detail
    dropped = decide(card, None, evidence, validation_passed=True, drift_rules=["data_drift", "performance"],
                     params=params)
    assert not dropped.promote and failed(dropped) == ["drift_performance"]


def test_more_trials_need_more_evidence(tradeable: pd.DataFrame) -> None:
    evaluation, _ = evaluate_market(tradeable, {"planted": tradeable["signal"]})
    few = gate_evidence(evaluation, "planted", PromotionParams(), n_trials=1).baselines["momentum_20"]
    many = gate_evidence(evaluation, "planted", PromotionParams(), n_trials=1000).baselines["momentum_20"]
    assert many.adjusted_p_value == pytest.approx(min(1.0, few.p_value * 1000))
    assert few.t_stat == many.t_stat


def test_pbo_gates_only_with_enough_complete_trials(tradeable: pd.DataFrame) -> None:
    evaluation, oof = evaluate_market(tradeable, {"planted": tradeable["signal"]})
    params = PromotionParams()
    card = window_scorecards(evaluation, oof, "planted")

    def pbo_rule(pbo: float, trials: int):
        evidence = gate_evidence(evaluation, "planted", params, n_trials=trials, pbo=pbo, pbo_trials=trials)
        decision = decide(card, None, evidence, validation_passed=True, params=params)
        return next(r for r in decision.rules if r.rule == "pbo"), decision.promote

    (rule, promoted) = pbo_rule(0.8, 12)
    assert rule.verdict == "FAIL" and rule.figure == pytest.approx(0.8) and not promoted
    (rule, promoted) = pbo_rule(0.2, 12)
    assert rule.verdict == "PASS" and promoted
    (rule, promoted) = pbo_rule(0.9, 3)
    assert rule.verdict == "SKIP" and "too few to judge" in rule.detail and promoted
