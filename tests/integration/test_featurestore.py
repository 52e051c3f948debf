"""Feature definitions and the incremental engine: one plan, and the batch library's values bar by bar.

Data: the whole bundled real datasets (bokeh OHLCV with seeded quotes, skfolio closes, hourly
EURUSD from backtesting), plus small slices where a case needs control.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from alphaforge import alpha158
from alphaforge.cli import app
from alphaforge.data.ingest import IngestParams, load_source
from alphaforge.features import FEATURE_VERSION, FeatureParams, compute_features, feature_columns
from alphaforge.featurestore.definitions import ALL_BAR_COLUMNS, feature_definitions
from alphaforge.featurestore.incremental import IncrementalEngine, plan_for
from alphaforge.regimes import RegimeModel, RegimeParams, market_returns
from alphaforge.schema import DataError

TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def _with_quotes(bars: pd.DataFrame) -> pd.DataFrame:
    """Seeded quotes around the close (some sizes 0), so that spread and order_imbalance exist."""
    rng = np.random.default_rng(11)
    half_spread = bars["close"] * rng.uniform(0.0001, 0.002, len(bars))
    return bars.assign(
        bid=bars["close"] - half_spread, ask=bars["close"] + half_spread,
        bid_size=rng.integers(0, 4, len(bars)).astype(float) * 100,
        ask_size=rng.integers(0, 4, len(bars)).astype(float) * 100,
    )


def _incremental(bars: pd.DataFrame, params: FeatureParams, names: list[str]) -> pd.DataFrame:
    return IncrementalEngine(params, names).replay(bars)


def _assert_same(incremental: pd.DataFrame, batch: pd.DataFrame, names: list[str]) -> None:
    for name in names:
        np.testing.assert_allclose(incremental[name].to_numpy(), batch[name].to_numpy(), equal_nan=True,
                                   err_msg=name, **TOLERANCE)


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_symbol", [True, False])
@pytest.mark.parametrize("intraday", [True, False])
@pytest.mark.parametrize("columns", [ALL_BAR_COLUMNS, {"close"}, {"open", "high", "low", "close", "volume"}])
def test_definitions_follow_the_batch_plan(columns: set[str], intraday: bool, multi_symbol: bool) -> None:
    params = FeatureParams(cross_sectional_ranks=("rsi", "log_return_5", "volatility_20"))
    definitions = feature_definitions(params, columns=columns, multi_symbol=multi_symbol, intraday=intraday)
    assert [d.name for d in definitions] == plan_for(params, columns=columns, multi_symbol=multi_symbol,
                                                     intraday=intraday)
    assert all(d.version == FEATURE_VERSION and d.dtype == "float64" for d in definitions)
    assert all(set(d.inputs) <= columns | {"timestamp"} for d in definitions)


def test_each_window_is_the_history_the_feature_needs(bokeh_bars: pd.DataFrame) -> None:
    """A symbol's feature is NaN before its `window`-th bar and defined from it on (real OHLCV, FB included)."""
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2011-01-01", tz="UTC")].reset_index(drop=True)
    computed = compute_features(bars, FeatureParams())
    position = bars.groupby("symbol").cumcount().to_numpy()
    for definition in feature_definitions(FeatureParams(), columns=set(bars.columns)):
        values = computed[definition.name].to_numpy()
        assert np.isnan(values[position < definition.window - 1]).all(), definition.name
        assert not np.isnan(values[position == definition.window - 1]).any(), definition.name


def test_features_list_prints_every_definition_and_the_stage_command_remains(tmp_path, repo_root) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["features", "list", "--json", "--params", str(repo_root / "params.yaml")])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [d["name"] for d in listed] == [d.name for d in feature_definitions(
        FeatureParams(), columns={"open", "high", "low", "close", "volume"})]
    assert {"name", "description", "dtype", "inputs", "window", "version"} <= set(listed[0])
    result = runner.invoke(app, ["features", "--params", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "not found" in result.output  # no subcommand: the stage runs


# --------------------------------------------------------------------------------------------
# Incremental equals batch
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", ["bokeh_stocks", "skfolio_sp500", "backtesting_eurusd"])
def test_incremental_equals_batch_for_every_feature_on_the_whole_real_dataset(source: str) -> None:
    bars = load_source(IngestParams(source=source))
    if source == "bokeh_stocks":
        bars = _with_quotes(bars)
    params = FeatureParams()
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    multi_symbol = bars["symbol"].nunique() > 1
    intraday = source == "backtesting_eurusd"
    assert names == plan_for(params, columns=set(bars.columns), multi_symbol=multi_symbol, intraday=intraday)
    expected_extra = {"bokeh_stocks": {"spread", "order_imbalance", "atr_ratio", "log_return_5_cs_rank"},
                      "skfolio_sp500": {"volatility_20_cs_rank"}, "backtesting_eurusd": {"hour"}}[source]
    assert expected_extra <= set(names)
    incremental = _incremental(bars, params, names)
    assert incremental.index.equals(bars.index)
    pd.testing.assert_series_equal(incremental["symbol"], batch["symbol"], check_dtype=False)
    _assert_same(incremental, batch, names)


def test_incremental_equals_batch_with_other_windows_and_ragged_symbols(bokeh_bars: pd.DataFrame) -> None:
    """Long and odd windows, a 12-bar stochastic smoothing, ranks of Wilder features; FB starts in 2012."""
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2011-06-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams(
        return_horizons=(1, 3, 60), ma_windows=(2, 7, 200), rsi_window=9, macd_fast=5, macd_slow=35, macd_signal=4,
        bollinger_window=150, bollinger_k=1.5, atr_window=21, stochastic_window=5, stochastic_smooth=12,
        volatility_windows=(2, 130), volume_window=9, cross_sectional_ranks=("rsi", "atr_ratio", "volatility_130"),
    )
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    _assert_same(_incremental(bars, params, names), batch, names)


ALPHA158_SETS = {
    "alpha158": FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5", "STD20", "CORD10"), regimes=False),
    "alpha158_cs_rank": FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5",), regimes=False,
                                      processing="cs_rank"),
    "alpha158_cs_zscore": FeatureParams(set="alpha158", cross_sectional_ranks=(), regimes=False,
                                        processing="cs_zscore"),
    "basic_cs_zscore": FeatureParams(regimes=False, processing="cs_zscore"),
}


@pytest.mark.parametrize("variant", list(ALPHA158_SETS))
def test_incremental_equals_batch_for_every_alpha158_factor_and_processing(variant: str,
                                                                          bokeh_bars: pd.DataFrame) -> None:
    """Every Alpha158 factor (and the processed columns) from the ring buffers equals batch; FB starts in 2012."""
    bars = _with_quotes(bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2010-01-01", tz="UTC")]
                        .reset_index(drop=True))
    params = ALPHA158_SETS[variant]
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    assert names == plan_for(params, columns=set(bars.columns), multi_symbol=True, intraday=False)
    if params.set == "alpha158":
        assert len(set(names) & set(alpha158.all_names())) == 157
    _assert_same(_incremental(bars, params, names), batch, names)


def test_incremental_alpha158_on_close_only_data_in_any_row_order(skfolio_bars: pd.DataFrame) -> None:
    bars = skfolio_bars[skfolio_bars["timestamp"] >= pd.Timestamp("2021-01-01", tz="UTC")].reset_index(drop=True)
    params = ALPHA158_SETS["alpha158_cs_rank"]
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    assert "KMID" not in names and "RANK60" in names
    shuffled = bars.sample(frac=1.0, random_state=5)
    _assert_same(_incremental(shuffled, params, names).loc[bars.index], batch, names)


def test_a_restored_alpha158_state_continues_bit_for_bit(bokeh_bars: pd.DataFrame) -> None:
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-01-01", tz="UTC")].reset_index(drop=True)
    params = ALPHA158_SETS["alpha158_cs_zscore"]
    names = plan_for(params, columns=set(bars.columns), multi_symbol=True, intraday=False)
    cut = pd.Timestamp("2012-09-03", tz="UTC")
    engine = IncrementalEngine(params, names)
    engine.replay(bars[bars["timestamp"] < cut])
    restored = IncrementalEngine.from_state_bytes(params, names, engine.state_bytes())
    late = bars[bars["timestamp"] >= cut]
    continued = restored.replay(late)
    uninterrupted = IncrementalEngine(params, names).replay(bars).loc[late.index]
    np.testing.assert_array_equal(continued[names].to_numpy(), uninterrupted[names].to_numpy())


def test_alpha158_definitions_carry_their_inputs_and_history() -> None:
    params = ALPHA158_SETS["alpha158_cs_rank"]
    definitions = {d.name: d for d in feature_definitions(params)}
    assert definitions["ROC60"].window == 61 and definitions["SUMP5"].window == 6 and definitions["MA5"].window == 5
    assert definitions["KMID"].inputs == ("open", "high", "low", "close")
    assert definitions["CORD20"].inputs == ("close", "volume") and definitions["IMAX5"].inputs == ("high",)
    assert "cs_rank among the symbols" in definitions["MA5"].description and definitions["MA5"].cross_sectional
    assert "cs_rank" not in definitions["month"].description
    assert "VWAP0" not in definitions


def test_bars_may_arrive_in_any_row_order_and_symbols_in_any_order(skfolio_bars: pd.DataFrame) -> None:
    bars = skfolio_bars[skfolio_bars["timestamp"] >= pd.Timestamp("2021-01-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams()
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    shuffled = bars.sample(frac=1.0, random_state=3)
    incremental = _incremental(shuffled, params, names).loc[bars.index]
    _assert_same(incremental, batch, names)


def test_a_restored_state_continues_bit_for_bit(bokeh_bars: pd.DataFrame) -> None:
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-01-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams()
    names = plan_for(params, columns=set(bars.columns), multi_symbol=True, intraday=False)
    cut = pd.Timestamp("2012-09-01", tz="UTC")
    early, late = bars[bars["timestamp"] < cut], bars[bars["timestamp"] >= cut]
    engine = IncrementalEngine(params, names)
    engine.replay(early)
    restored = IncrementalEngine.from_state_bytes(params, names, engine.state_bytes())
    continued = restored.replay(late)
    uninterrupted = IncrementalEngine(params, names).replay(bars).loc[late.index]
    np.testing.assert_array_equal(continued[names].to_numpy(), uninterrupted[names].to_numpy())
    with pytest.raises(ValueError, match="other feature parameters"):
        IncrementalEngine.from_state_bytes(FeatureParams(rsi_window=10), names, engine.state_bytes())


def test_late_duplicate_and_bad_bars_are_refused_naming_the_symbol() -> None:
    params = FeatureParams()
    engine = IncrementalEngine(params, plan_for(params, columns={"close"}, multi_symbol=True, intraday=False))
    t0 = pd.Timestamp("2024-01-02", tz="UTC").value
    engine.update(t0, ["AAA", "BBB"], {"close": np.array([10.0, 20.0])})
    with pytest.raises(DataError, match="'BBB'.*not after its previous bar"):
        engine.update(t0, ["BBB"], {"close": np.array([21.0])})
    with pytest.raises(DataError, match="'AAA' has two bars"):
        engine.update(t0 + 1, ["AAA", "AAA"], {"close": np.array([10.0, 11.0])})
    with pytest.raises(DataError, match="'CCC'.*'close'.*> 0"):
        engine.update(t0 + 2, ["AAA", "CCC"], {"close": np.array([10.0, -1.0])})


# --------------------------------------------------------------------------------------------
# Optional group: exogenous market-wide series
# --------------------------------------------------------------------------------------------


def test_exogenous_series_are_off_by_default_and_leave_the_default_set_alone(bokeh_bars: pd.DataFrame) -> None:
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2013-01-01", tz="UTC")].reset_index(drop=True)
    default = compute_features(bars, FeatureParams())
    assert not [c for c in default.columns if c.startswith("exo_")]
    params = FeatureParams(exogenous={"enabled": True})
    joined = compute_features(bars, params)
    assert feature_columns(joined)[: len(feature_columns(default))] == feature_columns(default)
    pd.testing.assert_frame_equal(joined[default.columns], default)
    assert {"exo_sp500_log_return", "exo_vix", "exo_wti_log_return", "exo_credit_spread"} <= set(joined.columns)
    assert joined["exo_sp500_log_return"].notna().mean() > 0.95


def test_exogenous_values_are_as_of_each_bar_never_ahead_of_it(bokeh_bars: pd.DataFrame) -> None:
    """Truncation: the value at bar t is the same when the series are cut at t (what was known then)."""
    from alphaforge.featurestore.exogenous import ExogenousParams, load_exogenous

    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-01-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams(exogenous=ExogenousParams(enabled=True))
    computed = compute_features(bars, params)
    table = load_exogenous(params.exogenous)
    stamps = pd.DatetimeIndex(bars["timestamp"]).tz_localize(None).as_unit("ns").asi8
    names = params.exogenous.feature_names()
    np.testing.assert_array_equal(computed[names].to_numpy(), table.asof(stamps))
    for cut in np.unique(stamps)[::25]:
        rows = stamps <= cut
        np.testing.assert_array_equal(table.truncated(int(cut)).asof(stamps[rows]), table.asof(stamps[rows]))
    # a monthly average is known only from the next month: mid-June 2012 sees May's spread
    from arch.data import default

    yields = default.load()
    june = computed[computed["timestamp"] == pd.Timestamp("2012-06-15", tz="UTC")]["exo_credit_spread"]
    may = yields.loc["2012-05-01", "BAA"] - yields.loc["2012-05-01", "AAA"]
    assert (june == may).all()
    # intraday bars with a one-day delay see yesterday's S&P 500 return, not today's
    delayed = load_exogenous(ExogenousParams(enabled=True, daily_delay_hours=24))
    noon = pd.Timestamp("2012-06-15 12:00").value
    np.testing.assert_array_equal(delayed.asof(np.array([noon]))[0, 0],
                                  table.asof(np.array([pd.Timestamp("2012-06-14").value]))[0, 0])


def test_incremental_equals_batch_with_exogenous_series(bokeh_bars: pd.DataFrame) -> None:
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-01-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams(exogenous={"enabled": True})
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    assert [d.name for d in feature_definitions(params, columns=set(bars.columns))] == names
    _assert_same(_incremental(bars, params, names), batch, names)


# --------------------------------------------------------------------------------------------
# Optional group: headline sentiment (Loughran-McDonald)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def headlines_csv(tmp_path_factory: pytest.TempPathFactory, bokeh_bars: pd.DataFrame) -> Path:
    """Seeded headlines for the bokeh symbols (and one unknown): some at a bar's exact time, some between bars,
    some before a symbol's first bar, some after its last; naive timestamps (UTC) and offsets mixed."""
    rng = np.random.default_rng(8)
    phrases = ["record profit and strong gains", "lawsuit and heavy losses", "weak demand, layoffs announced",
               "board meeting scheduled", "upgrade after strong growth", "default risk and decline"]
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-06-01", tz="UTC")]
    stamps = bars["timestamp"].sample(300, random_state=1).to_numpy()
    offsets = rng.choice([0, 0, 5, 13, -30], size=300) * pd.Timedelta(hours=1)
    times = pd.DatetimeIndex(stamps) + pd.to_timedelta(offsets)
    rows = pd.DataFrame({
        "timestamp": [t.strftime("%Y-%m-%d %H:%M:%S") if i % 2 else t.isoformat() for i, t in enumerate(times)],
        "symbol": rng.choice([*bars["symbol"].unique(), "ZZZ"], size=300),
        "headline": rng.choice(phrases, size=300),
    })
    extra = pd.DataFrame({"timestamp": ["2000-01-01T00:00:00Z", "2030-01-01T00:00:00Z"], "symbol": ["AAPL", "AAPL"],
                          "headline": ["strong gains", "heavy losses"]})
    path = tmp_path_factory.mktemp("headlines") / "headlines.csv"
    pd.concat([rows, extra]).to_csv(path, index=False)
    return path


def test_sentiment_counts_each_headline_for_the_first_bar_at_or_after_it(
    bokeh_bars: pd.DataFrame, headlines_csv: Path
) -> None:
    from alphaforge.featurestore.sentiment import score

    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-06-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams(sentiment={"enabled": True, "headlines_path": str(headlines_csv)})
    computed = compute_features(bars, params)
    headlines = pd.read_csv(headlines_csv)
    headlines["timestamp"] = pd.to_datetime(headlines["timestamp"], utc=True, format="mixed")
    headlines["score"] = headlines["headline"].map(score)
    assert headlines["score"].gt(0).any() and headlines["score"].lt(0).any()
    previous = bars.groupby("symbol")["timestamp"].shift(1)
    for row in range(0, len(bars), 7):  # the plain definition, bar by bar
        since = previous[row] if pd.notna(previous[row]) else pd.Timestamp.min.tz_localize("UTC")
        mine = headlines[(headlines["symbol"] == bars["symbol"][row]) & (headlines["timestamp"] > since)
                         & (headlines["timestamp"] <= bars["timestamp"][row])]
        assert computed["sentiment_headline_count"][row] == len(mine)
        expected = mine["score"].mean() if len(mine) else np.nan
        np.testing.assert_allclose(computed["sentiment_lm_polarity"][row], expected, rtol=1e-12)
    assert computed["sentiment_headline_count"].sum() < len(headlines)  # ZZZ and the 2030 headline count nowhere


def test_incremental_equals_batch_with_sentiment(bokeh_bars: pd.DataFrame, headlines_csv: Path) -> None:
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-06-01", tz="UTC")].reset_index(drop=True)
    params = FeatureParams(sentiment={"enabled": True, "headlines_path": str(headlines_csv)},
                           exogenous={"enabled": True})
    batch = compute_features(bars, params)
    names = feature_columns(batch)
    assert names[-2:] == ["sentiment_lm_polarity", "sentiment_headline_count"]
    engine = IncrementalEngine(params, names)
    cut = pd.Timestamp("2012-12-01", tz="UTC")
    early = engine.replay(bars[bars["timestamp"] < cut])
    restored = IncrementalEngine.from_state_bytes(params, names, engine.state_bytes())
    late = restored.replay(bars[bars["timestamp"] >= cut])
    incremental = pd.concat([early, late]).loc[bars.index]
    _assert_same(incremental, batch, names)
    sentiment = ["sentiment_lm_polarity", "sentiment_headline_count"]
    np.testing.assert_array_equal(incremental[sentiment].to_numpy(), batch[sentiment].to_numpy())
    assert batch["sentiment_headline_count"].gt(0).sum() > 100
    with pytest.raises(ValueError, match="headlines_path"):
        FeatureParams(sentiment={"enabled": True})


# --------------------------------------------------------------------------------------------
# Regime probabilities (a fitted regime model): one filter step per update
# --------------------------------------------------------------------------------------------


def _regime_model(bars: pd.DataFrame, method: str = "hmm", n_regimes: int = 2) -> RegimeModel:
    """Fitted on the first third of the market's timestamps, as the regimes stage fits on a training window."""
    returns = market_returns(bars)
    return RegimeModel(RegimeParams(method=method, n_regimes=n_regimes, n_init=1)).fit(
        returns.iloc[: len(returns) // 3])


@pytest.mark.parametrize(("method", "n_regimes"), [("hmm", 2), ("hmm", 3), ("gmm", 2)])
def test_incremental_regime_probabilities_equal_batch_on_the_whole_real_dataset(
    bokeh_bars: pd.DataFrame, method: str, n_regimes: int,
) -> None:
    """Real OHLCV 2000-2013 with FB starting in 2012 (a symbol's first bar has no return for the market mean)."""
    model = _regime_model(bokeh_bars, method, n_regimes)
    params = FeatureParams()
    batch = compute_features(bokeh_bars, params, regime_model=model)
    names = feature_columns(batch)
    columns = [f"regime_prob_{k}" for k in range(n_regimes)]
    assert names[-n_regimes:] == columns
    assert names == plan_for(params, columns=set(bokeh_bars.columns), multi_symbol=True, intraday=False,
                             n_regimes=n_regimes)
    incremental = IncrementalEngine(params, names, regime_model=model).replay(bokeh_bars)
    assert batch[columns].notna().all(axis=1).mean() > 0.99
    _assert_same(incremental, batch, names)


def test_a_restored_state_continues_the_regime_filter_bit_for_bit(skfolio_bars: pd.DataFrame) -> None:
    model = _regime_model(skfolio_bars)
    params = FeatureParams()
    names = plan_for(params, columns=set(skfolio_bars.columns), multi_symbol=True, intraday=False, n_regimes=2)
    cut = pd.Timestamp("2019-06-01", tz="UTC")
    early, late = skfolio_bars[skfolio_bars["timestamp"] < cut], skfolio_bars[skfolio_bars["timestamp"] >= cut]
    engine = IncrementalEngine(params, names, regime_model=model)
    engine.replay(early)
    restored = IncrementalEngine.from_state_bytes(params, names, engine.state_bytes(), regime_model=model)
    continued = restored.replay(late)
    uninterrupted = IncrementalEngine(params, names, regime_model=model).replay(skfolio_bars).loc[late.index]
    np.testing.assert_array_equal(continued[names].to_numpy(), uninterrupted[names].to_numpy())
    other = RegimeModel(RegimeParams(n_init=1, seed=5)).fit(market_returns(skfolio_bars).iloc[:500])
    with pytest.raises(ValueError, match="other feature parameters, plan or version"):
        IncrementalEngine.from_state_bytes(params, names, engine.state_bytes(), regime_model=other)
    with pytest.raises(ValueError, match=r"\['regime_prob_0', 'regime_prob_1'\].*need a fitted regime model"):
        IncrementalEngine(params, names)


def test_regime_definitions_follow_the_plan_and_their_window_counts_market_timestamps(
    bokeh_bars: pd.DataFrame, tmp_path: Path, repo_root: Path,
) -> None:
    model = _regime_model(bokeh_bars, n_regimes=3)
    definitions = feature_definitions(FeatureParams(), columns=set(bokeh_bars.columns), regime_model=model)
    names = plan_for(FeatureParams(), columns=set(bokeh_bars.columns), multi_symbol=True, intraday=False,
                     n_regimes=3)
    assert [d.name for d in definitions] == names
    regimes = [d for d in definitions if d.group == "regime"]
    assert [d.name for d in regimes] == ["regime_prob_0", "regime_prob_1", "regime_prob_2"]
    assert all(d.window == 21 and d.recursive and d.inputs == ("close",) for d in regimes)
    computed = compute_features(bokeh_bars, FeatureParams(), regime_model=model)
    per_timestamp = computed.groupby("timestamp")["regime_prob_0"].first().to_numpy()
    assert np.isnan(per_timestamp[: regimes[0].window - 1]).all() and np.isfinite(per_timestamp[regimes[0].window - 1])
    path = model.save(tmp_path / "regimes.json")
    runner = CliRunner()
    result = runner.invoke(app, ["features", "list", "--json", "--params", str(repo_root / "params.yaml"),
                                 "--regime-model", str(path)])
    assert result.exit_code == 0, result.output
    assert [d["name"] for d in json.loads(result.output)][-3:] == ["regime_prob_0", "regime_prob_1", "regime_prob_2"]


def test_the_stream_restarts_a_suspended_symbol_where_validate_splits_it() -> None:
    """MSFT is suspended for two and a half years and the whole panel closes for two weeks: validate splits the
    series there and the batch features restart; the incremental engine with the same rule restarts at the same
    bars and equals the batch features of the split series everywhere."""
    from messy_panel import SUSPENSION, clean_panel

    from alphaforge.featurestore.incremental import SuspensionRule
    from alphaforge.validate import ValidationParams, as_series, assign_segments

    bars = clean_panel()
    bars = bars[bars["timestamp"] >= pd.Timestamp("2004-06-01", tz="UTC")].sort_values(["symbol", "timestamp"])
    bars = bars.reset_index(drop=True)
    rules = ValidationParams()
    segments = assign_segments(bars, rules)
    assert segments[bars["symbol"] == "MSFT"].max() >= 1  # the suspension splits MSFT
    params = FeatureParams(regimes=False)
    split = as_series(bars.assign(segment=segments)).drop(columns="segment")
    batch = compute_features(split, params)
    names = feature_columns(batch)
    engine = IncrementalEngine(params, names, suspensions=SuspensionRule(max_gap_bars=rules.max_gap_bars,
                                                                         max_closure_days=rules.max_closure_days))
    online = engine.replay(bars)
    _assert_same(online, batch, names)
    assert engine.restarts == int((segments.groupby(bars["symbol"]).max()).sum())
    back = bars["timestamp"] > SUSPENSION[1]
    first_back = bars.index[(bars["symbol"] == "MSFT") & back][0]
    assert np.isnan(online.at[first_back, "log_return_1"])  # no return across the suspension
    plain = IncrementalEngine(params, names).replay(bars)  # without the rule: a return across the suspension
    assert np.isfinite(plain.at[first_back, "log_return_1"])
    # a restart from the saved state (mid-suspension) continues exactly like the uninterrupted run
    rule = SuspensionRule(max_gap_bars=rules.max_gap_bars, max_closure_days=rules.max_closure_days)
    cut = pd.Timestamp("2007-03-01", tz="UTC")
    first = IncrementalEngine(params, names, suspensions=rule)
    first.replay(bars[bars["timestamp"] < cut])
    restored = IncrementalEngine.from_state_bytes(params, names, first.state_bytes(), suspensions=rule)
    late = bars[bars["timestamp"] >= cut]
    _assert_same(restored.replay(late), online.loc[late.index], names)
