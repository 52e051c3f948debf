"""The feature library: agreement with a plain pandas reference, causality, labels, edge cases.

Data: real bundled bars (bokeh OHLCV, skfolio closes) from the conftest fixtures, sliced
to a few years, plus small hand-built frames where a case needs exact control.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alphaforge.features as features_module
from alphaforge.features import (
    LABEL_COLUMNS,
    FeatureParams,
    compute_features,
    compute_labels,
    feature_columns,
)
from alphaforge.schema import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from feature_reference import reference_features  # noqa: E402

TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ohlcv(bokeh_bars: pd.DataFrame) -> pd.DataFrame:
    """Real daily OHLCV 2009-2013 (AAPL, GOOG, IBM, MSFT full; FB from 2012: ragged lengths)."""
    sliced = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2009-01-01", tz="UTC")]
    return sliced.reset_index(drop=True)


@pytest.fixture(scope="module")
def ohlcv_quotes(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """The real OHLCV with seeded quotes around the close, so that every feature exists; some sizes are 0."""
    rng = np.random.default_rng(11)
    half_spread = ohlcv["close"] * rng.uniform(0.0001, 0.002, len(ohlcv))
    bars = ohlcv.assign(
        bid=ohlcv["close"] - half_spread,
        ask=ohlcv["close"] + half_spread,
        bid_size=rng.integers(0, 4, len(ohlcv)).astype(float) * 100,
        ask_size=rng.integers(0, 4, len(ohlcv)).astype(float) * 100,
    )
    return bars


@pytest.fixture(scope="module")
def closes(skfolio_bars: pd.DataFrame) -> pd.DataFrame:
    """Real daily closes of 20 stocks, 2019-2022 (close only)."""
    sliced = skfolio_bars[skfolio_bars["timestamp"] >= pd.Timestamp("2019-01-01", tz="UTC")]
    return sliced.reset_index(drop=True)


def _hourly_bars() -> pd.DataFrame:
    """Two symbols of seeded hourly OHLCV (intraday: the hour feature exists)."""
    rng = np.random.default_rng(5)
    frames = []
    for symbol, n_bars in (("EURUSD", 400), ("GBPUSD", 360)):
        close = 1.2 * np.exp(np.cumsum(rng.normal(0, 0.001, n_bars)))
        spread = np.abs(rng.normal(0, 0.0005, n_bars)) * close
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": pd.date_range("2021-03-01 07:00", periods=n_bars, freq="h", tz="UTC"),
                    "symbol": symbol,
                    "open": close,
                    "high": close + spread,
                    "low": close - spread,
                    "close": close,
                    "volume": rng.integers(0, 1000, n_bars).astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _flat_bars() -> pd.DataFrame:
    """An illiquid symbol that never trades (flat bars, zero volume) next to one that stops trading for a while."""
    n_bars = 120
    rng = np.random.default_rng(3)
    moving = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n_bars)))
    moving[40:90] = moving[39]  # 50 flat bars in the middle
    volume = rng.integers(1, 1000, n_bars).astype(float)
    volume[40:90] = 0.0
    spread = np.where(np.arange(n_bars) // 40 == 1, 0.0, 0.2)
    timestamps = pd.date_range("2022-01-03", periods=n_bars, freq="B", tz="UTC")
    flat = pd.DataFrame(
        {"timestamp": timestamps, "symbol": "FLAT", "open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0,
         "volume": 0.0}
    )
    halting = pd.DataFrame(
        {"timestamp": timestamps, "symbol": "HALT", "open": moving, "high": moving + spread,
         "low": moving - spread, "close": moving, "volume": volume}
    )
    return pd.concat([flat, halting], ignore_index=True)


def _assert_frames_close(actual: pd.DataFrame, expected: pd.DataFrame, **tolerance: float) -> None:
    assert list(actual.columns) == list(expected.columns)
    for name in feature_columns(expected):
        np.testing.assert_allclose(
            actual[name].to_numpy(), expected[name].to_numpy(), equal_nan=True, err_msg=name, **tolerance
        )


# --------------------------------------------------------------------------------------------
# Agreement with the plain pandas reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_budget", [features_module._PANEL_CELL_BUDGET, 2_000])
def test_every_indicator_matches_the_pandas_reference_on_real_ohlcv(
    ohlcv_quotes: pd.DataFrame, cell_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small budget splits the symbols into several panels; the results must not change."""
    monkeypatch.setattr(features_module, "_PANEL_CELL_BUDGET", cell_budget)
    params = FeatureParams()
    _assert_frames_close(compute_features(ohlcv_quotes, params), reference_features(ohlcv_quotes, params), **TOLERANCE)


def test_every_indicator_matches_the_pandas_reference_on_real_closes(closes: pd.DataFrame) -> None:
    params = FeatureParams()
    _assert_frames_close(compute_features(closes, params), reference_features(closes, params), **TOLERANCE)


def test_non_default_windows_match_the_reference(ohlcv: pd.DataFrame) -> None:
    """Windows longer than the rolling-sum block (128 bars), odd windows, other MACD/Bollinger settings."""
    params = FeatureParams(
        return_horizons=(1, 3, 60), ma_windows=(2, 7, 200), rsi_window=9, macd_fast=5, macd_slow=35, macd_signal=4,
        bollinger_window=150, bollinger_k=1.5, atr_window=21, stochastic_window=5, stochastic_smooth=12,
        volatility_windows=(2, 130), volume_window=9, cross_sectional_ranks=("rsi", "volatility_130"),
    )
    computed = compute_features(ohlcv, params)
    assert {"log_return_60", "sma_ratio_200", "volatility_130", "rsi_cs_rank"} <= set(computed.columns)
    _assert_frames_close(computed, reference_features(ohlcv, params), **TOLERANCE)


def test_hourly_bars_get_the_hour_and_match_the_reference() -> None:
    bars = _hourly_bars()
    computed = compute_features(bars, FeatureParams())
    assert "hour" in computed.columns
    np.testing.assert_array_equal(computed["hour"], bars["timestamp"].dt.hour.astype(float))
    _assert_frames_close(computed, reference_features(bars, FeatureParams()), **TOLERANCE)


def test_cross_sectional_ranks_average_ties_like_pandas(closes: pd.DataFrame) -> None:
    """Every symbol shares the day of week at a timestamp: one big tie, rank (n + 1) / 2n."""
    params = FeatureParams(cross_sectional_ranks=("day_of_week", "log_return_1", "rsi"))
    computed = compute_features(closes, params)
    symbols_per_timestamp = closes.groupby("timestamp")["symbol"].transform("size")
    expected_tie = (symbols_per_timestamp + 1) / (2 * symbols_per_timestamp)
    np.testing.assert_allclose(computed["day_of_week_cs_rank"], expected_tie, rtol=1e-15)
    _assert_frames_close(computed, reference_features(closes, params), **TOLERANCE)


def test_row_ranks_are_exact_for_near_ties_signed_zeros_and_nans() -> None:
    """Values a few ulps apart share their sort key's high bits; they must still be ranked exactly."""
    rng = np.random.default_rng(2)
    ulps = rng.integers(0, 40, size=(300, 37))
    grid = 1.0 + ulps * np.spacing(1.0)  # 1.0 plus 0..39 ulps: many near ties
    grid[::3] = rng.standard_normal(grid[::3].shape).round(1)  # exact ties
    grid[1::5, ::4] = np.nan
    grid[2::7, :5] = 0.0
    grid[2::7, 5:9] = -0.0
    grid[3::11] = rng.standard_normal(grid[3::11].shape) * 1e300
    expected = pd.DataFrame(grid).rank(axis=1, pct=True).to_numpy()
    np.testing.assert_array_equal(features_module._pct_rank_rows(grid), expected)


def test_std_based_features_match_an_exact_two_pass_computation(ohlcv: pd.DataFrame) -> None:
    """Volatility and Bollinger against NumPy's two-pass std, window by window (no rolling sums at all)."""
    params = FeatureParams()
    computed = compute_features(ohlcv, params)
    for symbol, rows in ohlcv.groupby("symbol", sort=False):
        close = rows["close"].to_numpy()
        windows = np.lib.stride_tricks.sliding_window_view(close, 20)
        expected = (close[19:] - windows.mean(axis=1)) / (2.0 * windows.std(axis=1))
        np.testing.assert_allclose(computed.loc[rows.index[19:], "bollinger_position"], expected, rtol=1e-10,
                                   atol=1e-12, err_msg=symbol)
        returns = np.diff(np.log(close))
        expected_volatility = np.lib.stride_tricks.sliding_window_view(returns, 20).std(axis=1, ddof=1)
        np.testing.assert_allclose(computed.loc[rows.index[20:], "volatility_20"], expected_volatility,
                                   rtol=1e-10, atol=1e-15, err_msg=symbol)


def test_output_is_aligned_row_for_row_with_the_bars(ohlcv: pd.DataFrame) -> None:
    bars = ohlcv.set_axis(ohlcv.index * 3 + 1000)  # an index that is not 0..n-1
    computed = compute_features(bars, FeatureParams())
    assert computed.index.equals(bars.index)
    assert list(computed.columns[:2]) == ["timestamp", "symbol"]
    pd.testing.assert_series_equal(computed["timestamp"], bars["timestamp"])
    pd.testing.assert_series_equal(computed["symbol"], bars["symbol"])
    names = feature_columns(computed)
    assert names == list(computed.columns[2:])
    assert all(computed[name].dtype == np.float64 for name in names)
    assert {"log_return_1", "log_return_20", "rsi", "atr_ratio", "stochastic_k", "volume_ratio",
            "log_return_5_cs_rank", "day_of_week", "month"} <= set(names)
    assert "hour" not in names  # daily data
    # 1-bar log return: log(close_t / close_{t-1}) per symbol, NaN on each symbol's first bar
    first_bars = bars.groupby("symbol").head(1).index
    assert computed.loc[first_bars, "log_return_1"].isna().all()
    expected = np.log(bars["close"] / bars.groupby("symbol")["close"].shift(1))
    np.testing.assert_allclose(computed["log_return_1"], expected, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_feature_columns_leave_out_keys_bars_and_labels(ohlcv: pd.DataFrame) -> None:
    computed = compute_features(ohlcv, FeatureParams())
    dataset = pd.concat([computed, compute_labels(ohlcv, 5)[list(LABEL_COLUMNS)], ohlcv[["close"]]], axis=1)
    assert feature_columns(dataset) == feature_columns(computed)


# --------------------------------------------------------------------------------------------
# Causality: features at bar t use bars <= t only
# --------------------------------------------------------------------------------------------


def _assert_causal(compute: Callable[[pd.DataFrame], pd.DataFrame], bars: pd.DataFrame, n_cuts: int = 5) -> None:
    """For several cut times t, features computed on bars <= t equal the full-data features on those rows."""
    full = compute(bars)
    timestamps = np.sort(bars["timestamp"].unique())
    cuts = [timestamps[int(q * (len(timestamps) - 1))] for q in np.linspace(0.05, 0.95, n_cuts)]
    for cut in cuts:
        truncated_bars = bars[bars["timestamp"] <= cut]
        truncated = compute(truncated_bars)
        assert list(truncated.columns) == list(full.columns)
        expected = full.loc[truncated_bars.index]
        at_cut = (truncated_bars["timestamp"] == cut).to_numpy()
        for name in feature_columns(full):
            actual_values, expected_values = truncated[name].to_numpy(), expected[name].to_numpy()
            np.testing.assert_allclose(actual_values[at_cut], expected_values[at_cut], rtol=1e-12, atol=1e-12,
                                       equal_nan=True, err_msg=f"{name} at the cut {cut}")
            np.testing.assert_allclose(actual_values, expected_values, rtol=1e-12, atol=1e-12, equal_nan=True,
                                       err_msg=f"{name} on rows before the cut {cut}")


@pytest.mark.parametrize("dataset", ["ohlcv_quotes", "closes"])
def test_every_feature_is_causal(dataset: str, request: pytest.FixtureRequest) -> None:
    bars = request.getfixturevalue(dataset)
    _assert_causal(lambda frame: compute_features(frame, FeatureParams()), bars)


@pytest.mark.parametrize("processing", ["none", "cs_rank", "cs_zscore"])
@pytest.mark.parametrize("dataset", ["ohlcv_quotes", "closes"])
def test_every_alpha158_factor_is_causal_with_each_processing(dataset: str, processing: str,
                                                              request: pytest.FixtureRequest) -> None:
    """Alpha158 (and the per-timestamp processing, which must never mix timestamps) on data cut at t equals
    the full run up to t; small alpha158 panels too."""
    bars = request.getfixturevalue(dataset)
    params = FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5", "RANK20"), regimes=False,
                           processing=processing)
    _assert_causal(lambda frame: compute_features(frame, params), bars, n_cuts=3)


def test_alpha360_is_causal_in_panels_of_a_few_symbols(ohlcv: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alpha360 runs on panels of a few symbols at a time (Alpha158's kernel takes every symbol's run of bars)."""
    monkeypatch.setattr(features_module, "_ALPHA360_CELL_BUDGET", 700)
    params = FeatureParams(set="alpha360", cross_sectional_ranks=(), regimes=False)
    _assert_causal(lambda frame: compute_features(frame, params), ohlcv, n_cuts=3)


def test_every_feature_is_causal_on_hourly_bars_and_small_panels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "_PANEL_CELL_BUDGET", 600)
    _assert_causal(lambda frame: compute_features(frame, FeatureParams()), _hourly_bars())


def test_the_causality_check_catches_a_feature_that_peeks_one_bar_ahead(ohlcv: pd.DataFrame) -> None:
    def leaky(frame: pd.DataFrame) -> pd.DataFrame:
        computed = compute_features(frame, FeatureParams())
        computed["next_return"] = computed.groupby("symbol")["log_return_1"].shift(-1)
        return computed

    with pytest.raises(AssertionError, match="next_return"):
        _assert_causal(leaky, ohlcv)


def test_the_causality_check_catches_a_whole_history_normalisation(ohlcv: pd.DataFrame) -> None:
    """A subtler leak: scaling by the symbol's full-history std (future bars move it)."""

    def leaky(frame: pd.DataFrame) -> pd.DataFrame:
        computed = compute_features(frame, FeatureParams())
        scale = computed.groupby("symbol")["log_return_1"].transform("std")
        computed["zscored_return"] = computed["log_return_1"] / scale
        return computed

    with pytest.raises(AssertionError, match="zscored_return"):
        _assert_causal(leaky, ohlcv)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _tiny_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05",
                 "2024-01-01", "2024-01-02", "2024-01-03"], utc=True,
            ),
            "symbol": ["AAA"] * 5 + ["BBB"] * 3,
            "close": [100.0, 110.0, 99.0, 99.0, 121.0, 50.0, 25.0, 50.0],
        }
    )


def test_labels_by_hand_on_a_tiny_frame() -> None:
    labels = compute_labels(_tiny_bars(), horizon=2)
    assert list(labels.columns) == ["timestamp", "symbol", *LABEL_COLUMNS]
    nan = math.nan
    log = math.log
    # closes only: a signal from bar t trades at bar t+1's close (next_close), so labels start there
    assert labels.attrs["execution"] == "next_close"
    expected_return = [log(99 / 110), log(121 / 99), nan, nan, nan, nan, nan, nan]
    expected_direction = [0.0, 1.0, nan, nan, nan, nan, nan, nan]
    expected_return_1 = [log(99 / 110), log(99 / 99), log(121 / 99), nan, nan, log(50 / 25), nan, nan]
    expected_volatility = [
        statistics.stdev([log(110 / 100), log(99 / 110)]),
        statistics.stdev([log(99 / 110), log(99 / 99)]),
        statistics.stdev([log(99 / 99), log(121 / 99)]),
        nan, nan,
        statistics.stdev([log(25 / 50), log(50 / 25)]),
        nan, nan,
    ]
    np.testing.assert_allclose(labels["forward_return"], expected_return, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(labels["forward_direction"], expected_direction)
    np.testing.assert_allclose(labels["forward_return_1"], expected_return_1, rtol=1e-12, atol=1e-15, equal_nan=True)
    np.testing.assert_allclose(labels["forward_volatility"], expected_volatility, rtol=1e-12, equal_nan=True)


def test_labels_never_reach_into_the_next_symbol(ohlcv: pd.DataFrame) -> None:
    horizon = 5
    labels = compute_labels(ohlcv, horizon)
    assert labels.attrs["execution"] == "next_open"
    tails = ohlcv.groupby("symbol").tail(horizon + 1).index
    assert labels.loc[tails, ["forward_return", "forward_direction"]].isna().all().all()
    assert labels.loc[ohlcv.groupby("symbol").tail(horizon).index, "forward_volatility"].isna().all()
    last = ohlcv.groupby("symbol").tail(2).index
    assert labels.loc[last, "forward_return_1"].isna().all()
    others = labels.index.difference(tails)
    assert labels.loc[others, list(LABEL_COLUMNS)].notna().all().all()
    # and they are the per-symbol shift of the next bar's open, computed the plain way
    opens = ohlcv.groupby("symbol")["open"]
    expected = np.log(opens.shift(-horizon - 1) / opens.shift(-1))
    np.testing.assert_allclose(labels["forward_return"], expected, rtol=1e-12, atol=1e-15, equal_nan=True)
    one_bar = np.log(ohlcv["close"] / ohlcv.groupby("symbol")["close"].shift(1))
    expected_volatility = (
        one_bar.groupby(ohlcv["symbol"]).rolling(horizon).std().reset_index(level=0, drop=True).sort_index()
    )
    expected_volatility = expected_volatility.groupby(ohlcv["symbol"]).shift(-horizon)
    np.testing.assert_allclose(labels["forward_volatility"], expected_volatility, rtol=1e-9, atol=1e-12,
                               equal_nan=True)


def test_one_bar_horizon_has_no_forward_volatility_and_bad_horizons_raise() -> None:
    labels = compute_labels(_tiny_bars(), horizon=1)
    assert labels["forward_volatility"].isna().all()
    np.testing.assert_array_equal(labels["forward_return"], labels["forward_return_1"])
    for horizon in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="horizon"):
            compute_labels(_tiny_bars(), horizon=horizon)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Edge cases and input checks
# --------------------------------------------------------------------------------------------


def test_flat_illiquid_bars_give_defined_values_and_no_inf() -> None:
    bars = _flat_bars()
    params = FeatureParams()
    computed = compute_features(bars, params)
    values = computed[feature_columns(computed)].to_numpy()
    assert not np.isinf(values).any()

    flat = computed[bars["symbol"] == "FLAT"].iloc[60:]  # every window is full here
    assert (flat["rsi"] == 50.0).all()
    assert (flat["stochastic_k"] == 0.5).all() and (flat["stochastic_d"] == 0.5).all()
    assert (flat["bollinger_position"] == 0.0).all()
    assert (flat["volatility_5"] == 0.0).all() and (flat["volatility_20"] == 0.0).all()
    assert (flat["atr_ratio"] == 0.0).all() and (flat["log_return_20"] == 0.0).all()
    assert flat["volume_ratio"].isna().all() and flat["log_dollar_volume"].isna().all()
    np.testing.assert_allclose(flat[["sma_ratio_50", "ema_ratio_50", "macd", "macd_hist"]], 0.0, atol=1e-14)

    halted = computed[bars["symbol"] == "HALT"].iloc[70:90]  # 30+ bars into the halt
    assert (halted["volatility_20"] == 0.0).all() and (halted["bollinger_position"] == 0.0).all()
    assert (halted["stochastic_k"] == 0.5).all()
    assert halted["volume_ratio"].isna().all()
    _assert_frames_close(computed, reference_features(bars, params), **TOLERANCE)


def test_close_only_data_skips_the_ohlc_features_and_says_why(
    closes: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="alphaforge.features"):
        computed = compute_features(closes, FeatureParams())
    names = set(feature_columns(computed))
    assert not names & {"atr_ratio", "stochastic_k", "stochastic_d", "volume_ratio", "log_dollar_volume",
                        "spread", "order_imbalance"}
    assert {"log_return_1", "rsi", "macd", "volatility_20", "volatility_20_cs_rank"} <= names
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for feature, column in (("atr_ratio", "'high'"), ("stochastic_k", "'low'"), ("volume_ratio", "'volume'"),
                            ("spread", "'bid'"), ("order_imbalance", "'bid_size'")):
        assert any(feature in m and column in m for m in messages), (feature, messages)


def test_a_single_symbol_gets_no_cross_sectional_ranks(ohlcv: pd.DataFrame) -> None:
    one = ohlcv[ohlcv["symbol"] == "IBM"].reset_index(drop=True)
    computed = compute_features(one, FeatureParams())
    assert not [c for c in computed.columns if c.endswith("_cs_rank")]
    _assert_frames_close(computed, reference_features(one, FeatureParams()), **TOLERANCE)


def test_quotes_give_spread_and_order_imbalance(ohlcv_quotes: pd.DataFrame) -> None:
    computed = compute_features(ohlcv_quotes, FeatureParams())
    mid = (ohlcv_quotes["bid"] + ohlcv_quotes["ask"]) / 2
    np.testing.assert_allclose(computed["spread"], (ohlcv_quotes["ask"] - ohlcv_quotes["bid"]) / mid, rtol=1e-12)
    both_empty = (ohlcv_quotes["bid_size"] == 0) & (ohlcv_quotes["ask_size"] == 0)
    assert both_empty.any() and (computed.loc[both_empty, "order_imbalance"] == 0.0).all()
    assert computed["order_imbalance"].between(-1, 1).all()


@pytest.mark.parametrize(
    ("scramble", "message"),
    [
        (lambda b: b.iloc[[1, 0, *range(2, len(b))]], "time goes backwards"),
        (lambda b: pd.concat([b[b["symbol"] == "MSFT"], b[b["symbol"] != "MSFT"]]), "comes after symbol"),
        (lambda b: pd.concat([b.iloc[:3], b.iloc[2:]]), "duplicate timestamp"),
        (lambda b: b.sample(frac=1.0, random_state=0), "sorted_by_symbol_then_time"),
    ],
    ids=["time-backwards", "symbols-out-of-order", "duplicate-bar", "shuffled"],
)
def test_unsorted_bars_raise(ohlcv: pd.DataFrame, scramble: Callable[[pd.DataFrame], pd.DataFrame],
                             message: str) -> None:
    with pytest.raises(DataError, match=message):
        compute_features(scramble(ohlcv), FeatureParams())
    with pytest.raises(DataError, match=message):
        compute_labels(scramble(ohlcv), 5)


def test_bad_values_raise_naming_column_and_row(ohlcv: pd.DataFrame) -> None:
    for column, value in (("close", 0.0), ("close", np.nan), ("high", np.inf), ("volume", -1.0)):
        broken = ohlcv.copy()
        broken.loc[7, column] = value
        with pytest.raises(DataError, match=rf"column '{column}', row 7"):
            compute_features(broken, FeatureParams())
    with pytest.raises(DataError, match="lack required column"):
        compute_features(ohlcv.drop(columns="close"), FeatureParams())


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="extra"):
        FeatureParams(rsi_windw=14)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="cross_sectional_ranks"):
        FeatureParams(cross_sectional_ranks=("log_return_3",))
    with pytest.raises(ValueError, match="macd_fast"):
        FeatureParams(macd_fast=30, macd_slow=26)
    with pytest.raises(ValueError, match="volatility_windows"):
        FeatureParams(volatility_windows=(1,))
    with pytest.raises(ValueError, match="frozen"):
        FeatureParams().rsi_window = 3  # type: ignore[misc]
