"""LightGBM ranking objectives (``train.models.lightgbm.objective: lambdarank | rank_xendcg``): rows grouped by
timestamp, relevance from per-timestamp quantile buckets of the label, and the signal found out of sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from alphaforge.config import LabelParams, load_params
from alphaforge.features import normalised_label
from alphaforge.models.tabular import LightGBMForecaster, TabularForecaster, ranking_relevance
from alphaforge.splits import WalkForward, WalkForwardParams
from alphaforge.train import walk_forward_train
from alphaforge.tune import TuneParams, tune_family

FAST = {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 50, "num_threads": 1}


def _cross_sectional_market(n_symbols: int = 40, n_bars: int = 300, seed: int = 0) -> pd.DataFrame:
    """A panel where the label's per-timestamp order follows the cross-sectional rank of ``signal``, under a
    market move common to every symbol that is ten times larger than the signal's spread and unrelated to any
    feature; ``level`` shifts the signal by a per-timestamp amount (only its rank within a timestamp matters)."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2020-01-01", periods=n_bars, freq="B", tz="UTC")
    signal = rng.standard_normal((n_bars, n_symbols))
    level = np.cumsum(rng.normal(0.0, 0.3, n_bars))[:, None]
    market = rng.normal(0.0, 0.05, n_bars)[:, None]
    ranks = (signal.argsort(axis=1).argsort(axis=1) + 0.5) / n_symbols
    label = market + 0.004 * (ranks - 0.5) + rng.normal(0.0, 0.002, (n_bars, n_symbols))
    frame = pd.DataFrame({
        "timestamp": np.repeat(stamps, n_symbols),
        "symbol": np.tile([f"S{i:02d}" for i in range(n_symbols)], n_bars),
        "signal_level": (signal + level).ravel(),
        "signal": signal.ravel(),
        "noise": rng.standard_normal(n_bars * n_symbols),
        "forward_return": label.ravel(),
    })
    return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def _oos_rank_ic(model: TabularForecaster, frame: pd.DataFrame, split: pd.Timestamp) -> float:
    train = (frame["timestamp"] < split).to_numpy()
    features = frame.drop(columns=["signal_level"])
    model.fit(features, frame["forward_return"], fit_mask=train)
    test = features[~train].assign(prediction=model.predict(features, predict_mask=~train))
    per_time = test.groupby("timestamp").apply(
        lambda g: spearmanr(g["prediction"], g["forward_return"]).statistic, include_groups=False)
    return float(per_time.mean())


def test_relevance_is_the_per_timestamp_quantile_bucket() -> None:
    y = np.array([0.1, 0.3, 0.2, 0.4, 5.0, -1.0, 0.0, 1.0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ranking_relevance(y, groups, 4), [0, 2, 1, 3, 3, 0, 1, 2])
    np.testing.assert_array_equal(ranking_relevance(y, groups, 2), [0, 1, 0, 1, 1, 0, 0, 1])
    ties = ranking_relevance(np.array([1.0, 1.0, 1.0, 2.0]), np.zeros(4, dtype=int), 2)
    assert (ties[:3] == ties[0]).all() and ties[3] == 1


@pytest.mark.parametrize("objective", ["lambdarank", "rank_xendcg"])
def test_a_ranking_objective_finds_a_cross_sectional_signal_out_of_sample(objective: str) -> None:
    frame = _cross_sectional_market()
    split = frame["timestamp"].sort_values().unique()[200]
    rank_ic = _oos_rank_ic(LightGBMForecaster(objective=objective, **FAST), frame, split)
    assert rank_ic > 0.3, f"{objective}: out-of-sample rank IC {rank_ic:.3f}"


def test_the_groups_are_timestamps_whatever_the_row_order(tmp_path) -> None:
    frame = _cross_sectional_market(n_symbols=20, n_bars=120, seed=3).drop(columns=["signal_level"])
    fitted = LightGBMForecaster(objective="lambdarank", **FAST).fit(frame, frame["forward_return"])
    shuffled = frame.sample(frac=1.0, random_state=1)
    refitted = LightGBMForecaster(objective="lambdarank", **FAST).fit(shuffled, shuffled["forward_return"])
    # the same groups in another row order: the same model up to LightGBM's row subsampling
    assert spearmanr(fitted.predict(frame), refitted.predict(frame)).statistic > 0.97
    assert spearmanr(refitted.predict(frame), frame["signal"]).statistic > 0.9
    fitted.save(tmp_path / "model")
    loaded = TabularForecaster.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(frame), fitted.predict(frame))
    assert loaded.params.objective == "lambdarank"


def test_ranking_needs_timestamps_and_a_regression_task() -> None:
    frame = _cross_sectional_market(n_symbols=10, n_bars=50).drop(columns=["signal_level"])
    with pytest.raises(ValueError, match="timestamp"):
        LightGBMForecaster(objective="lambdarank", **FAST).fit(frame.drop(columns=["timestamp"]),
                                                               frame["forward_return"])
    with pytest.raises(ValueError, match="classification"):
        LightGBMForecaster(task="classification", objective="lambdarank")
    with pytest.raises(ValueError, match="rank_buckets"):
        LightGBMForecaster(objective="lambdarank", rank_buckets=1)


# --------------------------------------------------------------------------------------------
# labels.normalise: the label the models fit, per timestamp
# --------------------------------------------------------------------------------------------


def test_normalised_labels_by_hand_and_only_within_a_timestamp() -> None:
    stamps = pd.to_datetime(["2024-01-01"] * 3 + ["2024-01-02"] * 3, utc=True)
    label = pd.Series([0.3, 0.1, np.nan, 5.0, 5.0, 7.0])
    ranked = normalised_label(label, stamps, "cs_rank")
    np.testing.assert_allclose(ranked, [0.5 * 3.46, 0.0, np.nan, 0.0, 0.0, 0.5 * 3.46])  # ranks 1, 1/2; 1/2, 1/2, 1
    zscored = normalised_label(label, stamps, "cs_zscore")
    np.testing.assert_allclose(zscored.iloc[:2], [0.1 / np.std([0.3, 0.1], ddof=1), -0.1 / np.std([0.3, 0.1], ddof=1)])
    assert np.isnan(zscored.iloc[2])
    # changing the labels of one timestamp changes no other timestamp's normalised labels
    moved = label.copy()
    moved.iloc[3:] += [100.0, -3.0, 1.0]
    pd.testing.assert_series_equal(normalised_label(moved, stamps, "cs_zscore").iloc[:3], zscored.iloc[:3])
    assert normalised_label(label, stamps, "none") is label


def test_walk_forward_trains_on_the_normalised_label_and_reports_on_the_raw_one() -> None:
    frame = _cross_sectional_market(n_symbols=20, n_bars=200, seed=4).drop(columns=["signal_level"])
    splitter = WalkForward(WalkForwardParams(n_splits=2, mode="expanding", embargo=0, min_train_size=80), purge=1)

    def make_model() -> LightGBMForecaster:
        return LightGBMForecaster(**FAST)

    raw = walk_forward_train(frame, splitter, make_model, target="forward_return", fit_final_model=False)
    ranked = walk_forward_train(frame, splitter, make_model, target="forward_return", fit_final_model=False,
                                label_normalise="cs_rank")
    pd.testing.assert_series_equal(ranked.oof["forward_return"], raw.oof["forward_return"])
    assert not np.allclose(ranked.oof["prediction"], raw.oof["prediction"])
    assert ranked.oof["prediction"].abs().max() > 0.1  # on the scale of the ranks, not of the returns
    assert all(report.rank_ic > 0.3 for report in ranked.folds)
    with pytest.raises(ValueError, match="forward_direction"):
        LabelParams(target="forward_direction", normalise="cs_rank")


def test_the_defaults_leave_the_pipeline_as_it_was(repo_root) -> None:
    params = load_params(repo_root / "params.yaml")
    assert params.train.models["lightgbm"]["objective"] is None
    assert "objective" not in params.tune.search_spaces["lightgbm"]  # searching it is opt-in
    assert params.labels.normalise == "none" and params.features.set == "basic"
    assert params.features.processing == "none"


def test_the_tune_stage_can_search_the_objective(tmp_path) -> None:
    frame = _cross_sectional_market(n_symbols=15, n_bars=260, seed=6).drop(columns=["signal_level"])
    space = {"lightgbm": {"objective": {"type": "categorical", "choices": ["regression", "lambdarank"]},
                          "n_estimators": {"type": "int", "low": 10, "high": 30}}}
    tune = TuneParams(families=("lightgbm",), storage=f"sqlite:///{tmp_path / 'objective.db'}", n_trials=4,
                      search_spaces=space, n_startup_trials=4, pruner="none")
    splitter = WalkForward(WalkForwardParams(n_splits=2, min_train_size=120, embargo=0), purge=1)
    summary = tune_family(frame, "lightgbm", tune=tune, splitter=splitter,
                          base_params={"num_threads": 1, "min_child_samples": 50}, label_normalise="cs_zscore")
    assert summary["n_complete"] == 4
    assert summary["best_params"]["objective"] in ("regression", "lambdarank")
    assert summary["best_value"] > 0.3
