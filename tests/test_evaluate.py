"""Tests for the out-of-sample evaluation: metrics, baselines, portfolios, JSON and plots.

Real closes come from skfolio's bundled S&P 500 sample (20 stocks, daily); hand-checked examples and noise tests
use tiny seeded frames. Everything runs in a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from alphaforge.evaluate import (
    BASELINES,
    METRICS,
    SIGNALS,
    EvaluationParams,
    evaluate_oof,
    infer_periods_per_year,
    information_coefficients,
    leaderboard,
    metrics_json_text,
    strategy_returns,
    write_plots,
)
from alphaforge.schema import DataError

N_FOLDS = 4


def oof_from_closes(closes: pd.DataFrame, *, n_folds: int = N_FOLDS, horizon: int = 1) -> pd.DataFrame:
    """An OOF-shaped frame from a wide close table (index: dates, columns: symbols), as the train stage writes it.

    ``prediction`` is left as NaN for each test to fill; rows without a label are dropped, as training does.
    """
    log_close = np.log(closes)
    index = pd.DatetimeIndex(closes.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    long = {
        "log_return_1": log_close.diff(),
        "log_return_20": log_close.diff(20),
        "forward_return_1": log_close.shift(-1) - log_close,
        "forward_return": log_close.shift(-horizon) - log_close,
    }
    frame = pd.concat({name: table.set_axis(index) for name, table in long.items()}, axis=1)
    frame = frame.stack(level=1, future_stack=True).rename_axis(["timestamp", "symbol"]).reset_index()
    frame = frame.dropna(subset=["forward_return", "log_return_20"]).reset_index(drop=True)
    stamps = np.sort(frame["timestamp"].unique())
    fold_of = pd.Series(np.arange(len(stamps)) * n_folds // len(stamps), index=stamps)
    frame["fold"] = fold_of.reindex(frame["timestamp"]).to_numpy().astype(int)
    frame["prediction"] = np.nan
    return frame


@pytest.fixture(scope="module")
def sp500_closes() -> pd.DataFrame:
    """The last 260 trading days of skfolio's 20-stock S&P 500 sample (real adjusted closes)."""
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset().iloc[-260:]


@pytest.fixture()
def cross_sectional_oof(sp500_closes: pd.DataFrame) -> pd.DataFrame:
    return oof_from_closes(sp500_closes)


@pytest.fixture()
def single_series_oof(sp500_closes: pd.DataFrame) -> pd.DataFrame:
    return oof_from_closes(sp500_closes[["AAPL"]])


def seeded_oof(n_symbols: int, n_periods: int, seed: int) -> pd.DataFrame:
    """Random-walk closes, seeded, in the OOF shape."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.01, size=(n_periods + 22, n_symbols))
    dates = pd.bdate_range("2021-01-04", periods=n_periods + 22)
    closes = pd.DataFrame(100 * np.exp(np.cumsum(steps, axis=0)), index=dates,
                          columns=[f"SYM{i:02d}" for i in range(n_symbols)])
    return oof_from_closes(closes)


def hand_frame(symbols: list[str], signals: dict[str, list[float]], simple_returns: dict[str, list[float]],
               ) -> pd.DataFrame:
    """A tiny frame with given per-symbol signals and next-bar simple returns (one fold, business days)."""
    n = len(next(iter(signals.values())))
    stamps = pd.bdate_range("2024-01-01", periods=n, tz="UTC")
    parts = [pd.DataFrame({
        "timestamp": stamps, "symbol": symbol, "fold": 0, "signal": signals[symbol],
        "forward_return_1": np.log1p(simple_returns[symbol]),
    }) for symbol in symbols]
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------ IC and signals


@pytest.mark.parametrize("oof_name", ["cross_sectional_oof", "single_series_oof"])
def test_perfect_foresight_scores_ic_one_and_positive_sharpe(oof_name: str, request: pytest.FixtureRequest,
                                                             ) -> None:
    oof = request.getfixturevalue(oof_name)
    oof["prediction"] = oof["forward_return"]
    evaluation = evaluate_oof(oof, EvaluationParams())
    model = evaluation.overall.loc["model"]
    assert evaluation.mode == ("cross_sectional" if oof_name == "cross_sectional_oof" else "single_series")
    assert model["ic_mean"] == pytest.approx(1.0, abs=1e-9)
    assert model["rank_ic_mean"] == pytest.approx(1.0, abs=1e-9)
    assert model["directional_accuracy"] == pytest.approx(1.0)
    assert model["sharpe"] > 1.0
    assert model["sharpe"] > evaluation.overall.loc[list(BASELINES), "sharpe"].max()


def test_negated_foresight_scores_ic_minus_one(cross_sectional_oof: pd.DataFrame) -> None:
    cross_sectional_oof["prediction"] = -cross_sectional_oof["forward_return"]
    model = evaluate_oof(cross_sectional_oof, EvaluationParams()).overall.loc["model"]
    assert model["ic_mean"] == pytest.approx(-1.0, abs=1e-9)
    assert model["rank_ic_mean"] == pytest.approx(-1.0, abs=1e-9)
    assert model["directional_accuracy"] == pytest.approx(0.0)
    assert model["sharpe"] < 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_has_ic_near_zero_within_sampling_error(cross_sectional_oof: pd.DataFrame, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cross_sectional_oof["prediction"] = rng.normal(size=len(cross_sectional_oof))
    model = evaluate_oof(cross_sectional_oof, EvaluationParams()).overall.loc["model"]
    n_stamps = cross_sectional_oof["timestamp"].nunique()
    breadth = cross_sectional_oof.groupby("timestamp")["symbol"].nunique().median()
    standard_error = 1.0 / math.sqrt(n_stamps * (breadth - 1))  # per-timestamp IC s.d. ~ 1/sqrt(N-1)
    assert abs(model["ic_mean"]) < 4 * standard_error
    assert abs(model["rank_ic_mean"]) < 4 * standard_error
    assert abs(model["ic_tstat"]) < 4


def test_noise_time_series_ic_near_zero(single_series_oof: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    single_series_oof["prediction"] = rng.normal(size=len(single_series_oof))
    evaluation = evaluate_oof(single_series_oof, EvaluationParams())
    assert abs(evaluation.overall.at["model", "ic_mean"]) < 4 / math.sqrt(len(single_series_oof))
    assert evaluation.per_fold["fold"].nunique() == N_FOLDS
    assert evaluation.per_fold["ic_tstat"].isna().all()  # one IC per fold has no standard error


def test_information_coefficients_index_by_mode(cross_sectional_oof: pd.DataFrame,
                                                single_series_oof: pd.DataFrame) -> None:
    cross = information_coefficients(cross_sectional_oof, "log_return_1", "forward_return", method="pearson",
                                     min_cross_section=3)
    assert cross.attrs["mode"] == "cross_sectional"
    assert cross.index.name == "timestamp" and len(cross) == cross_sectional_oof["timestamp"].nunique()
    series = information_coefficients(single_series_oof, "log_return_1", "forward_return", method="spearman",
                                      min_cross_section=3)
    assert series.attrs["mode"] == "single_series"
    assert list(series.index) == list(range(N_FOLDS))


def test_constant_signal_has_undefined_ic(cross_sectional_oof: pd.DataFrame) -> None:
    cross_sectional_oof["constant"] = 0.7
    ic = information_coefficients(cross_sectional_oof, "constant", "forward_return", method="pearson",
                                  min_cross_section=3)
    assert ic.isna().all()
    cross_sectional_oof["prediction"] = cross_sectional_oof["forward_return"]
    evaluation = evaluate_oof(cross_sectional_oof, EvaluationParams())
    assert math.isnan(evaluation.overall.at["buy_and_hold", "ic_mean"])
    assert math.isnan(evaluation.overall.at["buy_and_hold", "ic_tstat"])


# ------------------------------------------------------------------------------------------- portfolios


def test_long_short_hand_computed() -> None:
    # t0: A>B -> A +0.5, B -0.5 | t1: B>A -> flip | t2, t3: A>B again, held.
    frame = hand_frame(
        ["A", "B"],
        signals={"A": [0.3, 0.2, 0.5, 0.5], "B": [0.1, 0.4, 0.0, 0.0]},
        simple_returns={"A": [0.10, 0.02, -0.06, 0.04], "B": [-0.10, -0.04, 0.02, 0.00]},
    )
    params = EvaluationParams(cost_bps=10.0, min_cross_section=2)
    result = strategy_returns(frame, "signal", params)
    gross = [0.5 * 0.10 + 0.5 * 0.10, -0.5 * 0.02 - 0.5 * 0.04, -0.5 * 0.06 - 0.5 * 0.02, 0.5 * 0.04]
    turnover = [1.0, 2.0, 2.0, 0.0]
    net = [g - 0.001 * t for g, t in zip(gross, turnover)]
    np.testing.assert_allclose(result["gross_return"], gross, atol=1e-12)
    np.testing.assert_allclose(result["turnover"], turnover, atol=1e-12)
    np.testing.assert_allclose(result["net_return"], [0.099, -0.032, -0.042, 0.02], atol=1e-12)
    np.testing.assert_allclose(result["net_return"], net, atol=1e-12)
    np.testing.assert_allclose(result["net_exposure"], 0.0, atol=1e-12)
    np.testing.assert_allclose(result["gross_exposure"], 1.0, atol=1e-12)

    oof = frame.rename(columns={"signal": "prediction"}).assign(
        forward_return=lambda f: f["forward_return_1"], log_return_1=0.0, log_return_20=0.0)
    evaluation = evaluate_oof(oof, params)
    model = evaluation.overall.loc["model"]
    # Equity 1.099 peaks after t0, then falls by factors 0.968 and 0.958 before recovering.
    assert model["max_drawdown"] == pytest.approx(0.968 * 0.958 - 1.0, abs=1e-12)
    assert model["turnover"] == pytest.approx(5.0 / 4)
    assert model["n_periods"] == 4
    np.testing.assert_allclose(evaluation.equity["model"], np.cumprod(1 + np.array(net)), atol=1e-12)


def test_long_flat_single_series_hand_computed() -> None:
    frame = hand_frame(
        ["ONLY"],
        signals={"ONLY": [0.5, -0.2, 0.0, 0.3, np.nan, 0.1]},  # zero and NaN signals are flat
        simple_returns={"ONLY": [0.01, 0.02, -0.03, 0.05, 0.04, -0.02]},
    )
    result = strategy_returns(frame, "signal", EvaluationParams(cost_bps=20.0))
    np.testing.assert_allclose(result["gross_return"], [0.01, 0.0, 0.0, 0.05, 0.0, -0.02], atol=1e-12)
    np.testing.assert_allclose(result["turnover"], [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(result["net_return"], [0.008, -0.002, 0.0, 0.048, -0.002, -0.022], atol=1e-12)
    oof = frame.rename(columns={"signal": "prediction"}).assign(
        forward_return=lambda f: f["forward_return_1"], log_return_1=0.0, log_return_20=0.0)
    model = evaluate_oof(oof, EvaluationParams(cost_bps=20.0)).overall.loc["model"]
    # Peak 1.008 * 0.998 * 1.048 after t3, then two losses: 0.998 * 0.978 of it remains.
    assert model["max_drawdown"] == pytest.approx(0.998 * 0.978 - 1.0, abs=1e-12)
    # Hit rate over the non-zero, non-NaN signals t0, t1, t3, t5: right, wrong, right, wrong.
    assert model["directional_accuracy"] == pytest.approx(0.5)


def test_costs_lower_net_returns_by_cost_times_turnover(cross_sectional_oof: pd.DataFrame) -> None:
    cross_sectional_oof["prediction"] = cross_sectional_oof["log_return_20"]
    free = strategy_returns(cross_sectional_oof, "prediction", EvaluationParams(cost_bps=0.0))
    costly = strategy_returns(cross_sectional_oof, "prediction", EvaluationParams(cost_bps=25.0))
    assert costly["turnover"].gt(0).any()
    np.testing.assert_allclose(costly["gross_return"], free["gross_return"], atol=1e-15)
    np.testing.assert_allclose(free["net_return"] - costly["net_return"], 25e-4 * costly["turnover"], atol=1e-15)
    np.testing.assert_allclose(costly["gross_return"] - costly["net_return"], costly["cost"], atol=1e-15)


def test_buy_and_hold_is_equal_weight_mean_of_available_symbols(cross_sectional_oof: pd.DataFrame) -> None:
    rng = np.random.default_rng(11)
    thinned = cross_sectional_oof.drop(index=rng.choice(cross_sectional_oof.index, size=150, replace=False))
    thinned = thinned.assign(prediction=0.0)
    result = strategy_returns(thinned.assign(buy_and_hold=1.0), "buy_and_hold", EvaluationParams(), long_only=True)
    expected = np.expm1(thinned["forward_return_1"]).groupby(thinned["timestamp"]).mean()
    np.testing.assert_allclose(result.set_index("timestamp")["gross_return"], expected.sort_index(), atol=1e-14)
    np.testing.assert_allclose(result["net_exposure"], 1.0, atol=1e-12)
    evaluation = evaluate_oof(thinned, EvaluationParams())
    np.testing.assert_allclose(evaluation.returns["buy_and_hold"]["gross_return"], expected.sort_index(),
                               atol=1e-14)


# ------------------------------------------------------------------------------------- degenerate inputs


def test_zero_volatility_and_single_period_fold_stay_finite() -> None:
    oof = seeded_oof(n_symbols=1, n_periods=30, seed=5)
    oof["prediction"] = 1.0
    oof["forward_return_1"] = 0.0  # a market that never moves: zero-volatility returns
    oof["forward_return"] = 0.0
    last = oof["timestamp"].max()
    oof.loc[oof["timestamp"] == last, "fold"] = N_FOLDS  # a fold holding a single period
    evaluation = evaluate_oof(oof, EvaluationParams(cost_bps=0.0))
    numbers = pd.concat([evaluation.per_fold[list(METRICS)], evaluation.overall[list(METRICS)]])
    assert not np.isinf(numbers.to_numpy(dtype=float)).any()
    assert evaluation.overall["sharpe"].isna().all()
    single = evaluation.per_fold[evaluation.per_fold["fold"] == N_FOLDS]
    assert (single["n_periods"] == 1).all()
    assert single["sharpe"].isna().all() and single["annual_return"].isna().all()
    assert (single["max_drawdown"] == 0.0).all()


def test_noisy_single_period_fold_is_finite_and_counted() -> None:
    oof = seeded_oof(n_symbols=6, n_periods=40, seed=9)
    oof["prediction"] = np.random.default_rng(9).normal(size=len(oof))
    oof.loc[oof["timestamp"] == oof["timestamp"].max(), "fold"] = N_FOLDS
    evaluation = evaluate_oof(oof, EvaluationParams())
    single = evaluation.per_fold[(evaluation.per_fold["fold"] == N_FOLDS) & (evaluation.per_fold["signal"] == "model")]
    assert single["n_periods"].item() == 1
    assert math.isfinite(single["ic_mean"].item()) and math.isnan(single["ic_tstat"].item())
    assert not np.isinf(evaluation.per_fold[list(METRICS)].to_numpy(dtype=float)).any()


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns="forward_return_1"), "forward_return_1"),
        (lambda f: f.assign(timestamp=f["timestamp"].dt.tz_localize(None)), "datetime64"),
        (lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True), "duplicate key"),
        (lambda f: f.assign(fold=np.where(f.index % 2 == 0, 0, 1)), "non-overlapping"),
        (lambda f: f.assign(prediction=np.where(f.index == 3, np.inf, 0.0)), "infinite value at row 3"),
        (lambda f: f.assign(forward_return_1=np.nan), "no finite value"),
    ],
)
def test_bad_oof_frames_fail_loudly(cross_sectional_oof: pd.DataFrame, corrupt, message: str) -> None:
    cross_sectional_oof["prediction"] = 0.0
    with pytest.raises(DataError, match=message):
        evaluate_oof(corrupt(cross_sectional_oof), EvaluationParams())


# -------------------------------------------------------------------------------------- periods per year


def test_infer_periods_per_year() -> None:
    business_days = pd.Series(pd.bdate_range("2020-01-01", "2022-12-31", tz="UTC"))
    assert infer_periods_per_year(business_days) == 252
    hours = pd.date_range("2024-01-01", "2024-03-01", freq="h", tz="UTC")
    fx_hours = pd.Series(hours[hours.dayofweek < 5])  # 24x5
    assert infer_periods_per_year(fx_hours) == 24 * 260
    assert infer_periods_per_year(pd.Series(hours)) == 24 * 365  # 24x7 (crypto)
    session = hours[(hours.dayofweek < 5) & (hours.hour >= 14) & (hours.hour <= 20)]  # 7 bars a session
    assert infer_periods_per_year(pd.Series(session)) == 7 * 260
    weekly = pd.Series(pd.date_range("2020-01-03", periods=60, freq="W-FRI", tz="UTC"))
    assert infer_periods_per_year(weekly) == pytest.approx(365.25 / 7)
    with pytest.raises(DataError, match="at least two"):
        infer_periods_per_year(pd.Series(pd.to_datetime(["2024-01-02"] * 3, utc=True)))


def test_real_daily_data_annualises_with_252(cross_sectional_oof: pd.DataFrame) -> None:
    assert infer_periods_per_year(cross_sectional_oof["timestamp"]) == 252
    cross_sectional_oof["prediction"] = 0.0
    assert evaluate_oof(cross_sectional_oof, EvaluationParams(periods_per_year=12.0)).periods_per_year == 12.0


# ------------------------------------------------------------------------------------------------ outputs


def test_metrics_json_leaderboard_and_plots(cross_sectional_oof: pd.DataFrame, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cross_sectional_oof["prediction"] = cross_sectional_oof["forward_return"] + rng.normal(
        0, 0.02, len(cross_sectional_oof))
    evaluation = evaluate_oof(cross_sectional_oof, EvaluationParams())

    text = metrics_json_text(evaluation)
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert metrics == json.loads(json.dumps(evaluation.to_metrics_json(), allow_nan=False))
    assert set(metrics["models"]["model"]) == set(METRICS)
    assert set(metrics["baselines"]) == set(BASELINES)
    assert metrics["baselines"]["buy_and_hold"]["ic_mean"] is None
    assert metrics["mode"] == "cross_sectional" and metrics["periods_per_year"] == 252

    board = leaderboard(evaluation)
    body = [line.split()[1] for line in board.splitlines() if line[:1].isdigit()]
    assert body == list(evaluation.overall["sharpe"].sort_values(ascending=False, na_position="last").index)
    assert set(body) == set(SIGNALS)

    paths = write_plots(evaluation, tmp_path / "plots")
    assert set(paths) == {"equity.csv", "ic_by_fold.csv", "equity.png", "ic_by_fold.png"}
    equity = pd.read_csv(paths["equity.csv"])
    assert list(equity.columns) == ["timestamp", *SIGNALS]
    assert len(equity) == cross_sectional_oof["timestamp"].nunique()
    ic_by_fold = pd.read_csv(paths["ic_by_fold.csv"])
    assert list(ic_by_fold.columns) == ["fold", "signal", "ic", "rank_ic"]
    assert len(ic_by_fold) == N_FOLDS * len(SIGNALS)
    for name in ("equity.png", "ic_by_fold.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(paths[name])
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # something was drawn
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(paths)  # no temp files left
