"""Tests for the overfitting figures: PSR, expected max Sharpe, DSR, CSCV's PBO and the trial return matrix.

Hand formulas are recomputed here from numpy moments (not from the module's own helpers); the behavioural tests
use seeded noise, seeded genuine edges and a real search (momentum lookbacks on skfolio's S&P 500 closes).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from alphaforge.evaluate import EvaluationParams, market_for, strategy_returns
from alphaforge.overfitting import (
    EULER_GAMMA,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    overfitting_summary,
    pbo_cscv,
    probabilistic_sharpe_ratio,
    sharpe_ratio,
    trial_return_matrix,
)


def hand_psr(returns: np.ndarray, benchmark: float) -> float:
    """Bailey & Lopez de Prado (2012), written out from raw moments."""
    n = returns.size
    mean = returns.sum() / n
    sr = mean / math.sqrt(((returns - mean) ** 2).sum() / (n - 1))
    m2 = ((returns - mean) ** 2).mean()
    skew = ((returns - mean) ** 3).mean() / m2 ** 1.5
    kurt = ((returns - mean) ** 4).mean() / m2 ** 2
    return float(norm.cdf((sr - benchmark) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)))


def noise_matrix(n_periods: int, n_trials: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2015-01-01", periods=n_periods, tz="UTC")
    return pd.DataFrame(rng.normal(0.0, 0.01, (n_periods, n_trials)), index=index,
                        columns=[f"trial_{i}" for i in range(n_trials)])


# ------------------------------------------------------------------------------------------------ PSR / DSR


@pytest.mark.parametrize("kind", ["normal", "skewed"])
@pytest.mark.parametrize("benchmark", [0.0, 0.05])
def test_psr_matches_the_hand_formula(kind: str, benchmark: float) -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0005, 0.01, 750) if kind == "normal" else rng.exponential(0.01, 750) - 0.0095
    assert probabilistic_sharpe_ratio(returns, benchmark) == pytest.approx(hand_psr(returns, benchmark), rel=1e-10)


def test_negative_skew_lowers_psr_at_the_same_sharpe() -> None:
    rng = np.random.default_rng(4)
    right_skewed = rng.exponential(0.01, 2000)
    right_skewed = (right_skewed - right_skewed.mean()) / right_skewed.std(ddof=1) * 0.01 + 0.001
    left_skewed = 0.002 - right_skewed  # mirror image around the mean 0.001: same mean and std, skew flipped
    assert sharpe_ratio(left_skewed) == pytest.approx(sharpe_ratio(right_skewed), rel=1e-9)
    assert probabilistic_sharpe_ratio(left_skewed) < probabilistic_sharpe_ratio(right_skewed)


def test_expected_max_sharpe_formula_and_monte_carlo() -> None:
    assert expected_max_sharpe(1, 0.04) == 0.0
    n, variance = 10, 0.04
    by_hand = math.sqrt(variance) * ((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n)
                                     + EULER_GAMMA * norm.ppf(1 - 1 / (n * math.e)))
    assert expected_max_sharpe(n, variance) == pytest.approx(by_hand, rel=1e-12)
    # the approximation is close to the simulated mean maximum of N standard normal Sharpe estimates
    draws = np.random.default_rng(0).normal(0.0, 1.0, (20000, 100)).max(axis=1).mean()
    assert expected_max_sharpe(100, 1.0) == pytest.approx(draws, rel=0.03)
    assert expected_max_sharpe(100, 4.0) == pytest.approx(2 * expected_max_sharpe(100, 1.0))
    values = [expected_max_sharpe(k, 1.0) for k in (2, 5, 20, 100, 1000)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_dsr_falls_as_more_trials_are_tried() -> None:
    returns = np.random.default_rng(5).normal(0.001, 0.01, 1000)
    dsrs = [deflated_sharpe_ratio(returns, n, 0.001)["dsr"] for n in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(dsrs, dsrs[1:]))
    assert dsrs[0] == pytest.approx(probabilistic_sharpe_ratio(returns, 0.0))  # one trial: nothing to deflate


def test_a_strong_genuine_edge_survives_deflation() -> None:
    rng = np.random.default_rng(6)
    trials = rng.normal(0.0, 0.01, (1000, 100))
    edge = rng.normal(0.003, 0.01, 1000)  # per-period Sharpe ~0.3, far beyond the best of 100 noise trials
    variance = float(np.var([sharpe_ratio(trials[:, j]) for j in range(100)], ddof=1))
    result = deflated_sharpe_ratio(edge, 100, variance, periods_per_year=252)
    assert result["dsr"] > 0.99
    assert result["sr"] > result["expected_max_sr"]


def test_the_best_of_many_noise_trials_looks_significant_until_deflated() -> None:
    trials = noise_matrix(1000, 200, seed=7)
    sharpes = trials.apply(sharpe_ratio)
    best = trials[sharpes.idxmax()]
    naive = probabilistic_sharpe_ratio(best)
    deflated = deflated_sharpe_ratio(best, 200, float(sharpes.var(ddof=1)))["dsr"]
    assert naive > 0.95  # taken alone, the lucky trial "passes"
    assert deflated < 0.9 and deflated < naive - 0.1


def test_dsr_result_is_complete_and_json_able() -> None:
    returns = pd.Series(np.random.default_rng(8).normal(0.0005, 0.01, 500))
    result = deflated_sharpe_ratio(returns, 8, 0.0004, periods_per_year=252)
    json.dumps(result, allow_nan=False)
    assert result["sr_annualised"] == pytest.approx(result["sr"] * math.sqrt(252))
    assert result["expected_max_sr_annualised"] == pytest.approx(result["expected_max_sr"] * math.sqrt(252))
    assert result["n_trials"] == 8 and result["n_periods"] == 500 and result["reason"] is None
    assert result["dsr"] < result["psr"]


def test_dsr_edge_cases() -> None:
    constant = deflated_sharpe_ratio(np.full(100, 0.001), 5, 0.001)
    assert constant["dsr"] is None and "constant" in constant["reason"]
    short = deflated_sharpe_ratio([0.01, np.nan, -0.01], 5, 0.001)
    assert short["dsr"] is None and "2 finite" in short["reason"]
    returns = np.random.default_rng(9).normal(0.001, 0.01, 300)
    with_gaps = np.insert(returns, [10, 100], np.nan)  # NaN periods are untraded: dropped, not zero
    assert deflated_sharpe_ratio(with_gaps, 5, 0.001)["dsr"] == pytest.approx(
        deflated_sharpe_ratio(returns, 5, 0.001)["dsr"])
    with pytest.raises(ValueError, match="n_trials"):
        deflated_sharpe_ratio(returns, 0, 0.001)
    with pytest.raises(ValueError, match="trial_sharpes_variance"):
        deflated_sharpe_ratio(returns, 5, -0.1)
    with pytest.raises(ValueError, match="infinite return at position 3"):
        deflated_sharpe_ratio([0.0, 0.1, 0.2, np.inf], 5, 0.001)


# ------------------------------------------------------------------------------------------------- PBO


def test_pbo_by_hand_on_a_tiny_matrix() -> None:
    # Two blocks (rows 0-1, rows 2-3), so two splits. Per-period Sharpe of two points: mean / std(ddof=1).
    matrix = pd.DataFrame({
        "A": [0.01, 0.03, -0.01, 0.01],  # block 1: SR 1.414, block 2: SR 0
        "B": [0.00, 0.02, 0.02, 0.04],   # block 1: SR 0.707, block 2: SR 2.121
        "C": [-0.01, 0.01, 0.01, 0.03],  # block 1: SR 0,     block 2: SR 1.414
    })
    result = pbo_cscv(matrix, n_partitions=2)
    # split 1 (IS = block 1): A wins, ranks 1 of 3 on block 2 -> w = 1/4; split 2: B wins, ranks 2 of 3 -> w = 2/4
    assert result["logits"] == pytest.approx([math.log(1 / 3), 0.0])
    assert result["pbo"] == 1.0  # a logit of exactly 0 (the median) counts as overfit
    assert result["n_combinations"] == 2 and result["prob_oos_loss"] == 0.0


def test_pure_noise_trials_give_pbo_near_one_half() -> None:
    results = [pbo_cscv(noise_matrix(400, 10, seed), n_partitions=8) for seed in range(30)]
    assert all(r["n_combinations"] == math.comb(8, 4) and len(r["logits"]) == 70 for r in results)
    assert all(0.0 <= r["pbo"] <= 1.0 for r in results)
    assert 0.4 <= float(np.mean([r["pbo"] for r in results])) <= 0.6
    assert 0.3 <= pbo_cscv(noise_matrix(1000, 20, seed=11), n_partitions=10)["pbo"] <= 0.7


def test_one_trial_with_a_persistent_edge_gives_pbo_near_zero() -> None:
    matrix = noise_matrix(1000, 20, seed=12)
    matrix["trial_5"] += 0.003  # a per-period Sharpe of ~0.3 in every block
    result = pbo_cscv(matrix, n_partitions=10)
    assert result["pbo"] < 0.05
    assert result["prob_oos_loss"] < 0.05
    assert min(result["logits"]) > 0


def test_pbo_edge_cases() -> None:
    one = pbo_cscv(noise_matrix(200, 1, seed=1))
    assert one["pbo"] is None and "1 trial" in one["reason"] and one["logits"] == []
    short = pbo_cscv(noise_matrix(20, 5, seed=1), n_partitions=16)
    assert short["pbo"] is None and "2 per block" in short["reason"]
    flat = pbo_cscv(pd.DataFrame({"a": np.zeros(100), "b": np.full(100, 0.001)}), n_partitions=4)
    assert flat["pbo"] is None and "vary" in flat["reason"]

    matrix = noise_matrix(300, 6, seed=2)
    matrix["never_trades"] = 0.0  # a trial that never trades has Sharpe 0, and still ranks
    matrix.iloc[[5, 50], 0] = np.nan
    result = pbo_cscv(matrix, n_partitions=6)
    assert result["n_periods_dropped"] == 2 and result["n_periods"] == 298 and result["n_trials"] == 7
    assert 0.0 <= result["pbo"] <= 1.0 and all(np.isfinite(result["logits"]))
    json.dumps(result, allow_nan=False)

    with pytest.raises(ValueError, match="n_partitions=5"):
        pbo_cscv(matrix, n_partitions=5)
    with pytest.raises(ValueError, match="n_partitions=22"):
        pbo_cscv(matrix, n_partitions=22)
    matrix.iloc[7, 2] = np.inf
    with pytest.raises(ValueError, match="infinite return for trial 'trial_2'"):
        pbo_cscv(matrix, n_partitions=6)


# ----------------------------------------------------------------------------------- matrix and summary


def test_trial_return_matrix_aligns_on_common_periods() -> None:
    stamps = pd.bdate_range("2020-01-01", periods=10, tz="UTC")
    first = pd.Series(np.arange(10, dtype=float), index=stamps)
    second = pd.Series(np.arange(8, dtype=float), index=stamps[2:])
    second.iloc[3] = np.nan
    frame_shaped = pd.DataFrame({"timestamp": stamps[::-1], "net_return": np.ones(10)})  # unsorted is fine
    matrix = trial_return_matrix({0: first, 1: second, "best": frame_shaped})
    assert list(matrix.columns) == [0, 1, "best"]
    assert list(matrix.index) == [s for i, s in enumerate(stamps) if i >= 2 and i != 5]
    assert matrix.attrs["dropped_periods"] == 3
    assert matrix.loc[stamps[4], 0] == 4.0 and matrix.loc[stamps[4], 1] == 2.0


def test_trial_return_matrix_rejects_bad_input() -> None:
    stamps = pd.bdate_range("2020-01-01", periods=4, tz="UTC")
    with pytest.raises(ValueError, match="trial 'b' has timestamp 2020-01-01 00:00:00\\+00:00 twice"):
        trial_return_matrix({"a": pd.Series(1.0, index=stamps),
                             "b": pd.Series(1.0, index=stamps[[0, 0, 1, 2]])})
    with pytest.raises(ValueError, match="share no period"):
        trial_return_matrix({"a": pd.Series(1.0, index=stamps[:2]), "b": pd.Series(1.0, index=stamps[2:])})
    with pytest.raises(ValueError, match="trial 'a' frame lacks column"):
        trial_return_matrix({"a": pd.DataFrame({"timestamp": stamps, "gross_return": 1.0})})
    with pytest.raises(ValueError, match="no trials"):
        trial_return_matrix({})


def test_summary_derives_the_trial_variance_and_counts_all_trials() -> None:
    matrix = noise_matrix(500, 6, seed=13)
    summary = overfitting_summary(matrix["trial_0"], matrix, periods_per_year=252, n_trials=9, n_partitions=8)
    variance = float(np.var([sharpe_ratio(matrix[c]) for c in matrix.columns], ddof=1))
    assert summary["dsr"]["trial_sharpes_variance"] == pytest.approx(variance)
    assert summary["dsr"]["n_trials"] == 9 and summary["pbo"]["n_trials"] == 6
    assert summary["dsr"] == deflated_sharpe_ratio(matrix["trial_0"], 9, variance, periods_per_year=252)
    json.dumps(summary, allow_nan=False)
    with pytest.raises(ValueError, match="n_trials=3 but trial_returns has 6"):
        overfitting_summary(matrix["trial_0"], matrix, periods_per_year=252, n_trials=3)
    bare = overfitting_summary(matrix["trial_0"], None, periods_per_year=252, n_trials=8)
    assert bare["dsr"]["dsr"] is None and bare["pbo"]["pbo"] is None and bare["pbo"]["reason"]
    given = overfitting_summary(matrix["trial_0"], None, periods_per_year=252, n_trials=8, trial_sharpes_variance=0.001)
    assert given["dsr"]["dsr"] is not None and given["dsr"]["n_trials"] == 8


def test_a_real_search_over_momentum_lookbacks() -> None:
    """Twelve momentum lookbacks on real closes, traded by evaluate.strategy_returns, as a tuning study would."""
    from skfolio.datasets import load_sp500_dataset

    closes = load_sp500_dataset().iloc[-900:]
    log_close = np.log(closes)
    index = pd.DatetimeIndex(closes.index).tz_localize("UTC")
    forward = (log_close.shift(-1) - log_close).set_axis(index)
    params = EvaluationParams(cost_bps=5.0)
    bars = closes.set_axis(index).stack().rename("close").rename_axis(["timestamp", "symbol"]).reset_index()
    market = market_for(bars, params)
    trials = {}
    for lookback in (5, 10, 15, 20, 30, 40, 60, 80, 100, 120, 160, 200):
        signal = log_close.diff(lookback).set_axis(index)
        frame = pd.concat({"signal": signal, "forward_return_1": forward}, axis=1).stack(
            level=1, future_stack=True).rename_axis(["timestamp", "symbol"]).reset_index()
        frame = frame.dropna(subset=["forward_return_1"]).iloc[len(closes.columns) * 200:]
        trials[f"lookback_{lookback}"] = strategy_returns(frame, "signal", params, market, horizon=1)
    matrix = trial_return_matrix(trials)
    assert matrix.shape[1] == 12 and len(matrix) > 600
    chosen = matrix.apply(sharpe_ratio).idxmax()
    summary = overfitting_summary(matrix[chosen], matrix, periods_per_year=252, n_partitions=10)
    assert 0.0 <= summary["pbo"]["pbo"] <= 1.0 and summary["pbo"]["n_combinations"] == 252
    assert summary["dsr"]["dsr"] < summary["dsr"]["psr"]  # choosing among 12 costs confidence
    json.dumps(summary, allow_nan=False)
