"""Tests for the out-of-sample evaluation and its backtest: execution-aligned labels, tradability, costs,
portfolio construction, HAC statistics, JSON, leaderboard and plots.

Hand-checked examples use tiny frames; real data comes from bokeh's bundled daily OHLCV (AAPL, IBM, MSFT, GOOG);
statistical checks use the seeded markets of ``gate_markets``. Everything runs in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from gate_markets import evaluate_market, oof_frame, tradeable_market

from alphaforge.backtest import build_panel, market_frame, simulate
from alphaforge.backtest.portfolios import band_targets, long_short_targets, topk_dropout_targets
from alphaforge.evaluate import (
    BASELINES,
    METRICS,
    EvaluationParams,
    evaluate_oof,
    infer_periods_per_year,
    leaderboard,
    market_for,
    metrics_json_text,
    strategy_returns,
    write_plots,
)
from alphaforge.features import compute_labels
from alphaforge.schema import DataError
from alphaforge.stats import adjusted_p_value, newey_west
from alphaforge.tearsheet import write_tear_sheets


def tiny_bars(open_: list[list[float]], close: list[list[float]] | None = None,
              volume: list[list[float]] | None = None) -> pd.DataFrame:
    """Bars from wide lists (rows: bars, columns: symbols A, B, ...)."""
    opens = np.asarray(open_, dtype=float)
    closes = opens if close is None else np.asarray(close, dtype=float)
    n_bars, n_symbols = opens.shape
    stamps = pd.date_range("2024-01-01", periods=n_bars, freq="D", tz="UTC")
    frame = pd.DataFrame({"timestamp": np.tile(stamps, n_symbols),
                          "symbol": np.repeat([chr(65 + i) for i in range(n_symbols)], n_bars),
                          "open": opens.T.ravel(), "close": closes.T.ravel()})
    frame["timestamp"] = pd.DatetimeIndex(frame["timestamp"]).tz_convert("UTC") if frame["timestamp"].dt.tz else \
        pd.DatetimeIndex(frame["timestamp"]).tz_localize("UTC")
    frame["high"] = frame[["open", "close"]].max(axis=1)
    frame["low"] = frame[["open", "close"]].min(axis=1)
    frame["volume"] = 1e6 if volume is None else np.asarray(volume, dtype=float).T.ravel()
    return frame


# ------------------------------------------------------------------------------------------ labels & market


def test_labels_are_the_return_from_the_next_bars_execution_price() -> None:
    bars = tiny_bars([[10, 20], [11, 22], [12, 21], [15, 20], [14, 24]], close=[[10.5, 20], [11.5, 21], [12, 23],
                                                                               [14, 21], [13, 25]])
    opened = compute_labels(bars, 2, "next_open")
    a = opened[opened["symbol"] == "A"]["forward_return"].to_numpy()
    np.testing.assert_allclose(a[:2], [np.log(15 / 11), np.log(14 / 12)])
    assert np.isnan(a[2:]).all()
    assert opened.attrs["execution"] == "next_open"
    closed = compute_labels(bars, 1, "next_close")
    b = closed[closed["symbol"] == "B"]
    np.testing.assert_allclose(b["forward_return_1"].to_numpy()[:3], np.log([23 / 21, 21 / 23, 25 / 21]))
    assert compute_labels(bars, 1).attrs["execution"] == "next_open"  # auto with an open column
    close_only = bars[["timestamp", "symbol", "close"]]
    assert compute_labels(close_only, 1).attrs["execution"] == "next_close"
    with pytest.raises(DataError, match="next_open needs an 'open' column"):
        compute_labels(close_only, 1, "next_open")


def test_market_frame_execution_return_and_tradability_rules() -> None:
    bars = tiny_bars([[10, 0.5], [11, 0.6], [12, 0.7], [13, 0.8], [14, 0.9]],
                     volume=[[1e6, 1e6], [0, 1e6], [1e6, 1e6], [1e6, 1e6], [1e6, 1e6]])
    market = market_frame(bars, min_price=1.0).set_index(["symbol", "timestamp"])
    a = market.loc["A"]
    np.testing.assert_allclose(a["exec_return"].to_numpy()[:3], [12 / 11 - 1, 13 / 12 - 1, 14 / 13 - 1])
    assert a["tradable"].tolist()[:4] == [False, True, True, True]  # bar 1 (the entry of bar 0's signal) is idle
    assert a["stale"].tolist()[:3] == [False, False, False] and bool(market.loc["A"]["stale"].iloc[-1]) is False
    assert not market.loc["B"]["tradable"].any()  # priced below min_price
    thin = market_frame(bars.assign(volume=10.0), min_dollar_volume=1e4)
    assert not thin["tradable"].any()


def test_spreads_come_from_bid_ask_else_high_low_else_the_fallback(bokeh_bars: pd.DataFrame) -> None:
    aapl = bokeh_bars[bokeh_bars["symbol"] == "AAPL"].iloc[-300:]
    estimated = market_frame(aapl)
    assert estimated.attrs["spread_source"] == "corwin_schultz"
    assert (estimated["half_spread"] >= 0).all() and 0 < estimated["half_spread"].mean() < 0.01
    quoted = market_frame(aapl.assign(bid=aapl["close"] * 0.999, ask=aapl["close"] * 1.001))
    assert quoted.attrs["spread_source"] == "bid_ask"
    np.testing.assert_allclose(quoted["half_spread"], 0.001, rtol=1e-3)
    fallback = market_frame(aapl[["timestamp", "symbol", "close"]], fallback_spread_bps=12.0)
    assert fallback.attrs["spread_source"] == "fixed"
    fixed = market_frame(aapl, spread_estimator="fixed", fallback_spread_bps=12.0)
    np.testing.assert_allclose(fixed["half_spread"], 0.0006)
    with pytest.raises(DataError, match="bid_ask needs bid and ask"):
        market_frame(aapl, spread_estimator="bid_ask")
    np.testing.assert_allclose(fallback["half_spread"], 0.0006)
    assert "min_dollar_volume (no volume column)" in market_for(
        aapl[["timestamp", "symbol", "close"]], EvaluationParams()).pipe(
        lambda m: __import__("alphaforge.backtest.market", fromlist=["x"]).tradability_summary(m))["rules_not_applied"]


# ------------------------------------------------------------------------------------------ portfolios


def _panel(bars: pd.DataFrame, **market_options) -> tuple:
    market = market_frame(bars, **market_options)
    keys = market[["timestamp", "symbol"]].assign(fold=0)
    panel = build_panel(keys, market, cost_bps=market_options.get("cost_bps", 5.0), max_participation=1.0,
                        capital=1.0)
    return panel, market


def test_a_position_that_cannot_trade_is_carried_and_a_delisted_one_closed() -> None:
    volume = [[1e6] * 3 for _ in range(6)]
    volume[3][0] = 0  # A does not trade at bar 3: the weight decided at bar 2 cannot be put on
    bars = tiny_bars([[10, 10, 10], [11, 10, 10], [12, 11, 10], [13, 12, 11], [14, 13, 12], [15, 14, 13]],
                     volume=volume)
    panel, _ = _panel(bars, cost_bps=0.0, fallback_spread_bps=0.0)
    targets = np.zeros(panel.exec_return.shape)
    targets[1, 0] = 1.0  # long A from bar 1 ...
    targets[2:, 0] = 0.0  # ... and out at bar 2, which executes at bar 3: A did not trade there
    result = simulate(panel, targets)
    assert result.weights[:, 0].tolist()[:4] == [0.0, 1.0, 1.0, 0.0]
    targets[:, 1] = 0.5  # B held to the end: closed when its future price runs out
    result = simulate(panel, targets)
    assert result.weights[-1, 1] == 0.0 and np.isnan(panel.exec_return[-1, 1])


def test_costs_are_commission_plus_half_spread_plus_impact() -> None:
    bars = tiny_bars([[10, 20], [10, 20], [10, 20], [10, 20], [10, 20]])
    panel, market = _panel(bars, cost_bps=10.0, fallback_spread_bps=0.0)
    panel = panel.__class__(**{**panel.__dict__, "cost_rate": np.full(panel.cost_rate.shape, 0.001 + 0.0004),
                               "impact_scale": np.full(panel.cost_rate.shape, 0.01)})
    targets = np.tile([0.5, -0.5], (len(panel.timestamps), 1))
    result = simulate(panel, targets).returns
    assert result.loc[0, "turnover"] == pytest.approx(1.0)
    assert result.loc[0, "commission"] == pytest.approx(0.001)
    assert result.loc[0, "spread_cost"] == pytest.approx(0.0004)
    assert result.loc[0, "impact_cost"] == pytest.approx(2 * 0.01 * math.sqrt(0.5) * 0.5)
    assert result.loc[1, "cost"] == pytest.approx(0.0)
    assert result.loc[0, "net_return"] == pytest.approx(result.loc[0, "gross_return"] - result.loc[0, "cost"])


def test_long_short_tranches_average_the_last_horizon_books() -> None:
    bars = tiny_bars([[10 + t, 20, 30, 40 - t] for t in range(8)])
    panel, _ = _panel(bars)
    signal = np.tile([1.0, 2.0, 3.0, 4.0], (8, 1))
    signal[3:] = [4.0, 3.0, 2.0, 1.0]  # the ranking flips at bar 3
    daily = long_short_targets(panel, signal, quantile=0.25, min_cross_section=3, holding=1)
    np.testing.assert_allclose(daily[0], [-0.5, 0, 0, 0.5])
    held = long_short_targets(panel, signal, quantile=0.25, min_cross_section=3, holding=3)
    np.testing.assert_allclose(held[0], [-0.5 / 3, 0, 0, 0.5 / 3])  # one tranche of three is open
    np.testing.assert_allclose(held[3], [(-0.5 - 0.5 + 0.5) / 3, 0, 0, (0.5 + 0.5 - 0.5) / 3])
    np.testing.assert_allclose(held[5], [0.5, 0, 0, -0.5])


def test_topk_dropout_replaces_at_most_n_drop_names_a_bar() -> None:
    rng = np.random.default_rng(0)
    bars = tiny_bars((50 + np.cumsum(rng.normal(0, 0.5, (60, 10)), axis=0)).tolist())
    panel, _ = _panel(bars)
    signal = rng.standard_normal((60, 10))
    targets = topk_dropout_targets(panel, signal, topk=4, n_drop=1)
    held = targets > 0
    assert (held.sum(axis=1)[:-2] == 4).all()
    np.testing.assert_allclose(targets[held], 0.25)
    changes = (held[1:] & ~held[:-1]).sum(axis=1)
    assert changes.max() <= 1 and changes.sum() > 10


def test_the_no_trade_band_keeps_a_position_inside_the_band() -> None:
    bars = tiny_bars([[10 + t] for t in range(8)])
    panel, _ = _panel(bars)
    signal = np.array([[2.0], [1.0], [0.1], [-0.1], [-2.0], [-0.1], [0.1], [3.0]])
    long_flat = band_targets(panel, signal, band=0.5, long_only=True)[:, 0]
    long_short = band_targets(panel, signal, band=0.5, long_only=False)[:, 0]
    assert long_flat.tolist() == [1, 1, 1, 1, 0, 0, 0, 1]
    assert long_short.tolist() == [1, 1, 1, 1, -1, -1, -1, 1]


# ------------------------------------------------------------------------------------------ statistics


def test_newey_west_matches_the_plain_t_stat_without_lags_and_widens_with_autocorrelation() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 1.0, 500)
    plain = x.mean() / (x.std(ddof=0) / math.sqrt(x.size))
    assert newey_west(x, lags=0).t_stat == pytest.approx(plain)
    smooth = np.convolve(rng.normal(0.05, 1.0, 520), np.ones(20) / 20, mode="valid")[:500]
    assert newey_west(smooth, lags=20).std_error > 2 * newey_west(smooth, lags=0).std_error
    assert math.isnan(newey_west([1.0, 1.0, 1.0, 1.0]).t_stat)
    assert adjusted_p_value(0.01, 8) == pytest.approx(0.08) and adjusted_p_value(0.3, 8) == 1.0


def test_perfect_foresight_ranks_perfectly_and_noise_does_not() -> None:
    bars = tradeable_market(n_symbols=20, n_bars=500, strength=0.0)
    oof = oof_frame(bars, {}, horizon=1, oos_start=100)
    evaluation, _ = evaluate_market(bars, {"oracle": np.zeros(len(bars))}, horizon=1)
    oof["oracle"] = oof["forward_return"]
    oof["noise"] = np.random.default_rng(4).standard_normal(len(oof))
    market = market_for(bars.drop(columns="signal"), EvaluationParams())
    evaluation = evaluate_oof(oof, EvaluationParams(), models={"oracle": "oracle", "noise": "noise"}, market=market)
    assert evaluation.signals.at["oracle", "rank_ic_mean"] == pytest.approx(1.0)
    assert evaluation.overall.at[("oracle", "long_short"), "gross_sharpe"] > 10
    assert abs(evaluation.signals.at["noise", "rank_ic_tstat"]) < 3.5


# ------------------------------------------------------------------------------------------ inputs & outputs


@pytest.fixture(scope="module")
def small_evaluation():
    bars = tradeable_market(n_symbols=12, n_bars=500, strength=0.0007, seed=4)
    evaluation, oof = evaluate_market(bars, {"planted": bars["signal"]}, horizon=5)
    return evaluation, oof, bars


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns="forward_return"), "forward_return"),
        (lambda f: f.assign(timestamp=f["timestamp"].dt.tz_localize(None)), "datetime64"),
        (lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True), "duplicate key"),
        (lambda f: f.assign(fold=np.where(f.index % 2 == 0, 0, 1)), "non-overlapping"),
        (lambda f: f.assign(planted=np.where(f.index == 3, np.inf, 0.0)), "infinite value at row 3"),
    ],
)
def test_bad_oof_frames_fail_loudly(small_evaluation, corrupt, message: str) -> None:
    evaluation, oof, _ = small_evaluation
    with pytest.raises(DataError, match=message):
        evaluate_oof(corrupt(oof), EvaluationParams(), models={"planted": "planted"}, market=evaluation.market)


def test_infer_periods_per_year() -> None:
    business_days = pd.Series(pd.bdate_range("2020-01-01", "2022-12-31", tz="UTC"))
    assert infer_periods_per_year(business_days) == 252
    hours = pd.date_range("2024-01-01", "2024-03-01", freq="h", tz="UTC")
    fx_hours = pd.Series(hours[hours.dayofweek < 5])  # 24x5
    assert infer_periods_per_year(fx_hours) == 24 * 260
    assert infer_periods_per_year(pd.Series(hours)) == 24 * 365  # 24x7 (crypto)
    weekly = pd.Series(pd.date_range("2020-01-03", periods=60, freq="W-FRI", tz="UTC"))
    assert infer_periods_per_year(weekly) == pytest.approx(365.25 / 7)
    with pytest.raises(DataError, match="at least two"):
        infer_periods_per_year(pd.Series(pd.to_datetime(["2024-01-02"] * 3, utc=True)))


def test_strategy_returns_match_the_evaluation(small_evaluation) -> None:
    evaluation, oof, _ = small_evaluation
    again = strategy_returns(oof, "planted", EvaluationParams(), evaluation.market, horizon=5)
    np.testing.assert_allclose(again["net_return"], evaluation.returns[("planted", "long_short")]["net_return"])


def test_metrics_json_leaderboard_plots_and_tear_sheet(small_evaluation, tmp_path: Path) -> None:
    evaluation, _, _ = small_evaluation
    text = metrics_json_text(evaluation)
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert set(metrics["baselines"]) == set(BASELINES)
    planted = metrics["models"]["planted"]
    assert set(planted) >= set(METRICS) and set(planted["strategies"]) == {"long_short", "topk"}
    assert planted["sharpe"] == planted["strategies"]["long_short"]["sharpe"]
    assert metrics["execution"] == "next_open" and metrics["primary_strategy"] == "long_short"
    table = leaderboard(evaluation)
    assert "strategy long_short" in table and "strategy topk" in table and "planted *" in table
    paths = {**write_plots(evaluation, tmp_path), **write_tear_sheets(evaluation, tmp_path)}
    for name, path in paths.items():
        if str(path).endswith(".png"):
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 200 and image.std() > 0.01, name
    assert pd.read_csv(tmp_path / "equity.csv").shape[1] == 1 + len(evaluation.names)
