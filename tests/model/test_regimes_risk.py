"""Regimes (HMM / mixture, causal filtering) and risk forecasts (GARCH, LightGBM, EWMA; VaR with Kupiec)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.regimes import (
    RegimeModel,
    RegimeParams,
    apply_regime_features,
    current_regime,
    market_returns,
    regime_columns,
    regime_features,
)
from alphaforge.risk import (
    RiskParams,
    compare_risk_models,
    compare_risk_panel,
    garch_forecast,
    kupiec_test,
    mse,
    qlike,
    value_at_risk,
)
from alphaforge.schema import DataError

FAST_REGIMES = {"n_init": 1, "n_iter": 100}
FAST_RISK = RiskParams(lightgbm={"n_estimators": 60, "learning_rate": 0.05, "num_leaves": 4,
                                 "min_child_samples": 100})


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.Series]:
    """A synthetic market with a planted calm/turbulent chain (turbulent: 2.5x volatility); truth per timestamp."""
    bars, truth = make_synthetic(SyntheticParams(n_symbols=5, n_bars=3000, seed=3, regime_switch_prob=0.01))
    regime = truth.groupby("timestamp")["regime"].first()
    regime.index = pd.DatetimeIndex(regime.index)
    return bars, regime


def simulate_garch(n: int, seed: int, omega: float = 0.02, alpha: float = 0.08, beta: float = 0.9
                   ) -> tuple[pd.Series, np.ndarray]:
    """GARCH(1,1) returns (log, as fractions) with normal errors, and the true conditional std of each return."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal(n)
    variance = omega / (1.0 - alpha - beta)
    returns, sigma = np.empty(n), np.empty(n)
    for t in range(n):
        sigma[t] = math.sqrt(variance)
        returns[t] = sigma[t] * shocks[t]
        variance = omega + alpha * returns[t] ** 2 + beta * variance
    index = pd.date_range("2000-01-03", periods=n, freq="B", tz="UTC")
    return pd.Series(returns / 100.0, index=index), sigma / 100.0


# ------------------------------------------------------------------------------------------------ regimes


@pytest.mark.parametrize("method", ["hmm", "gmm"])
def test_planted_regimes_are_recovered_out_of_sample(planted: tuple[pd.DataFrame, pd.Series], method: str) -> None:
    bars, truth = planted
    returns = market_returns(bars)
    fit_end = returns.index[1500]
    model = RegimeModel(RegimeParams(method=method, **FAST_REGIMES)).fit(returns[returns.index <= fit_end])
    predicted = model.predict(returns)
    test = (returns.index > fit_end) & predicted.notna().to_numpy()
    accuracy = float(np.mean(predicted[test].to_numpy() == truth[test].to_numpy()))
    majority = max(truth[test].mean(), 1 - truth[test].mean())
    assert accuracy > 0.8, accuracy
    assert accuracy > majority + 0.15, (accuracy, majority)


def test_filtered_probabilities_never_change_when_future_bars_arrive(planted: tuple[pd.DataFrame, pd.Series]) -> None:
    bars, _ = planted
    returns = market_returns(bars)
    model = RegimeModel(RegimeParams(**FAST_REGIMES)).fit(returns.iloc[:1500])
    full = model.predict_proba(returns)
    for cut in (1600, 2200):
        partial = model.predict_proba(returns.iloc[:cut])
        assert np.array_equal(partial.to_numpy(), full.iloc[:cut].to_numpy(), equal_nan=True)
    # The forward filter is exact: at the last bar of any prefix it equals hmmlearn's posterior (at the
    # final bar smoothing has no future to use), while hmmlearn's posterior of earlier bars is smoothed.
    from hmmlearn.hmm import GaussianHMM

    from alphaforge.regimes import regime_inputs

    hmm = GaussianHMM(n_components=2, covariance_type="full", init_params="")
    hmm.startprob_, hmm.transmat_ = model.startprob_, model.transmat_
    hmm.means_, hmm.covars_ = model.means_, model.covars_
    inputs = regime_inputs(returns, 20)
    first = int(np.flatnonzero(inputs.notna().all(axis=1).to_numpy())[0])
    z = ((inputs - model.center_) / model.scale_).to_numpy()
    switches = np.flatnonzero(np.diff(np.argmax(full.to_numpy()[first:], axis=1)) != 0) + first
    for cut in (first + 5, *switches[:5] + 1, 1750, 2999):
        smoothed_last = hmm.predict_proba(z[first:cut + 1])[-1]
        np.testing.assert_allclose(full.iloc[cut].to_numpy(), smoothed_last, atol=1e-9)


def test_fit_uses_training_bars_only_and_regimes_are_ordered_by_volatility(
    planted: tuple[pd.DataFrame, pd.Series],
) -> None:
    bars, _ = planted
    fit_end = pd.Timestamp(sorted(bars["timestamp"].unique())[1500])
    params = RegimeParams(**FAST_REGIMES)
    model, features = regime_features(bars, params, fit_end)
    shocked = bars.copy()
    later = shocked["timestamp"] > fit_end
    rng = np.random.default_rng(0)
    shocked.loc[later, "close"] *= np.exp(rng.normal(0, 0.05, later.sum()))
    shocked_model, shocked_features = regime_features(shocked, params, fit_end)
    assert np.array_equal(model.means_, shocked_model.means_)
    assert np.array_equal(model.transmat_, shocked_model.transmat_)
    before = (features["timestamp"] <= fit_end).to_numpy()
    pd.testing.assert_frame_equal(features[before], shocked_features[before])
    # regime 0 is the calm one: the market's realised volatility is lower there
    returns = market_returns(bars)
    regime = model.predict(returns)
    assert returns[regime == 0].std() < returns[regime == 1].std() / 1.5
    # label switching: a different EM seed gives the same labels
    other = RegimeModel(RegimeParams(seed=11, **FAST_REGIMES)).fit(returns[returns.index <= fit_end])
    agree = (other.predict(returns) == regime)[regime.notna()]
    assert agree.mean() > 0.95


def test_regime_features_frame_persistence_and_current_regime(
    planted: tuple[pd.DataFrame, pd.Series], tmp_path,
) -> None:
    bars, _ = planted
    sample = bars[bars["symbol"].isin(["SYN0000", "SYN0001"])].iloc[::-1]  # any row order is kept
    fit_end = pd.Timestamp(sorted(bars["timestamp"].unique())[1000])
    params = RegimeParams(method="gmm", n_regimes=3, n_init=1)
    model, features = regime_features(sample, params, fit_end)
    assert list(features.columns) == ["timestamp", "symbol", *regime_columns(3)]
    assert features.index.equals(sample.index)
    assert features["symbol"].tolist() == sample["symbol"].tolist()
    probabilities = features[[f"regime_prob_{k}" for k in range(3)]].to_numpy()
    defined = np.isfinite(probabilities).all(axis=1)
    assert defined.mean() > 0.98  # only the volatility window at the start is undefined
    np.testing.assert_allclose(probabilities[defined].sum(axis=1), 1.0, atol=1e-9)
    assert set(features.loc[defined, "regime"].unique()) <= {0.0, 1.0, 2.0}
    per_time = features.groupby("timestamp")["regime_prob_0"].nunique(dropna=False)
    assert (per_time == 1).all()  # one market-wide regime per timestamp
    path = model.save(tmp_path / "regimes.json")
    loaded = RegimeModel.load(path)
    returns = market_returns(sample)
    pd.testing.assert_frame_equal(loaded.predict_proba(returns), model.predict_proba(returns))
    pd.testing.assert_frame_equal(apply_regime_features(sample, loaded), features)  # serving: no refit
    now = current_regime(loaded, returns)
    assert now["regime"] == int(model.predict(returns).iloc[-1])
    assert math.isclose(sum(now["probabilities"]), 1.0, rel_tol=1e-9)


def test_regime_inputs_are_checked() -> None:
    index = pd.date_range("2020-01-01", periods=50, freq="B", tz="UTC")
    short = pd.Series(np.random.default_rng(0).normal(0, 0.01, 50), index=index)
    with pytest.raises(DataError, match="training bars with defined inputs"):
        RegimeModel(RegimeParams()).fit(short)
    bars = pd.DataFrame({"timestamp": index, "symbol": "A", "close": np.linspace(10, 11, 50)})
    bars.loc[7, "close"] = -1.0
    with pytest.raises(DataError, match=r"'close'.*row 7"):
        market_returns(bars)
    with pytest.raises(RuntimeError, match="fit"):
        RegimeModel().predict_proba(short)


# ------------------------------------------------------------------------------------------------ risk


def test_kupiec_and_losses_match_hand_computation() -> None:
    breaches = np.zeros(250, dtype=bool)
    breaches[[3, 50, 99, 150, 200]] = True
    result = kupiec_test(breaches, 0.01)
    by_hand = -2 * (245 * math.log(0.99) + 5 * math.log(0.01) - 245 * math.log(0.98) - 5 * math.log(0.02))
    assert result["breaches"] == 5 and result["breach_rate"] == 0.02
    assert math.isclose(result["lr_stat"], by_hand, rel_tol=1e-12)
    assert math.isclose(result["p_value"], stats.chi2.sf(by_hand, 1), rel_tol=1e-12)
    none = kupiec_test(np.zeros(300, dtype=bool), 0.01)
    assert math.isclose(none["lr_stat"], -2 * 300 * math.log(0.99), rel_tol=1e-12)
    assert kupiec_test(np.r_[np.ones(5), np.zeros(495)].astype(bool), 0.01)["p_value"] == 1.0
    # QLIKE and MSE on variances: s = [1, 4], f = [2, 2]
    assert math.isclose(qlike(np.array([1.0, 4.0]), np.array([2.0, 2.0])), 0.25, rel_tol=1e-12)
    assert qlike(np.array([1.0, 0.0, 4.0]), np.array([1.0, 3.0, 4.0])) == 0.0  # r = 0 is left out
    assert math.isclose(mse(np.array([1.0, 4.0]), np.array([2.0, 2.0])), 2.5)
    # VaR: the normal quantile, and a unit-variance Student t that breaches with probability alpha
    assert math.isclose(float(value_at_risk(0.02, 0.05)), 0.02 * 1.6448536269514722, rel_tol=1e-9)
    var_t = float(value_at_risk(0.02, 0.01, dist="t", nu=5.0))
    scale = 0.02 * math.sqrt(3.0 / 5.0)  # std of a t(5) is sqrt(5/3)
    assert math.isclose(stats.t.cdf(-var_t / scale, 5.0), 0.01, rel_tol=1e-9)
    with pytest.raises(ValueError, match="nu > 2"):
        value_at_risk(0.02, 0.01, dist="t", nu=2.0)


def test_var_breach_rates_are_near_nominal_on_synthetic_garch_data() -> None:
    pooled: dict[float, list[np.ndarray]] = {0.01: [], 0.05: []}
    too_tight: list[np.ndarray] = []
    for seed in (1, 2, 3):
        returns, _ = simulate_garch(3500, seed)
        forecast = garch_forecast(returns, returns.index[1499], RiskParams(garch_mean="zero"))
        sigma = forecast["sigma"].to_numpy()[1499:-1]
        realised = returns.to_numpy()[1500:]
        for alpha, hits in pooled.items():
            hits.append(realised < -value_at_risk(sigma, alpha))
        too_tight.append(realised < -value_at_risk(0.7 * sigma, 0.01))
    for alpha, hits in pooled.items():
        result = kupiec_test(np.concatenate(hits), alpha)
        standard_error = math.sqrt(alpha * (1 - alpha) / result["n"])
        assert abs(result["breach_rate"] - alpha) < 3 * standard_error, result
        assert result["p_value"] > 0.01, result
    rejected = kupiec_test(np.concatenate(too_tight), 0.01)
    assert rejected["breach_rate"] > 0.02 and rejected["p_value"] < 1e-6


def test_garch_forecast_is_causal_and_fitted_on_training_data_only() -> None:
    returns, true_sigma = simulate_garch(2500, seed=4)
    train_end = returns.index[1499]
    full = garch_forecast(returns, train_end)
    cut = garch_forecast(returns.iloc[:2000], train_end)
    np.testing.assert_allclose(cut["sigma"].to_numpy(), full["sigma"].to_numpy()[:2000], rtol=1e-10)
    changed = returns.copy()
    changed.iloc[1600:] *= 3.0
    moved = garch_forecast(changed, train_end)
    assert moved.attrs["params"] == full.attrs["params"]
    np.testing.assert_allclose(moved["sigma"].to_numpy()[:1600], full["sigma"].to_numpy()[:1600], rtol=1e-10)
    # row t forecasts r[t+1]: it tracks the true conditional std of the next return
    assert np.corrcoef(full["sigma"].to_numpy()[1500:-1], true_sigma[1501:])[0, 1] > 0.95


def test_compare_risk_models_out_of_sample_on_garch_data() -> None:
    returns, _ = simulate_garch(3000, seed=5)
    train_end = returns.index[1499]
    metrics, forecasts = compare_risk_models(returns, train_end, FAST_RISK)
    json.dumps(metrics, allow_nan=False)
    assert metrics["n_test"] == 1500 and metrics["test_start"] == str(returns.index[1500])
    realised = returns.to_numpy()[1500:] ** 2
    constant = qlike(realised, np.full(len(realised), returns.iloc[:1500].var()))
    models = metrics["models"]
    assert models["garch"]["qlike"] < constant - 0.02
    assert models["lightgbm"]["qlike"] < constant
    assert models["garch"]["qlike"] <= min(models["lightgbm"]["qlike"], models["ewma"]["qlike"]) + 0.01
    assert metrics["best_by_qlike"] in ("garch", "lightgbm", "ewma")
    assert set(models["garch"]["var"]) == {"0.01", "0.05"}
    assert {"next_return", "sigma_garch", "sigma_lightgbm", "sigma_ewma"} <= set(forecasts.columns)
    assert (forecasts["sigma_lightgbm"].dropna() > 0).all()
    with pytest.raises(DataError, match="rule: finite"):
        compare_risk_models(returns.where(returns.index != returns.index[10]), train_end, FAST_RISK)


def test_risk_models_beat_constant_variance_on_real_sp500() -> None:
    import arch.data.sp500

    prices = arch.data.sp500.load()["Adj Close"]
    returns = np.log(prices).diff().dropna()
    returns.index = pd.DatetimeIndex(returns.index).tz_localize("UTC")
    returns = returns["2000":"2012"]
    train_end = pd.Timestamp("2006-12-29", tz="UTC")
    metrics, _ = compare_risk_models(returns, train_end, FAST_RISK)
    test = returns[returns.index > train_end].to_numpy()
    constant = qlike(test**2, np.full(len(test), returns[returns.index <= train_end].var()))
    for name in ("garch", "lightgbm", "ewma"):
        assert metrics["models"][name]["qlike"] < 0.8 * constant, (name, metrics["models"][name]["qlike"], constant)


def test_compare_risk_panel_scores_every_symbol(bokeh_bars: pd.DataFrame) -> None:
    bars = bokeh_bars[bokeh_bars["symbol"].isin(["AAPL", "IBM"]) & (bokeh_bars["timestamp"] < "2008-01-01")]
    metrics, forecasts = compare_risk_panel(bars, pd.Timestamp("2005-12-30", tz="UTC"), FAST_RISK)
    assert set(metrics["symbols"]) == {"AAPL", "IBM"}
    assert set(metrics["mean"]) == {"garch", "lightgbm", "ewma"}
    json.dumps(metrics, allow_nan=False)
    assert list(forecasts.columns[:2]) == ["timestamp", "symbol"]
    assert forecasts.groupby("symbol").size().to_dict() == bars.groupby("symbol").size().sub(1).to_dict()


# ------------------------------------------------------------------------------- regimes as model features


@pytest.fixture(scope="module")
def fitted_regimes(planted: tuple[pd.DataFrame, pd.Series]) -> tuple[pd.DataFrame, RegimeModel]:
    """The planted market (first 1,200 bars) and a regime model fitted on its first 600 timestamps."""
    bars, _ = planted
    stamps = sorted(bars["timestamp"].unique())
    bars = bars[bars["timestamp"] <= stamps[1199]].reset_index(drop=True)
    model, _ = regime_features(bars, RegimeParams(**FAST_REGIMES), pd.Timestamp(stamps[599]))
    return bars, model


def test_regime_probabilities_become_the_last_feature_columns(
    fitted_regimes: tuple[pd.DataFrame, RegimeModel],
) -> None:
    from alphaforge.features import FeatureParams, compute_features, feature_columns, feature_plan

    bars, model = fitted_regimes
    columns = [f"regime_prob_{k}" for k in range(model.params.n_regimes)]
    features = compute_features(bars, FeatureParams(), regime_model=model)
    assert feature_columns(features)[-len(columns):] == columns
    expected = apply_regime_features(bars, model)
    np.testing.assert_array_equal(features[columns].to_numpy(), expected[columns].to_numpy())
    defined = features[columns].notna().all(axis=1)
    assert defined.mean() > 0.95
    np.testing.assert_allclose(features.loc[defined, columns].sum(axis=1), 1.0, atol=1e-12)
    assert feature_plan(FeatureParams(), columns=set(bars.columns), multi_symbol=True, intraday=False,
                        n_regimes=model.params.n_regimes) == feature_columns(features)
    # the other features do not move; no model or the switch off: no regime columns at all
    plain = compute_features(bars, FeatureParams())
    pd.testing.assert_frame_equal(features.drop(columns=columns), plain)
    off = compute_features(bars, FeatureParams(regimes=False), regime_model=model)
    pd.testing.assert_frame_equal(off, plain)


def test_regime_features_are_causal_when_later_bars_are_cut_off(
    fitted_regimes: tuple[pd.DataFrame, RegimeModel],
) -> None:
    from alphaforge.features import FeatureParams, compute_features

    bars, model = fitted_regimes
    columns = [f"regime_prob_{k}" for k in range(model.params.n_regimes)]
    full = compute_features(bars, FeatureParams(), regime_model=model)
    stamps = sorted(bars["timestamp"].unique())
    for cut in (stamps[25], stamps[400], stamps[900], stamps[-2]):  # inside the volatility window, fit, test
        kept = (bars["timestamp"] <= cut).to_numpy()
        truncated = compute_features(bars[kept], FeatureParams(), regime_model=model)
        np.testing.assert_array_equal(truncated[columns].to_numpy(), full.loc[kept, columns].to_numpy())


def test_features_stage_merges_the_regimes_stage_model_and_train_records_it(
    fitted_regimes: tuple[pd.DataFrame, RegimeModel], tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alphaforge.config import Params
    from alphaforge.features import feature_columns
    from alphaforge.io import write_parquet_atomic
    from alphaforge.paths import Paths
    from alphaforge.splits import first_training_end
    from alphaforge.stages import features, regimes
    from alphaforge.stages.regimes import regime_model_of

    bars, _ = fitted_regimes
    paths = Paths(tmp_path)  # the stages run on the layout under a temporary root
    write_parquet_atomic(bars, paths.validated_bars)
    params = Params.model_validate({"regimes": FAST_REGIMES,
                                    "train": {"walk_forward": {"n_splits": 3, "min_train_size": 400}}})
    with pytest.raises(FileNotFoundError, match=r"models/regimes/model.json is missing.*dvc repro regimes"):
        features.run(params, root=tmp_path)
    regimes_summary = regimes.run(params, root=tmp_path)
    summary = features.run(params, root=tmp_path)
    model = RegimeModel.load(paths.regime_model)
    # the picture of it: a real PNG (two panels: shaded cumulative return, probabilities), no temporary left
    import matplotlib.image

    image = matplotlib.image.imread(paths.regime_plot)
    assert image.shape[0] >= 400 and image.shape[1] >= 800 and image[..., :3].std() > 0.05
    assert sorted(p.name for p in paths.regime_plot.parent.iterdir()) == ["regimes.png", "summary.json"]
    dataset = pd.read_parquet(paths.dataset)
    columns = ["regime_prob_0", "regime_prob_1"]
    assert summary["features"][-2:] == columns and feature_columns(dataset)[-2:] == columns
    expected = apply_regime_features(bars, model)
    np.testing.assert_array_equal(dataset[columns].to_numpy(), expected[columns].to_numpy())
    # fitted on the first walk-forward training window only
    first_train_end = first_training_end(params.train.walk_forward, params.labels.horizon, dataset["timestamp"])
    assert model.train_end_ == first_train_end and regimes_summary["fit_end"] == str(first_train_end)
    assert summary["regimes"] == {"n_regimes": 2, "method": "hmm", "volatility_window": 20,
                                  "fit_start": str(model.train_start_), "fit_end": str(first_train_end)}
    assert summary["regimes"] == model.describe()
    # the train stage's spec carries the model, so the service filters regimes without the repository
    assert regime_model_of(summary["features"], paths) == model.to_json()
    assert regime_model_of(summary["features"][:-2], paths) is None
    with pytest.raises(ValueError, match=r"regime columns \['regime_prob_0'\] do not match"):
        regime_model_of(summary["features"][:-1], paths)
    # switched off: the stage neither needs nor merges the model
    off = features.run(Params.model_validate({"features": {"regimes": False}}), root=tmp_path)
    assert not [name for name in off["features"] if name.startswith("regime")] and off["regimes"] is None


def test_the_streamer_takes_a_regime_model_file_or_a_served_models_spec(
    fitted_regimes: tuple[pd.DataFrame, RegimeModel], tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alphaforge.cli import _stream_regime_model

    _, model = fitted_regimes
    path = model.save(tmp_path / "model.json")
    assert _stream_regime_model(True, path).to_json() == model.to_json()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": ["rsi"], "regime_model": model.to_json()}))
    assert _stream_regime_model(True, spec).to_json() == model.to_json()
    spec.write_text(json.dumps({"features": ["rsi"], "regime_model": None}))
    with pytest.raises(FileNotFoundError, match="records no regime model"):
        _stream_regime_model(True, spec)
    with pytest.raises(FileNotFoundError, match="no such file"):
        _stream_regime_model(True, tmp_path / "absent.json")
    assert _stream_regime_model(False, path) is None
    monkeypatch.chdir(tmp_path)  # no models/regimes/model.json here: stream without regime features
    assert _stream_regime_model(True, None) is None
    # the stage's file is looked for beside the params the stream runs on, never in the working directory
    model.save(tmp_path / "models/regimes/model.json")  # what a finished `make run` leaves in a checkout
    assert _stream_regime_model(True, None, tmp_path / "elsewhere" / "params.yaml") is None
    assert _stream_regime_model(True, None, tmp_path / "params.yaml").to_json() == model.to_json()
