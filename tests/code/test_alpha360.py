"""Alpha360 (``features.set: alpha360``): every column against Qlib's expression in plain pandas, the skipped
VWAP field, batch == incremental, truncation causality, and the sequence view the sequence models take."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from test_features import _assert_causal

from alphaforge import alpha360
from alphaforge.features import FeatureParams, compute_features, feature_columns
from alphaforge.featurestore.incremental import IncrementalEngine

ALPHA360 = FeatureParams(set="alpha360", cross_sectional_ranks=(), regimes=False, calendar=False)


@pytest.fixture(scope="module")
def ohlcv(bokeh_bars: pd.DataFrame) -> pd.DataFrame:
    """Real daily OHLCV 2011-2013 (ragged: FB from 2012)."""
    sliced = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2011-06-01", tz="UTC")]
    return sliced.reset_index(drop=True)


@pytest.fixture(scope="module")
def batch(ohlcv: pd.DataFrame) -> pd.DataFrame:
    return compute_features(ohlcv, ALPHA360)


def test_every_column_is_qlibs_ref_over_the_current_value(ohlcv: pd.DataFrame, batch: pd.DataFrame) -> None:
    grouped = ohlcv.groupby("symbol", sort=False)
    for field, column in (("CLOSE", "close"), ("OPEN", "open"), ("HIGH", "high"), ("LOW", "low"),
                          ("VOLUME", "volume")):
        denominator = ohlcv["volume"] + 1e-12 if field == "VOLUME" else ohlcv["close"]
        for back in (0, 1, 7, 59):
            expected = grouped[column].shift(back) / denominator
            np.testing.assert_allclose(batch[f"{field}{back}"].to_numpy(), expected.to_numpy(), rtol=1e-12,
                                       atol=0, equal_nan=True, err_msg=f"{field}{back}")


def test_the_set_is_qlibs_360_less_vwap_in_qlibs_order(batch: pd.DataFrame) -> None:
    names = feature_columns(batch)
    assert len(names) == 300
    assert names[:3] == ["CLOSE59", "CLOSE58", "CLOSE57"] and names[59] == "CLOSE0" and names[60] == "OPEN59"
    assert names[-1] == "VOLUME0" and not any(n.startswith("VWAP") for n in names)
    assert batch.attrs["skipped"][0].startswith("features: skipping VWAP59..VWAP0")
    assert (batch["CLOSE0"].to_numpy() == 1.0).all()


def test_a_column_is_nan_until_the_symbol_has_that_many_earlier_bars(batch: pd.DataFrame) -> None:
    position = batch.groupby("symbol", sort=False).cumcount().to_numpy()
    for back in (1, 30, 59):
        assert np.array_equal(np.isnan(batch[f"CLOSE{back}"].to_numpy()), position < back)


def test_close_only_data_keeps_the_close_columns(skfolio_bars: pd.DataFrame, caplog: pytest.LogCaptureFixture
                                                ) -> None:
    bars = skfolio_bars[skfolio_bars["timestamp"] >= pd.Timestamp("2022-01-01", tz="UTC")].reset_index(drop=True)
    with caplog.at_level(logging.INFO, logger="alphaforge.features"):
        frame = compute_features(bars, ALPHA360)
    assert feature_columns(frame) == [f"CLOSE{i}" for i in range(59, -1, -1)]
    assert any("skipping OPEN59..OPEN0" in line for line in frame.attrs["skipped"])


def test_incremental_equals_batch_bit_for_bit(ohlcv: pd.DataFrame, batch: pd.DataFrame) -> None:
    names = feature_columns(batch)
    streamed = IncrementalEngine(ALPHA360, names).replay(ohlcv)
    np.testing.assert_array_equal(streamed[names].to_numpy(), batch[names].to_numpy())


@pytest.mark.parametrize("processing", ["none", "cs_zscore"])
def test_every_alpha360_column_is_causal(processing: str, ohlcv: pd.DataFrame) -> None:
    params = FeatureParams(set="alpha360", cross_sectional_ranks=("CLOSE5",), regimes=False, processing=processing)
    _assert_causal(lambda frame: compute_features(frame, params), ohlcv, n_cuts=3)


def test_sequences_hold_the_last_60_bars_oldest_first(ohlcv: pd.DataFrame, batch: pd.DataFrame) -> None:
    names = feature_columns(batch)
    windows, fields = alpha360.as_sequences(batch[names].to_numpy(), names)
    assert windows.shape == (len(batch), 60, 5) and fields == ["CLOSE", "OPEN", "HIGH", "LOW", "VOLUME"]
    row = 500  # AAPL, well past its first 60 bars
    closes = ohlcv["close"].to_numpy()
    np.testing.assert_allclose(windows[row, :, 0], closes[row - 59: row + 1] / closes[row], rtol=1e-15)
    assert windows[row, -1, 0] == 1.0


def test_an_unknown_column_is_refused_naming_the_rule() -> None:
    with pytest.raises(KeyError, match="not an Alpha360 column"):
        alpha360.field_of("CLOSE60")


def test_a_sequence_model_reads_each_rows_own_history(ohlcv: pd.DataFrame, batch: pd.DataFrame,
                                                      tmp_path) -> None:
    """``history_layout: alpha360``: the window of a row is its own 60 x 5 history, so its forecast moves with
    its own columns only, survives a save and load, and needs lookback 60."""
    import torch
    from pydantic import ValidationError

    from alphaforge.features import compute_labels
    from alphaforge.models.registry import load_forecaster, make_forecaster
    from alphaforge.models.sequence import SequenceParams

    with pytest.raises(ValidationError, match="lookback: 60"):
        SequenceParams(history_layout="alpha360", lookback=20)
    torch.set_num_threads(1)
    label = compute_labels(ohlcv, 5)["forward_return"]
    params = {"history_layout": "alpha360", "lookback": 60, "hidden_size": 8, "max_epochs": 2, "batch_size": 256,
              "seed": 0, "device": "cpu", "max_train_windows": 1000}
    model = make_forecaster("gru", task="regression", params=params).fit(batch, label)
    assert model.n_inputs_ == 5
    prediction = model.predict(batch)
    assert np.isfinite(prediction).all()
    changed = batch.copy()
    changed.loc[500, "CLOSE3"] = changed.loc[500, "CLOSE3"] * 1.05  # one row's own history
    moved = model.predict(changed)
    assert moved[500] != prediction[500]
    np.testing.assert_array_equal(np.delete(moved, 500), np.delete(prediction, 500))
    model.save(tmp_path / "gru")
    np.testing.assert_array_equal(load_forecaster(tmp_path / "gru").predict(batch), prediction)
