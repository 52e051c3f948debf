"""``objective: ic`` for the torch sequence families: minus the per-timestamp Pearson correlation of forecast
and label. The loss by hand, no mixing of timestamps, whole-timestamp batches, and a synthetic market whose
signal lives only in the cross-sectional rank of a feature, under a market-wide move that swamps squared error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import spearmanr

from alphaforge.models.registry import make_forecaster
from alphaforge.models.sequence import SequenceParams, ic_loss, per_timestamp_ic, timestamp_batches
from alphaforge.tune import SearchParam


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_loss_by_hand() -> None:
    prediction = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    target = torch.tensor([10.0, 20.0, 30.0, 3.0, 2.0, 1.0, 7.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    ic = per_timestamp_ic(prediction, target, groups)
    assert ic[0].item() == pytest.approx(1.0) and ic[1].item() == pytest.approx(-1.0)
    assert torch.isnan(ic[2])  # one row: no correlation
    assert ic_loss(prediction, target, groups).item() == pytest.approx(0.0, abs=1e-12)
    assert ic_loss(prediction[:3], target[:3], groups[:3]).item() == pytest.approx(-1.0)


def test_each_timestamp_is_normalised_with_its_own_rows_only() -> None:
    """Changing a later timestamp's forecasts and labels leaves every earlier timestamp's IC, and the loss's
    gradient on the earlier rows, exactly as they were."""
    rng = np.random.default_rng(0)
    groups = torch.from_numpy(np.repeat(np.arange(6), 10))
    target = torch.from_numpy(rng.standard_normal(60))

    def run(prediction: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = torch.tensor(prediction, requires_grad=True)
        ic = per_timestamp_ic(tensor, labels, groups)
        ic_loss(tensor, labels, groups).backward()
        return ic.detach(), tensor.grad

    prediction = rng.standard_normal(60)
    ic, gradient = run(prediction, target)
    changed_prediction, changed_target = prediction.copy(), target.clone()
    changed_prediction[50:] = rng.standard_normal(10) * 1e6 + 1e9  # the last timestamp, wildly different
    changed_target[50:] = torch.from_numpy(rng.standard_normal(10) * 1e3 - 5e4)
    ic_changed, gradient_changed = run(changed_prediction, changed_target)
    assert torch.equal(ic[:5], ic_changed[:5]) and not torch.equal(ic[5], ic_changed[5])
    assert torch.equal(gradient[:50], gradient_changed[:50])


def test_batches_hold_whole_timestamps_and_every_row_once() -> None:
    timestamps = np.repeat(np.arange(40), 7)[np.random.default_rng(1).permutation(280)]
    rows = np.arange(280)
    batches = timestamp_batches(rows, timestamps, batch_size=50, rng=np.random.default_rng(2))
    assert np.array_equal(np.sort(np.concatenate(batches)), rows)
    seen: set[int] = set()
    for batch in batches:
        assert len(batch) <= 50
        present = set(timestamps[batch].tolist())
        assert not present & seen  # a timestamp never spans two batches
        seen |= present


def test_ic_is_for_regression_and_tune_can_choose_it() -> None:
    with pytest.raises(ValidationError, match="objective 'ic'"):
        SequenceParams(task="classification", objective="ic")
    choice = SearchParam(type="categorical", choices=("regression", "ic"))
    assert choice.contains("ic") and not choice.contains("huber")
    assert make_forecaster("gru", task="regression", params={"objective": "ic"}).params.objective == "ic"


def _rank_market(seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """40 symbols x 160 bars. The label is the cross-sectional rank of feature ``x`` (a heavy-tailed, skewed
    transform of it, so only its rank carries the signal) plus noise, plus a market-wide move shared by every
    symbol of the timestamp and 5x larger: squared error chases the market move, IC ignores it."""
    rng = np.random.default_rng(seed)
    n_symbols, n_bars = 40, 160
    z = rng.standard_normal((n_bars, n_symbols))
    rank = (np.argsort(np.argsort(z, axis=1), axis=1) + 0.5) / n_symbols - 0.5
    market = 5.0 * rng.standard_normal((n_bars, 1))
    label = rank + 0.15 * rng.standard_normal((n_bars, n_symbols)) + market
    x = np.exp(2.0 * z)
    timestamps = pd.date_range("2022-01-03", periods=n_bars, freq="D", tz="UTC")
    frame = pd.DataFrame({
        "timestamp": np.tile(timestamps, n_symbols),
        "symbol": np.repeat([f"S{i:02d}" for i in range(n_symbols)], n_bars),
        "x": x.T.ravel(),
        "noise": rng.standard_normal(n_bars * n_symbols),
    })
    return frame, pd.Series(label.T.ravel(), index=frame.index)


def test_the_ic_loss_finds_a_signal_that_lives_in_the_cross_sectional_rank() -> None:
    frame, label = _rank_market(seed=3)
    bar = frame.groupby("symbol").cumcount().to_numpy()
    fit, test = bar < 110, bar >= 120
    params = {"lookback": 2, "hidden_size": 16, "batch_size": 400, "max_epochs": 25, "learning_rate": 1e-2,
              "patience": 25, "dropout": 0.0, "seed": 0, "objective": "ic", "device": "cpu"}
    model = make_forecaster("gru", task="regression", params=params).fit(frame, label, fit_mask=fit)
    prediction = model.predict(frame)
    rank_ics = []
    for _, rows in frame[test].groupby("timestamp").groups.items():
        rows = np.asarray(rows)
        rank_ics.append(spearmanr(prediction[rows], label.to_numpy()[rows]).statistic)
    assert np.mean(rank_ics) > 0.5, f"mean out-of-sample rank IC {np.mean(rank_ics):.3f}"
    assert np.isfinite([h["train_loss"] for h in model.history_]).all()
