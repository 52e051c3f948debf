"""Torch sequence forecasters: windows without look-ahead, learning a planted signal, uncertainty,
attention, persistence and repeatability, on small seeded synthetic panels (CPU, one thread)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from alphaforge.models.base import Forecaster
from alphaforge.models.sequence import (
    CNNForecaster,
    GRUForecaster,
    LSTMForecaster,
    SequenceForecaster,
    SequenceParams,
    TransformerForecaster,
    build_network,
    plot_attention,
    sequence_windows,
    window_batch,
)

FAMILIES = ("lstm", "gru", "transformer", "cnn")
N_SYMBOLS, N_BARS, LOOKBACK = 12, 300, 8
FIT_END, TEST_START = 200, 220  # fit on bars < 200, judge on bars >= 220 (a gap against overlap)
SMALL = {
    "lookback": LOOKBACK, "hidden_size": 16, "num_layers": 2, "batch_size": 128, "max_epochs": 4,
    "learning_rate": 3e-3, "dropout": 0.1,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: fast and repeatable on a shared 2-core machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_panel(seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A panel sorted by (symbol, timestamp) with 4 features; target_t = x1_t - x1_{t-3} + noise.

    ``x3`` is NaN for each symbol's first 5 bars (indicator warm-up); the target is NaN where x1_{t-3}
    does not exist.
    """
    rng = np.random.default_rng(seed)
    timestamps = pd.date_range("2021-01-01", periods=N_BARS, freq="D", tz="UTC")
    frames, targets = [], []
    for symbol in range(N_SYMBOLS):
        features = rng.standard_normal((N_BARS, 4))
        features[:5, 3] = np.nan
        frame = pd.DataFrame(features, columns=["x0", "x1", "x2", "x3"])
        frame.insert(0, "symbol", f"S{symbol:02d}")
        frame.insert(0, "timestamp", timestamps)
        x1 = features[:, 1]
        target = np.full(N_BARS, np.nan)
        target[3:] = x1[3:] - x1[:-3] + 0.5 * rng.standard_normal(N_BARS - 3)
        frames.append(frame)
        targets.append(target)
    panel = pd.concat(frames, ignore_index=True)
    return panel, pd.Series(np.concatenate(targets), index=panel.index, name="target")


def bar_number(panel: pd.DataFrame) -> np.ndarray:
    return panel.groupby("symbol").cumcount().to_numpy()


def information_coefficient(predictions: np.ndarray, target: np.ndarray) -> float:
    known = ~np.isnan(predictions) & ~np.isnan(target)
    return float(spearmanr(predictions[known], target[known]).statistic)


@pytest.fixture(scope="module")
def panel() -> tuple[pd.DataFrame, pd.Series]:
    return make_panel()


@pytest.fixture(scope="module")
def masks(panel) -> tuple[np.ndarray, np.ndarray]:
    bars = bar_number(panel[0])
    return bars < FIT_END, bars >= TEST_START


@pytest.fixture(scope="module")
def fitted(panel, masks) -> dict[str, SequenceForecaster]:
    frame, target = panel
    fit_mask, _ = masks
    return {
        family: SequenceForecaster(family=family, **SMALL).fit(frame, target, fit_mask=fit_mask) for family in FAMILIES
    }


# ------------------------------------------------------------------------------------ windows


def test_window_ends_at_its_row_is_a_view_and_never_crosses_symbols():
    lengths = [3, 5, 1, 6]  # symbols of unequal length, one shorter than the window
    codes = np.repeat(np.arange(len(lengths)), lengths)
    values = np.repeat(np.arange(len(codes), dtype=np.float32)[:, None], 2, axis=1)  # each feature = row index
    lookback = 3

    windows, valid_end_rows = sequence_windows(values, codes, lookback)

    assert windows.shape == (len(codes) - lookback + 1, lookback, 2)
    assert np.shares_memory(windows, values)
    position_in_symbol = np.concatenate([np.arange(length) for length in lengths])
    np.testing.assert_array_equal(valid_end_rows, np.flatnonzero(position_in_symbol >= lookback - 1))
    for row in valid_end_rows:
        window = windows[row - (lookback - 1)]
        np.testing.assert_array_equal(window[:, 0], [row - 2, row - 1, row])  # ends AT the row, nothing after
        assert len(set(codes[window[:, 0].astype(int)])) == 1
    batch = window_batch(windows, valid_end_rows, lookback)
    assert batch.shape == (len(valid_end_rows), lookback, 2)
    np.testing.assert_array_equal(batch[:, -1, 0], valid_end_rows)  # the last step is the labelled row itself
    assert not np.shares_memory(batch, values)


def test_windows_of_a_panel_shorter_than_the_lookback_are_empty():
    windows, valid_end_rows = sequence_windows(np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=int), 5)
    assert windows.shape == (0, 5, 3) and len(valid_end_rows) == 0


def test_tcn_output_at_a_step_depends_only_on_that_step_and_its_receptive_field():
    torch.manual_seed(0)
    params = SequenceParams(lookback=16, hidden_size=4, num_layers=2, kernel_size=3, dropout=0.0)
    network = build_network("cnn", 3, params).eval()
    x = torch.randn(1, 16, 3, requires_grad=True)
    step = 14
    network.features(x)[0, step].sum().backward()
    influence = x.grad[0].abs().sum(dim=1)
    assert torch.all(influence[step + 1 :] == 0), "a future step leaks into the output"
    first_seen = step - network.receptive_field + 1
    assert torch.all(influence[:first_seen] == 0), "the output sees further back than its receptive field"
    # inside the field every step can matter; a ReLU that happens to be off zeroes a few gradients at random
    in_field = influence[first_seen : step + 1]
    assert influence[step] > 0 and (in_field > 0).float().mean() >= 0.5


# ------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("family", FAMILIES)
def test_family_learns_the_planted_signal_out_of_sample_but_not_a_shuffled_one(family, panel, masks, fitted):
    frame, target = panel
    fit_mask, test_mask = masks
    model = fitted[family]
    assert isinstance(model, Forecaster) and model.family == family

    predictions = model.predict(frame, predict_mask=test_mask)
    assert predictions.shape == (test_mask.sum(),)
    assert information_coefficient(predictions, target[test_mask].to_numpy()) > 0.5

    shuffled = pd.Series(np.random.default_rng(1).permutation(target.to_numpy()), index=target.index)
    null_model = SequenceForecaster(family=family, **{**SMALL, "max_epochs": 30, "patience": 1})
    null_model.fit(frame, shuffled, fit_mask=fit_mask)
    null_predictions = null_model.predict(frame, predict_mask=test_mask)
    assert abs(information_coefficient(null_predictions, shuffled[test_mask].to_numpy())) < 0.1
    # Noise has nothing to learn: early stopping ends training well before max_epochs, best weights kept.
    validation_losses = [epoch["validation_loss"] for epoch in null_model.history_]
    assert len(null_model.history_) < 30
    assert null_model.best_epoch_ == int(np.argmin(validation_losses)) + 1


def test_rows_without_a_full_window_get_nan_and_warm_up_nans_do_not(panel, fitted):
    frame, _ = panel
    predictions = fitted["gru"].predict(frame)
    bars = bar_number(frame)
    assert np.isnan(predictions[bars < LOOKBACK - 1]).all()
    assert np.isfinite(predictions[bars >= LOOKBACK - 1]).all()  # x3 is NaN in some of these windows
    assert fitted["gru"].missing_indicator_features_ == ["x3"]


def test_inner_validation_is_the_latest_fit_rows(panel, masks, fitted):
    frame, _ = panel
    fit_mask, _ = masks
    model = fitted["lstm"]
    fit_end = frame["timestamp"][fit_mask].max()
    assert frame["timestamp"].min() < model.validation_start_ <= fit_end
    share = model.n_validation_windows_ / (model.n_train_windows_ + model.n_validation_windows_)
    assert 0.17 < share < 0.23
    trainable = fit_mask & (bar_number(frame) >= LOOKBACK - 1)
    n_late = int((frame["timestamp"][trainable] >= model.validation_start_).sum())
    assert n_late == model.n_validation_windows_


def test_the_validation_slice_only_steers_early_stopping_and_is_never_trained_on(panel, masks):
    frame, target = panel
    fit_mask, _ = masks
    params = {**SMALL, "max_epochs": 3, "patience": 3}
    model = CNNForecaster(**params).fit(frame, target, fit_mask=fit_mask)
    in_validation = fit_mask & (frame["timestamp"] >= model.validation_start_).to_numpy()
    flipped = target.where(~in_validation, -target)
    other = CNNForecaster(**params).fit(frame, flipped, fit_mask=fit_mask)

    assert [epoch["train_loss"] for epoch in other.history_] == [epoch["train_loss"] for epoch in model.history_]
    assert other.history_[-1]["validation_loss"] > model.history_[-1]["validation_loss"]


def test_rows_outside_the_fit_mask_after_it_do_not_change_the_model(panel, masks, fitted):
    frame, target = panel
    fit_mask, test_mask = masks
    future = bar_number(frame) >= FIT_END
    altered = frame.copy()
    altered.loc[future, ["x0", "x1", "x2", "x3"]] *= 1000.0  # the scaler must not see these
    altered_target = target.copy()
    altered_target[future] = 5.0
    model = SequenceForecaster(family="cnn", **SMALL).fit(altered, altered_target, fit_mask=fit_mask)
    np.testing.assert_array_equal(model.feature_mean_, fitted["cnn"].feature_mean_)
    np.testing.assert_array_equal(model.predict(frame), fitted["cnn"].predict(frame))


def test_classification_gives_probabilities_that_rank_direction(panel, masks):
    frame, target = panel
    fit_mask, test_mask = masks
    direction = (target > 0).astype(float).where(target.notna())
    model = GRUForecaster(task="classification", **SMALL).fit(frame, direction, fit_mask=fit_mask)
    probabilities = model.predict(frame, predict_mask=test_mask)
    known = ~np.isnan(probabilities)
    assert ((probabilities[known] >= 0) & (probabilities[known] <= 1)).all()
    up = direction[test_mask].to_numpy() == 1
    assert probabilities[known & up].mean() > probabilities[known & ~up].mean() + 0.1


def test_classification_rejects_labels_other_than_zero_and_one(panel):
    frame, target = panel
    with pytest.raises(ValueError, match="must be 0/1"):
        CNNForecaster(task="classification", **SMALL).fit(frame, target)


# ------------------------------------------------------------------------------------ uncertainty


@pytest.mark.parametrize("family", FAMILIES)
def test_mc_dropout_intervals_widen_far_outside_the_training_distribution(family, panel, masks, fitted):
    frame, _ = panel
    _, test_mask = masks
    model = fitted[family]
    usual = model.predict_with_uncertainty(frame, predict_mask=test_mask, n_samples=20, alpha=0.1)
    extreme_frame = frame.copy()
    extreme_frame[["x0", "x1", "x2", "x3"]] *= 20.0
    extreme = model.predict_with_uncertainty(extreme_frame, predict_mask=test_mask, n_samples=20, alpha=0.1)

    assert list(usual.columns) == ["mean", "std", "lower", "upper"]
    assert usual.index.equals(frame.index[test_mask])
    rows = usual["std"].notna()
    assert (usual.loc[rows, "lower"] <= usual.loc[rows, "mean"]).all()
    assert (usual.loc[rows, "mean"] <= usual.loc[rows, "upper"]).all()
    usual_width = (usual["upper"] - usual["lower"]).median()
    extreme_width = (extreme["upper"] - extreme["lower"]).median()
    assert extreme_width > 2 * usual_width > 0
    # Repeatable: the dropout masks come from the seed.
    again = model.predict_with_uncertainty(frame, predict_mask=test_mask, n_samples=20, alpha=0.1)
    pd.testing.assert_frame_equal(usual, again)


# ------------------------------------------------------------------------------------ attention


def test_transformer_attention_has_a_weight_per_layer_and_head_summing_to_one(panel, masks, fitted, tmp_path):
    frame, _ = panel
    _, test_mask = masks
    model = fitted["transformer"]
    mask = test_mask & (bar_number(frame) < TEST_START + 5)
    weights = model.attention_weights(frame, mask)

    assert weights.shape == (mask.sum(), SMALL["num_layers"], 2, LOOKBACK, LOOKBACK)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    assert (weights >= 0).all()
    last_query = model.attention_weights(frame, mask, last_query_only=True)
    np.testing.assert_allclose(last_query, weights[..., -1, :], atol=1e-6)

    path = plot_attention(weights, tmp_path / "plots" / "attention.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    with pytest.raises(TypeError, match="transformer family only"):
        fitted["lstm"].attention_weights(frame, mask)


# ------------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_predicts_identically(family, panel, fitted, tmp_path):
    frame, _ = panel
    model = fitted[family]
    model.save(tmp_path / family)
    assert {path.name for path in (tmp_path / family).iterdir()} == {"model.pt", "config.json"}

    loaded = SequenceForecaster.load(tmp_path / family)

    expected_class = {"lstm": LSTMForecaster, "gru": GRUForecaster, "transformer": TransformerForecaster,
                      "cnn": CNNForecaster}[family]
    assert type(loaded) is expected_class and loaded.family == family
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    if family != "lstm":
        with pytest.raises(TypeError, match="cannot return"):
            LSTMForecaster.load(tmp_path / family)


# ------------------------------------------------------------------------------------ repeatability


def test_cpu_runs_are_repeatable_with_the_same_seed(panel, masks, fitted):
    frame, target = panel
    fit_mask, _ = masks
    again = LSTMForecaster(**SMALL).fit(frame, target, fit_mask=fit_mask)
    np.testing.assert_array_equal(again.predict(frame), fitted["lstm"].predict(frame))
    assert again.history_[-1]["train_loss"] == fitted["lstm"].history_[-1]["train_loss"]
    other_seed = LSTMForecaster(**{**SMALL, "seed": 1}).fit(frame, target, fit_mask=fit_mask)
    assert not np.allclose(other_seed.predict(frame), again.predict(frame), equal_nan=True)


# ------------------------------------------------------------------------------------ input checks


def test_bad_inputs_fail_loudly_and_specifically(panel):
    frame, target = panel
    with pytest.raises(ValueError, match="sorted by \\(symbol, timestamp\\)"):
        CNNForecaster(**SMALL).fit(frame.iloc[::-1].reset_index(drop=True), target.iloc[::-1].reset_index(drop=True))
    with pytest.raises(ValueError, match="extra"):
        CNNForecaster(epochs=3)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TransformerForecaster(hidden_size=15, n_heads=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        GRUForecaster().predict(frame)
    infinite = frame.copy()
    infinite.loc[7, "x2"] = np.inf
    with pytest.raises(ValueError, match="'x2' is infinite at row 7"):
        CNNForecaster(**SMALL).fit(infinite, target)


def test_labels_and_raw_bar_columns_in_the_frame_are_never_features(panel, masks):
    """The walk-forward trainer hands the whole dataset (labels included) to ``fit``: a sequence model must take
    only the feature columns, or it would learn from its own target (a look-ahead leak)."""
    frame, target = panel
    fit_mask, _ = masks
    leaky = frame.assign(forward_return=target.to_numpy(), forward_direction=(target > 0).astype(float).to_numpy(),
                         forward_volatility=target.abs().to_numpy(), forward_return_1=target.to_numpy(),
                         close=100.0 + np.arange(len(frame)), volume=1.0)
    model = SequenceForecaster(family="lstm", **{**SMALL, "max_epochs": 1}).fit(leaky, target, fit_mask=fit_mask)
    assert model.feature_names_ == ["x0", "x1", "x2", "x3"]
