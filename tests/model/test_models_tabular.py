"""Tabular forecasters, prediction intervals and importance, on a seeded synthetic market with a planted signal.

The market (:mod:`alphaforge.data.synthetic`) mean-reverts towards a 10-bar EMA, so features such as
``ema_ratio_10`` predict the 5-bar forward return. Every test fits on the first 70% of timestamps and
judges on the last 25% (the 5% between is a gap wider than the label horizon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.features import FeatureParams, compute_features, compute_labels
from alphaforge.models.base import Forecaster
from alphaforge.models.importance import per_timestamp_rank_ic, permutation_importance, plot_importance, rank_ic
from alphaforge.models.tabular import (
    TABULAR_CLASSES,
    LightGBMForecaster,
    RidgeForecaster,
    TabularForecaster,
    XGBoostForecaster,
    resolve_xgboost_device,
)
from alphaforge.models.uncertainty import (
    ConformalRegressor,
    QuantileLightGBM,
    conformal_quantile,
    interval_coverage,
)

FAMILIES = tuple(TABULAR_CLASSES)
PLANTED = ("ema_ratio_10", "sma_ratio_10", "bollinger_position")
NOISE = "pure_noise"
HORIZON = 5
# A compact feature set: the planted EMA(10) deviation seen three ways, distractors from every other
# indicator family, and (added below) a column of pure noise. The default set holds ten near-copies
# of the signal, among which permutation importance (rightly) spreads thin.
FEATURES = FeatureParams(
    return_horizons=(1, 20), ma_windows=(10, 50), volatility_windows=(5, 20), cross_sectional_ranks=("log_return_20",)
)


def make(family: str, **params: object) -> TabularForecaster:
    """A forecaster of ``family`` on one thread: the test machine is a shared 2-core box, where OpenMP
    barriers of two threads competing with other processes for the cores can cost 10x the time."""
    threads = {"num_threads": 1} if family == "lightgbm" else {"n_jobs": 1}
    return TABULAR_CLASSES[family](**{**threads, **params})


@dataclass(frozen=True)
class Market:
    """Features + labels of a synthetic panel, and the fit / test rows."""

    data: pd.DataFrame
    fit: np.ndarray
    test: np.ndarray


def make_market(seed: int, **synthetic: float) -> Market:
    bars, _ = make_synthetic(SyntheticParams(n_symbols=30, n_bars=700, seed=seed, **synthetic))
    features = compute_features(bars, FEATURES)
    labels = compute_labels(bars, HORIZON).drop(columns=["timestamp", "symbol"])
    data = pd.concat([features, labels], axis=1)
    data[NOISE] = np.random.default_rng(seed + 1000).standard_normal(len(data))
    timestamps = data["timestamp"].to_numpy()
    unique = np.unique(timestamps)
    fit = timestamps < unique[int(0.70 * len(unique))]
    test = timestamps >= unique[int(0.75 * len(unique))]
    return Market(data=data, fit=fit, test=test)


def ic_and_t(prediction: np.ndarray, target: np.ndarray, timestamps: np.ndarray) -> tuple[float, float]:
    """Mean cross-sectional rank IC over the timestamps, and its t-statistic."""
    series = per_timestamp_rank_ic(prediction, target, timestamps).dropna()
    mean = float(series.mean())
    return mean, mean / float(series.std(ddof=1)) * np.sqrt(len(series))


@pytest.fixture(scope="module")
def market() -> Market:
    """Calm and turbulent regimes last ~50 bars, so the fit and the test slice both see each several times."""
    return make_market(seed=11, regime_switch_prob=0.02)


@pytest.fixture(scope="module")
def regression_models(market: Market) -> dict[str, TabularForecaster]:
    """Every family fitted once on forward_return (fit rows)."""
    y = market.data["forward_return"]
    return {family: make(family).fit(market.data, y, fit_mask=market.fit) for family in FAMILIES}


@pytest.fixture(scope="module")
def classification_models(market: Market) -> dict[str, TabularForecaster]:
    """Every family fitted once on forward_direction (fit rows)."""
    y = market.data["forward_direction"]
    return {
        family: make(family, task="classification").fit(market.data, y, fit_mask=market.fit) for family in FAMILIES
    }


# ------------------------------------------------------------------------------------------------
# Learning the signal, and not learning noise
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_finds_the_planted_signal_out_of_sample(
    family: str, market: Market, regression_models: dict[str, TabularForecaster]
) -> None:
    model = regression_models[family]
    assert isinstance(model, Forecaster) and model.family == family
    test = market.data[market.test]
    prediction = model.predict(market.data, predict_mask=market.test)
    ic, t = ic_and_t(prediction, test["forward_return"].to_numpy(), test["timestamp"].to_numpy())
    assert ic > 0.03 and t > 3, f"{family}: rank IC {ic:.4f}, t {t:.2f}"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_family_finds_signal_in_shuffled_labels(family: str, market: Market) -> None:
    """With the label column permuted (fit and test alike) nothing is predictable; a model that still
    scored would be reading the label column itself or some other leak."""
    data = market.data.copy()
    data["forward_return"] = np.random.default_rng(0).permutation(data["forward_return"].to_numpy())
    model = make(family).fit(data, data["forward_return"], fit_mask=market.fit)
    assert "forward_return" not in model.feature_names_
    test = data[market.test]
    prediction = model.predict(data, predict_mask=market.test)
    ic, t = ic_and_t(prediction, test["forward_return"].to_numpy(), test["timestamp"].to_numpy())
    assert abs(t) < 3, f"{family}: rank IC {ic:.4f}, t {t:.2f} on shuffled labels"


@pytest.mark.parametrize("family", FAMILIES)
def test_classification_gives_probabilities_that_call_direction_better_than_a_coin(
    family: str, market: Market, classification_models: dict[str, TabularForecaster]
) -> None:
    model = classification_models[family]
    probability = model.predict(market.data, predict_mask=market.test)
    assert probability.shape == (int(market.test.sum()),)
    assert np.all((probability >= 0.0) & (probability <= 1.0))
    direction = market.data.loc[market.test, "forward_direction"].to_numpy()
    known = ~np.isnan(direction)
    accuracy = float(np.mean((probability[known] > 0.5) == (direction[known] == 1.0)))
    auc = float(roc_auc_score(direction[known], probability[known]))
    assert accuracy > 0.5 and auc > 0.53, f"{family}: accuracy {accuracy:.3f}, AUC {auc:.3f}"


def test_forward_volatility_is_a_regression_target_too(market: Market) -> None:
    """Volatility clusters (calm and turbulent regimes): recent volatility predicts the next 5 bars'."""
    y = market.data["forward_volatility"]
    model = make("lightgbm", n_estimators=100).fit(market.data, y, fit_mask=market.fit)
    prediction = model.predict(market.data, predict_mask=market.test)
    realised = y[market.test].to_numpy()
    known = ~np.isnan(realised)
    assert np.corrcoef(prediction[known], realised[known])[0, 1] > 0.25


# ------------------------------------------------------------------------------------------------
# Masks, NaN targets, persistence, parameters
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_mask_fits_exactly_the_masked_rows(
    family: str, market: Market, regression_models: dict[str, TabularForecaster]
) -> None:
    """A model fitted with a mask equals one fitted on the sliced frame; NaN-target rows are dropped."""
    sliced = market.data[market.fit]
    on_slice = make(family).fit(sliced, sliced["forward_return"])
    masked = regression_models[family]
    np.testing.assert_array_equal(
        masked.predict(market.data, predict_mask=market.test), on_slice.predict(market.data, predict_mask=market.test)
    )
    assert masked.n_fit_rows_ == on_slice.n_fit_rows_ == len(sliced)


def test_rows_without_a_known_target_are_dropped_from_fitting(market: Market) -> None:
    """Each symbol's last HORIZON + 1 bars have no forward return yet (entered at the next bar's open, held HORIZON
    bars); fitting on everything skips them."""
    y = market.data["forward_return"]
    unlabelled = int(y.isna().sum())
    assert unlabelled == 30 * (HORIZON + 1)
    everything = make("ridge").fit(market.data, y)
    labelled = market.data[y.notna()]
    only_labelled = make("ridge").fit(labelled, labelled["forward_return"])
    assert everything.n_dropped_unlabelled_ == unlabelled and everything.n_fit_rows_ == len(labelled)
    np.testing.assert_array_equal(
        everything.predict(market.data, predict_mask=market.test),
        only_labelled.predict(market.data, predict_mask=market.test),
    )


def test_predict_mask_returns_one_value_per_selected_row(
    market: Market, regression_models: dict[str, TabularForecaster]
) -> None:
    model = regression_models["lightgbm"]
    everything = model.predict(market.data)
    assert everything.shape == (len(market.data),)
    every_third = np.zeros(len(market.data), dtype=bool)
    every_third[::3] = True
    np.testing.assert_array_equal(model.predict(market.data, predict_mask=every_third), everything[every_third])
    assert model.predict(market.data, predict_mask=np.zeros(len(market.data), dtype=bool)).shape == (0,)
    with pytest.raises(ValueError, match="one entry per frame row"):
        model.predict(market.data, predict_mask=every_third[:-1])
    with pytest.raises(TypeError, match="boolean"):
        model.predict(market.data, predict_mask=every_third.astype(int))


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_give_identical_predictions(
    family: str, task: str, market: Market, regression_models: dict[str, TabularForecaster],
    classification_models: dict[str, TabularForecaster], tmp_path: Path,
) -> None:
    model = (regression_models if task == "regression" else classification_models)[family]
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    loaded = type(model).load(tmp_path / "model")
    via_base = TabularForecaster.load(tmp_path / "model")
    assert type(loaded) is type(model) is type(via_base)
    assert loaded.task == task and loaded.feature_names_ == model.feature_names_
    expected = model.predict(market.data, predict_mask=market.test)
    np.testing.assert_array_equal(loaded.predict(market.data, predict_mask=market.test), expected)
    np.testing.assert_array_equal(via_base.predict(market.data, predict_mask=market.test), expected)
    pd.testing.assert_series_equal(loaded.feature_importance(), model.feature_importance())


def test_loading_a_folder_as_the_wrong_family_fails(
    regression_models: dict[str, TabularForecaster], tmp_path: Path
) -> None:
    regression_models["ridge"].save(tmp_path / "ridge")
    with pytest.raises(TypeError, match="'ridge' model"):
        LightGBMForecaster.load(tmp_path / "ridge")
    with pytest.raises(FileNotFoundError, match="config.json"):
        LightGBMForecaster.load(tmp_path / "nothing here")


def test_parameters_are_validated_and_the_estimators_clone_like_scikit_learn(market: Market) -> None:
    with pytest.raises(ValueError, match="num_leafs"):
        LightGBMForecaster(num_leafs=7)
    with pytest.raises(ValueError, match="learning_rate"):
        XGBoostForecaster(learning_rate=-1.0)
    with pytest.raises(ValueError, match="task"):
        RidgeForecaster(task="ranking")  # type: ignore[arg-type]
    model = LightGBMForecaster(n_estimators=20, num_leaves=7)
    copy = clone(model)
    assert copy.get_params() == {"task": "regression", "n_estimators": 20, "num_leaves": 7}
    assert copy.params.num_leaves == 7 and not hasattr(copy, "feature_names_")
    assert model.set_params(num_leaves=5) is model and model.params.num_leaves == 5
    with pytest.raises(RuntimeError, match="not fitted"):
        copy.predict(market.data)


def test_bad_inputs_fail_naming_the_problem(market: Market) -> None:
    data = market.data.copy()
    with pytest.raises(ValueError, match="0/1"):
        make("ridge", task="classification").fit(data, data["forward_return"], fit_mask=market.fit)
    data.loc[data.index[3], "rsi"] = np.inf
    with pytest.raises(ValueError, match="'rsi' is infinite at row 3"):
        make("ridge").fit(data, data["forward_return"])
    with pytest.raises(ValueError, match="none with a known target"):
        unknown = market.data["forward_return"].isna().to_numpy()
        make("ridge").fit(market.data, market.data["forward_return"], fit_mask=unknown)
    fitted = make("ridge").fit(market.data, market.data["forward_return"], fit_mask=market.fit)
    with pytest.raises(KeyError, match="ema_ratio_10"):
        fitted.predict(market.data.drop(columns=["ema_ratio_10"]))


def test_xgboost_trains_on_cuda_only_when_a_gpu_is_usable(
    regression_models: dict[str, TabularForecaster],
) -> None:
    import xgboost as xgb

    usable = bool(xgb.build_info().get("USE_CUDA", False))
    if usable:
        import torch

        usable = torch.cuda.is_available()
    assert regression_models["xgboost"].device_ == ("cuda" if usable else "cpu")
    assert resolve_xgboost_device("cpu") == "cpu"
    if not usable:
        with pytest.raises(RuntimeError, match="device='cuda'"):
            resolve_xgboost_device("cuda")


# ------------------------------------------------------------------------------------------------
# Intervals
# ------------------------------------------------------------------------------------------------


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    residuals = np.array([0.9, -0.1, 0.5, 0.3, -0.7, 0.2, 0.8, -0.4, 0.6])  # |r| = 0.1 .. 0.9
    assert conformal_quantile(residuals, alpha=0.1) == pytest.approx(0.9)  # rank ceil(10 * 0.9) = 9 of 9
    assert conformal_quantile(residuals, alpha=0.2) == pytest.approx(0.8)  # rank 8
    assert conformal_quantile(residuals, alpha=0.5) == pytest.approx(0.5)  # rank 5
    assert conformal_quantile(residuals[:5], alpha=0.1) == np.inf  # rank 6 of 5: no finite interval


def test_interval_coverage_counts_targets_inside_and_ignores_unknowns() -> None:
    target = np.array([0.0, 1.0, 2.0, np.nan, 5.0])
    lower = np.array([-1.0, 1.0, 2.5, 0.0, 4.0])
    upper = np.array([1.0, 2.0, 3.0, 1.0, np.nan])
    assert interval_coverage(target, lower, upper) == pytest.approx(2 / 3)
    assert np.isnan(interval_coverage(np.array([np.nan]), np.array([0.0]), np.array([1.0])))


def test_conformal_intervals_cover_close_to_nominal_out_of_sample(tmp_path: Path) -> None:
    """Split conformal promises coverage for exchangeable data, so this market has a single volatility
    regime (a regime switch between calibration and test breaks exchangeability, and coverage with it)."""
    market = make_market(seed=3, regime_switch_prob=0.0)
    y = market.data["forward_return"]
    model = ConformalRegressor(make("lightgbm"), alpha=0.1, calibration_fraction=0.2, gap=HORIZON)
    model.fit(market.data, y, fit_mask=market.fit)
    # The wrapped model saw only rows up to `gap` timestamps before the calibration slice.
    timestamps = market.data["timestamp"]
    labelled = market.fit & y.notna().to_numpy()
    unique = np.sort(timestamps[labelled].unique())
    first_calibration = len(unique) - int(np.ceil(0.2 * len(unique)))
    assert model.calibration_start_ == unique[first_calibration]
    model_rows = labelled & (timestamps < unique[first_calibration - HORIZON]).to_numpy()
    assert model.model_.n_fit_rows_ == int(model_rows.sum())

    table = model.predict_interval(market.data, predict_mask=market.test)
    assert list(table.columns) == ["prediction", "lower", "upper"] and len(table) == int(market.test.sum())
    np.testing.assert_allclose(table["upper"] - table["lower"], 2 * model.residual_quantile_)
    coverage = interval_coverage(y[market.test], table["lower"], table["upper"])
    assert 0.85 <= coverage <= 0.95, coverage

    model.save(tmp_path / "conformal")
    loaded = ConformalRegressor.load(tmp_path / "conformal")
    assert loaded.calibration_start_ == model.calibration_start_ and loaded.row_wise
    pd.testing.assert_frame_equal(loaded.predict_interval(market.data, predict_mask=market.test), table)


def test_quantile_lightgbm_covers_roughly_nominal_and_is_wider_where_outcomes_spread_more(
    market: Market, tmp_path: Path
) -> None:
    y = market.data["forward_return"]
    model = QuantileLightGBM(alpha=0.1, n_estimators=150, num_threads=1).fit(market.data, y, fit_mask=market.fit)
    table = model.predict_interval(market.data, predict_mask=market.test)
    assert (table["lower"] <= table["upper"]).all()
    coverage = interval_coverage(y[market.test], table["lower"], table["upper"])
    assert 0.80 <= coverage <= 0.97, coverage
    # Unlike the constant conformal width, these intervals follow the regime: wide where |return| is large.
    width = (table["upper"] - table["lower"]).to_numpy()
    realised = y[market.test].to_numpy()
    known = ~np.isnan(realised)
    assert spearmanr(width[known], np.abs(realised[known])).statistic > 0.1

    model.save(tmp_path / "quantile")
    loaded = QuantileLightGBM.load(tmp_path / "quantile")
    pd.testing.assert_frame_equal(loaded.predict_interval(market.data, predict_mask=market.test), table)


def test_interval_models_reject_classification() -> None:
    with pytest.raises(ValueError, match="regression"):
        ConformalRegressor(LightGBMForecaster(task="classification"))
    with pytest.raises(ValueError, match="regression"):
        QuantileLightGBM(task="classification")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Importance
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_permutation_importance_puts_the_planted_features_above_noise(
    family: str, market: Market, regression_models: dict[str, TabularForecaster]
) -> None:
    model = regression_models[family]
    table = permutation_importance(
        model, market.data, market.data["forward_return"], predict_mask=market.test, n_repeats=3, seed=0
    )
    assert list(table.columns) == ["feature", "importance_mean", "importance_std"]
    assert sorted(table["feature"]) == sorted(model.feature_names_)
    assert table.attrs["baseline"] == pytest.approx(
        rank_ic(model.predict(market.data, predict_mask=market.test), market.data.loc[market.test, "forward_return"],
                market.data.loc[market.test, "timestamp"].to_numpy())
    )
    importance = table.set_index("feature")["importance_mean"]
    planted, noise = importance[list(PLANTED)].max(), importance[NOISE]
    summary = f"{family}: best planted {planted:.4f}, noise {noise:.4f}, baseline rank IC {table.attrs['baseline']:.3f}"
    assert planted > noise + 0.002, summary
    assert abs(noise) < 0.25 * planted, summary  # noise matters far less than the signal, either way
    rank_of_best_planted = int(np.flatnonzero(table["feature"].isin(PLANTED).to_numpy())[0])
    assert rank_of_best_planted < 5, f"{summary}; top: {table['feature'].head(5).tolist()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_built_in_importance_covers_every_feature_or_is_empty_for_the_mlp(
    family: str, regression_models: dict[str, TabularForecaster]
) -> None:
    model = regression_models[family]
    importance = model.feature_importance()
    if family == "mlp":
        assert importance.empty
        return
    assert sorted(importance.index) == sorted(model.feature_names_)
    assert (importance >= 0).all() and importance.is_monotonic_decreasing
    assert importance[list(PLANTED)].max() > importance[NOISE]


def test_plot_importance_writes_a_png(
    market: Market, regression_models: dict[str, TabularForecaster], tmp_path: Path
) -> None:
    model = regression_models["ridge"]
    table = permutation_importance(
        model, market.data, market.data["forward_return"], predict_mask=market.test, n_repeats=2
    )
    for name, source in (("permutation.png", table), ("coefficients.png", model.feature_importance())):
        path = plot_importance(source, tmp_path / name, title="ridge")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_timestamp_rank_ic_matches_pandas_spearman_with_ties() -> None:
    rng = np.random.default_rng(3)
    timestamps = np.repeat(pd.date_range("2020-01-01", periods=40, tz="UTC").to_numpy(), 7)
    prediction = rng.integers(0, 4, len(timestamps)).astype(float)  # many ties, as tree models give
    target = rng.standard_normal(len(timestamps))
    prediction[5] = np.nan
    known = pd.DataFrame({"t": timestamps, "p": prediction, "y": target}).dropna()
    expected = known.groupby("t")[["p", "y"]].corr(method="spearman").xs("p", level=1)["y"]
    np.testing.assert_allclose(per_timestamp_rank_ic(prediction, target, timestamps).to_numpy(), expected.to_numpy())


def test_rank_ic_is_cross_sectional_with_three_symbols_and_pooled_otherwise() -> None:
    timestamps = np.repeat(np.arange(4), 3)
    target = np.array([1.0, 2.0, 3.0] * 4)
    # Perfect order within every timestamp, but the levels shift so the pooled ranking is poor.
    prediction = target + np.repeat([30.0, 20.0, 10.0, 0.0], 3)
    assert rank_ic(prediction, target, timestamps) == pytest.approx(1.0)
    pooled_timestamps = np.arange(12)  # one row per timestamp: pooled Spearman
    assert rank_ic(prediction, target, pooled_timestamps) < 0.5
