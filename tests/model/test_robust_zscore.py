"""``features.processing: robust_zscore`` / ``[robust_zscore, fillna]``: Qlib's RobustZScoreNorm fitted on the
training rows only and carried by the model (alphaforge.models.normalise) into saved models and the served
ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphaforge.ensemble import VotingEnsemble
from alphaforge.features import FeatureParams, compute_features, feature_columns
from alphaforge.models.normalise import RobustZScoreForecaster
from alphaforge.models.registry import load_forecaster, make_forecaster
from alphaforge.pyfunc import BASE_PREFIX, COMBINER_ARTIFACT, SPEC_ARTIFACT, load_panel_ensemble
from alphaforge.train import model_factory


def _panel(seed: int = 0, n_symbols: int = 6, n_bars: int = 120) -> tuple[pd.DataFrame, pd.Series]:
    """Three heavy-tailed features (one with NaN) and a label driven by the first."""
    rng = np.random.default_rng(seed)
    n = n_symbols * n_bars
    frame = pd.DataFrame({
        "timestamp": np.tile(pd.date_range("2023-01-02", periods=n_bars, freq="D", tz="UTC"), n_symbols),
        "symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_bars),
        "signal": rng.standard_t(3, n) * 50 + 1000,
        "wide": rng.lognormal(3, 2, n),
        "gappy": np.where(rng.random(n) < 0.2, np.nan, rng.standard_normal(n)),
    })
    label = pd.Series(0.01 * (frame["signal"] - 1000) / 50 + 0.01 * rng.standard_normal(n), index=frame.index)
    return frame, label


def test_the_transform_by_hand() -> None:
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=5, tz="UTC"), "symbol": "A",
                          "x": [1.0, 2.0, 3.0, 4.0, 100.0], "y": [np.nan, 1.0, 1.0, 1.0, 1.0]})
    model = RobustZScoreForecaster(make_forecaster("ridge", task="regression"), fillna=True)
    model.fit(frame, pd.Series([0.0, 1.0, 0.0, 1.0, 0.0]))
    # x: median 3, |x - 3| = 2 1 0 1 97 -> MAD 1, scale (1 + 1e-12) * 1.4826; y: MAD 0 -> scale 1.4826e-12
    assert model.median_.tolist() == [3.0, 1.0]
    np.testing.assert_allclose(model.scale_, [(1.0 + 1e-12) * 1.4826, 1e-12 * 1.4826], rtol=1e-15)
    transformed = model.transform(frame)
    np.testing.assert_allclose(transformed["x"], np.clip((frame["x"] - 3.0) / model.scale_[0], -3, 3), rtol=1e-15)
    assert transformed["x"].iloc[-1] == 3.0  # clipped
    assert transformed["y"].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]  # NaN filled, the rest at the median


def test_a_folds_statistics_come_from_its_training_rows_only() -> None:
    frame, label = _panel()
    train = (frame["timestamp"] < pd.Timestamp("2023-03-01", tz="UTC")).to_numpy()
    model = RobustZScoreForecaster(make_forecaster("ridge", task="regression")).fit(frame, label, fit_mask=train)
    shocked = frame.copy()
    shocked.loc[~train, ["signal", "wide", "gappy"]] *= 1e6  # the test period, wildly different
    refitted = RobustZScoreForecaster(make_forecaster("ridge", task="regression")).fit(shocked, label,
                                                                                       fit_mask=train)
    assert np.array_equal(model.median_, refitted.median_) and np.array_equal(model.scale_, refitted.scale_)
    assert np.array_equal(model.predict(frame, predict_mask=train), refitted.predict(shocked, predict_mask=train))
    whole = RobustZScoreForecaster(make_forecaster("ridge", task="regression")).fit(shocked, label)
    assert not np.array_equal(whole.median_, model.median_)  # the check can fail: all rows move the medians


def test_the_setting_reaches_the_model_and_leaves_the_features_raw(ohlcv_small: pd.DataFrame) -> None:
    assert FeatureParams(processing=["robust_zscore", "fillna"]).processing == "robust_zscore_fillna"
    assert FeatureParams(processing="robust_zscore").per_timestamp_processing == "none"
    with pytest.raises(ValueError, match="not a known pipeline"):
        FeatureParams(processing=["fillna", "robust_zscore"])
    raw = compute_features(ohlcv_small, FeatureParams(regimes=False))
    fitted = compute_features(ohlcv_small, FeatureParams(regimes=False, processing="robust_zscore_fillna"))
    pd.testing.assert_frame_equal(raw, fitted)
    make = model_factory("ridge", task="regression", hyperparameters={}, uncertainty_method="conformal",
                         feature_processing="robust_zscore_fillna")
    model = make()
    assert isinstance(model.base, RobustZScoreForecaster) and model.base.fillna


@pytest.fixture(scope="module")
def ohlcv_small(bokeh_bars: pd.DataFrame) -> pd.DataFrame:
    return bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2012-06-01", tz="UTC")].reset_index(drop=True)


def test_saved_and_served_predictions_equal_the_in_process_ones(tmp_path: Path) -> None:
    frame, label = _panel(seed=1)
    train = (frame["timestamp"] < pd.Timestamp("2023-03-15", tz="UTC")).to_numpy()
    make = model_factory("ridge", task="regression", hyperparameters={}, uncertainty_method="conformal",
                         feature_processing="robust_zscore_fillna")
    model = make().fit(frame, label, fit_mask=train)
    in_process = model.predict(frame)
    model.save(tmp_path / "ridge")
    assert np.array_equal(load_forecaster(tmp_path / "ridge").predict(frame), in_process)

    spec = {"feature_version": "1", "features": feature_columns(frame), "families": ["ridge"]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    voting = {"kind": VotingEnsemble.kind, "families": ["ridge"], "weights": {"ridge": 1.0},
              "rank_ic": {"ridge": 0.1}, "n_rows": 10}
    (tmp_path / "meta.json").write_text(json.dumps(voting))
    served = load_panel_ensemble({SPEC_ARTIFACT: str(tmp_path / "spec.json"),
                                  COMBINER_ARTIFACT: str(tmp_path / "meta.json"),
                                  f"{BASE_PREFIX}ridge": str(tmp_path / "ridge")}).predict(frame)
    assert np.array_equal(served["prediction_ridge"].to_numpy(), in_process)
    raw_model = make_forecaster("ridge", task="regression").fit(frame, label, fit_mask=train)
    assert not np.allclose(raw_model.predict(frame), in_process)  # the transform changed something


def test_tuning_fits_the_statistics_per_fold_as_training_does(tmp_path: Path) -> None:
    """A study with a fitted processing wraps each trial's model (each fold fits its own statistics) and is a
    different study from the raw one (its fingerprint names the processing)."""
    from alphaforge.splits import WalkForward, WalkForwardParams
    from alphaforge.tune import TuneParams, tune_family

    frame, label = _panel(seed=2, n_symbols=5, n_bars=200)
    dataset = frame.assign(forward_return=label)
    tune = TuneParams(families=("ridge",), storage=f"sqlite:///{tmp_path / 'tune.db'}", n_trials=2,
                      n_startup_trials=2, search_spaces={"ridge": {"alpha": {"type": "float", "low": 1e-2,
                                                                              "high": 1e2, "log": True}}})
    splitter = WalkForward(WalkForwardParams(n_splits=2, min_train_size=80, embargo=1), purge=1)
    fitted = tune_family(dataset, "ridge", tune=tune, splitter=splitter, base_params={"n_jobs": 1},
                         feature_processing="robust_zscore_fillna")
    raw = tune_family(dataset, "ridge", tune=tune, splitter=splitter, base_params={"n_jobs": 1})
    assert fitted["n_complete"] == 2 and raw["n_complete"] == 2
    assert fitted["study_name"] != raw["study_name"]
    assert fitted["best_value"] != raw["best_value"]
