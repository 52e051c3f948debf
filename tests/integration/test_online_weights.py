"""Online Hedge weights (serving.online_weights): seeded from the shipped hedge_seed, moved one step per bar as
realised returns arrive, saved in Redis after every step; a restart continues from the saved state, a retried
delivery counts once, and replaying the same outcomes offline with HedgeEnsemble gives the same weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphaforge.ensemble import HedgeEnsemble
from alphaforge.serving.online_weights import MemoryState, OnlineWeights

REDIS_URL = "redis://127.0.0.1:6379/0"
FAMILIES = ["ridge", "lightgbm", "xgboost"]


def _outcomes(seed: int, n_bars: int = 40, n_rows: int = 6) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Rows of ``n_bars`` bars: the families' predictions (lightgbm the most skilled) and realised returns."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-03-01", periods=n_bars, freq="D", tz="UTC").repeat(n_rows)
    realised = rng.normal(0.0, 0.01, len(stamps))
    skill = np.array([0.2, 1.0, 0.0])
    predictions = realised[:, None] * skill + rng.normal(0.0, 0.01, (len(stamps), len(FAMILIES)))
    return stamps, predictions, realised


def _seed() -> dict:
    hedge = HedgeEnsemble(FAMILIES, learning_rate=None, loss="sign")
    hedge.update({"ridge": [0.01, -0.01], "lightgbm": [0.01, 0.01], "xgboost": [-0.01, 0.01]}, [0.02, 0.01],
                 timestamp="2024-02-28")
    return hedge.to_dict()


def _offline(seed: dict, stamps: pd.DatetimeIndex, predictions: np.ndarray, realised: np.ndarray) -> HedgeEnsemble:
    hedge = HedgeEnsemble.from_dict(seed)
    for stamp in sorted(set(stamps)):
        rows = np.asarray(stamps == stamp)
        hedge.update({f: predictions[rows, i] for i, f in enumerate(FAMILIES)}, realised[rows], timestamp=stamp)
    return hedge


def test_a_restart_continues_from_redis_and_equals_the_offline_replay(redis_hedge_key) -> None:
    store, key = redis_hedge_key
    seed = _seed()
    stamps, predictions, realised = _outcomes(1)
    first = stamps < stamps.unique()[25]

    online = OnlineWeights.open(seed, store=store, key=key)
    assert online.source == "seed" and online.info()["n_updates"] == 1
    assert online.update(stamps[first], predictions[first], realised[first]) == 25
    before_restart = online.info()

    restarted = OnlineWeights.open(seed, store=store, key=key)  # what a restarted service does
    assert restarted.source == "store"
    assert restarted.info()["weights"] == before_restart["weights"]
    assert restarted.info()["updated_at"] == before_restart["updated_at"]
    # a retried delivery of bars already applied counts once; the rest moves the weights
    assert restarted.update(stamps, predictions, realised) == 15 and restarted.skipped == 25

    offline = _offline(seed, stamps, predictions, realised)
    assert restarted.info()["weights"] == offline.weights()  # exactly: same steps, same arithmetic
    assert restarted.hedge.to_dict() == offline.to_dict()
    assert restarted.info()["weights"]["lightgbm"] > 0.5  # the skilled family gained
    np.testing.assert_array_equal(restarted.vector(), [offline.weights()[f] for f in FAMILIES])


def test_a_state_over_other_families_is_refused() -> None:
    store = MemoryState()
    OnlineWeights.open(_seed(), store=store, key="k").update(*_outcomes(2, n_bars=2))
    other = HedgeEnsemble(["ridge", "lightgbm"]).to_dict()
    with pytest.raises(ValueError, match="saved state is over families"):
        OnlineWeights.open(other, store=store, key="k")
