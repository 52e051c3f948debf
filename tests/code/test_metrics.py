"""alphaforge.metrics against hand computations, and one Sharpe for tune and the leaderboard on the same returns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from gate_markets import oof_frame, tradeable_market

from alphaforge import metrics
from alphaforge.evaluate import EvaluationParams, evaluate_oof, leaderboard, market_for, strategies_for
from alphaforge.overfitting import sharpe_ratio as overfitting_sharpe
from alphaforge.rl import performance
from alphaforge.tune import objective_sharpe

RETURNS = [0.01, -0.02, 0.015, 0.003, -0.004, 0.02]


def hand_mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def test_sharpe_is_mean_over_sample_std_times_root_periods() -> None:
    mean, std = hand_mean_std(RETURNS)
    assert metrics.sharpe_ratio(RETURNS) == pytest.approx(mean / std, rel=1e-12)
    assert metrics.sharpe_ratio(RETURNS, 252) == pytest.approx(mean / std * math.sqrt(252), rel=1e-12)


def test_sharpe_drops_non_finite_returns() -> None:
    assert metrics.sharpe_ratio([*RETURNS, math.nan, math.inf], 52) == pytest.approx(metrics.sharpe_ratio(RETURNS, 52))


@pytest.mark.parametrize("flat", [[0.01] * 30, [0.0] * 5, [1e-3, 1e-3 + 1e-17, 1e-3], [0.5], []])
def test_flat_or_short_returns_have_a_nan_sharpe(flat: list[float]) -> None:
    assert math.isnan(metrics.sharpe_ratio(flat, 252))
    assert math.isnan(metrics.information_ratio(flat, 252))
    assert math.isnan(metrics.mean_tstat(flat))


def test_the_flat_threshold_is_relative_to_the_mean() -> None:
    assert metrics.is_flat(1e-15, 0.0) and metrics.is_flat(0.9e-12, 1.0)
    assert not metrics.is_flat(2e-15, 0.0) and not metrics.is_flat(2e-12, 1.0)
    assert metrics.is_flat(math.nan, 0.0)


def test_information_ratio_is_the_sharpe_of_active_returns() -> None:
    strategy = np.array(RETURNS)
    benchmark = np.array([0.005, -0.01, 0.01, 0.0, 0.001, 0.01])
    mean, std = hand_mean_std(list(strategy - benchmark))
    assert metrics.information_ratio(strategy - benchmark, 12) == pytest.approx(mean / std * math.sqrt(12))


def test_mean_tstat_by_hand() -> None:
    mean, std = hand_mean_std(RETURNS)
    assert metrics.mean_tstat(RETURNS) == pytest.approx(mean / (std / math.sqrt(len(RETURNS))))


def test_annual_return_compounds_and_scales_by_periods() -> None:
    growth = 1.0
    for r in RETURNS:
        growth *= 1 + r
    assert metrics.annual_return(RETURNS, 252) == pytest.approx(growth ** (252 / len(RETURNS)) - 1, rel=1e-10)
    assert metrics.annual_return([0.5, -1.0, 0.2], 252) == -1.0
    assert math.isnan(metrics.annual_return([0.01], 252))
    assert math.isnan(metrics.annual_return([1.0, 1.0], 1e6))


def test_max_drawdown_from_the_running_peak_including_the_start() -> None:
    # equity 1 -> 1.1 -> 0.88 -> 0.968 -> 1.2584: worst fall 0.88 / 1.1 - 1 = -0.2
    assert metrics.max_drawdown([0.1, -0.2, 0.1, 0.3]) == pytest.approx(-0.2)
    # a loss on the first bar counts against the starting capital
    assert metrics.max_drawdown([-0.1, 0.05]) == pytest.approx(-0.1)
    assert metrics.max_drawdown([0.01, 0.02]) == 0.0
    assert metrics.max_drawdown([-1.5, 0.1]) == -1.0
    assert math.isnan(metrics.max_drawdown([]))


def test_directional_accuracy_skips_zero_and_nan_signals_and_misses_zero_targets() -> None:
    signal = [0.3, -0.2, 0.0, 0.1, math.nan, -0.4, 0.2]
    target = [0.01, 0.02, 0.05, -0.01, 0.03, -0.02, 0.0]
    # usable rows: 0 (hit), 1 (miss), 3 (miss), 5 (hit), 6 (zero target: miss) -> 2 / 5
    assert metrics.directional_accuracy(signal, target) == pytest.approx(0.4)
    assert math.isnan(metrics.directional_accuracy([0.0, math.nan], [0.1, 0.1]))
    with pytest.raises(ValueError, match="same length"):
        metrics.directional_accuracy([1.0, 2.0], [1.0])


def test_periods_per_year_of_daily_business_bars() -> None:
    stamps = pd.Series(pd.bdate_range("2024-01-01", periods=60, tz="UTC"))
    assert metrics.infer_periods_per_year(stamps) == 252.0
    assert metrics.annualise_ratio(0.1, 252) == pytest.approx(0.1 * math.sqrt(252))
    with pytest.raises(ValueError, match="periods_per_year"):
        metrics.annualise_ratio(0.1, 0.0)


def test_rl_and_overfitting_report_the_same_sharpe_and_drawdown() -> None:
    result = performance(np.array(RETURNS), 252)
    assert result["sharpe"] == pytest.approx(metrics.sharpe_ratio(RETURNS, 252))
    assert result["max_drawdown"] == pytest.approx(metrics.max_drawdown(RETURNS))
    assert result["annual_return"] == pytest.approx(metrics.annual_return(RETURNS, 252))
    assert overfitting_sharpe(RETURNS) == pytest.approx(metrics.sharpe_ratio(RETURNS))
    assert performance(np.full(20, 0.001), 252)["sharpe"] is None


def test_tune_objective_and_leaderboard_agree_on_the_same_returns() -> None:
    bars = tradeable_market(n_symbols=12, n_bars=260, seed=3, strength=0.003)
    params = EvaluationParams()
    oof = oof_frame(bars, {"prediction": bars["signal"]}, horizon=1, n_folds=3, oos_start=60)
    market = market_for(bars.drop(columns=["signal"]), params)
    evaluation = evaluate_oof(oof, params, market=market, horizon=1)
    strategy = strategies_for(evaluation.mode)[0]
    leaderboard_sharpe = float(evaluation.overall.at[("model", strategy), "sharpe"])
    assert f"{leaderboard_sharpe:.2f}" in leaderboard(evaluation)

    tune_sharpe = objective_sharpe(oof.rename(columns={"prediction": "signal"}), params, horizon=1,
                                   periods_per_year=evaluation.periods_per_year, market=market)
    assert math.isfinite(leaderboard_sharpe)
    assert tune_sharpe == pytest.approx(leaderboard_sharpe, rel=1e-12)
