"""Walk-forward splits: no overlap, purge and embargo respected, in both modes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphaforge.splits import WalkForward, WalkForwardParams


def panel_timestamps(n_times: int, n_symbols: int, seed: int = 0) -> pd.Series:
    """A panel's timestamp column in shuffled row order, with one symbol missing some bars (illiquid)."""
    times = pd.date_range("2020-01-01", periods=n_times, freq="B", tz="UTC")
    stamps = np.concatenate([times] + [times[::3]] + [times] * (n_symbols - 1))
    rng = np.random.default_rng(seed)
    return pd.Series(stamps[rng.permutation(len(stamps))])


@pytest.mark.parametrize("mode", ["expanding", "sliding"])
@pytest.mark.parametrize("horizon,embargo", [(1, 0), (5, 5), (20, 3)])
def test_no_overlap_and_gap_respected(mode: str, horizon: int, embargo: int) -> None:
    stamps = panel_timestamps(600, 4)
    params = WalkForwardParams(n_splits=4, mode=mode, min_train_size=200, train_size=150, embargo=embargo)
    folds = WalkForward(params, purge=horizon).split(stamps)
    unique = pd.DatetimeIndex(stamps.unique()).sort_values()
    position = {t: i for i, t in enumerate(unique)}
    assert len(folds) == 4
    previous_test_end = -1
    for fold in folds:
        train_pos = np.array([position[t] for t in stamps.iloc[fold.train_rows]])
        test_pos = np.array([position[t] for t in stamps.iloc[fold.test_rows]])
        assert not set(fold.train_rows) & set(fold.test_rows)
        # every training bar ends at least purge + embargo bars before the first test bar
        assert test_pos.min() - train_pos.max() == horizon + embargo + 1
        # a label at the last training bar looks `horizon` bars ahead: still before the test window
        assert train_pos.max() + horizon < test_pos.min()
        # test windows tile forward in time without overlap
        assert test_pos.min() == previous_test_end + 1 or previous_test_end == -1
        previous_test_end = test_pos.max()
        if mode == "sliding":
            assert train_pos.max() - train_pos.min() + 1 == 150
        else:
            assert train_pos.min() == 0
        # all rows of a timestamp fall on one side
        assert fold.train_end < fold.test_start
    assert previous_test_end == len(unique) - 1


def test_expanding_training_grows_and_sliding_stays() -> None:
    stamps = panel_timestamps(500, 2)
    expanding = WalkForward(WalkForwardParams(n_splits=3, min_train_size=100), purge=5).split(stamps)
    sizes = [len(f.train_rows) for f in expanding]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    sliding = WalkForward(WalkForwardParams(n_splits=3, mode="sliding", min_train_size=100), purge=5).split(stamps)
    starts = [f.train_start for f in sliding]
    assert starts == sorted(starts) and starts[0] < starts[-1]


def test_too_little_data_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError, match="min_train_size=300.*gap=10.*n_splits=5"):
        WalkForward(WalkForwardParams(n_splits=5, min_train_size=300, embargo=5), purge=5).split(panel_timestamps(312, 2))
