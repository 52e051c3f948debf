"""Issue #16: ``models/sequence.py`` and ``models/tabular.py`` were split into modules of at most 600 lines.

What must survive the split: every name importable from its old path, and the class path that saved wrappers
(robust z-score, conformal) write into their ``config.json``, so a model saved before the split loads after it,
and one saved after it loads with the code from before.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphaforge.models.normalise import RobustZScoreForecaster
from alphaforge.models.registry import load_forecaster, make_forecaster

MODELS = Path(importlib.import_module("alphaforge.models").__file__).parent
MAX_LINES = 600
# Private names other modules or tests import from the old paths (serving/model.py: _ScaledForecaster).
OLD_PRIVATE = {
    "alphaforge.models.sequence": ("_RecurrentNet", "_TransformerNet", "_TemporalConvNet", "_repeatable",
                                   "_amp_dtype", "_monte_carlo_mode", "_symbol_codes", "_feature_matrix"),
    "alphaforge.models.tabular": ("_Params", "_ScaledForecaster", "_ForestForecaster", "_blas_threads",
                                  "_imputer"),
}


def test_no_models_module_is_over_600_lines() -> None:
    sizes = {str(path.relative_to(MODELS)): len(path.read_text().splitlines()) for path in MODELS.rglob("*.py")}
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (issue #16): {over}; split them along their seams"


@pytest.mark.parametrize("old_path", sorted(OLD_PRIVATE))
def test_every_name_still_imports_from_its_old_path(old_path: str) -> None:
    module = importlib.import_module(old_path)
    names = [*module.__all__, *OLD_PRIVATE[old_path]]
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{old_path} no longer provides {missing}"
    assert len(module.__all__) >= 20, f"{old_path}.__all__ lost names: {module.__all__}"


def test_each_public_forecaster_class_names_its_old_path_as_its_module() -> None:
    from alphaforge.models.sequence import FAMILY_CLASSES, SequenceForecaster
    from alphaforge.models.tabular import TABULAR_CLASSES, TabularForecaster

    for old_path, classes in (("alphaforge.models.tabular", [TabularForecaster, *TABULAR_CLASSES.values()]),
                              ("alphaforge.models.sequence", [SequenceForecaster, *FAMILY_CLASSES.values()])):
        for cls in classes:
            assert cls.__module__ == old_path, f"{cls.__qualname__}.__module__ is {cls.__module__!r}, not {old_path!r}"
            assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls


def _panel(n_symbols: int = 4, n_bars: int = 60) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    n = n_symbols * n_bars
    frame = pd.DataFrame({
        "timestamp": np.tile(pd.date_range("2023-01-02", periods=n_bars, freq="D", tz="UTC"), n_symbols),
        "symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_bars),
        "signal": rng.standard_normal(n),
        "other": rng.standard_normal(n),
    })
    return frame, pd.Series(0.5 * frame["signal"] + 0.1 * rng.standard_normal(n), index=frame.index)


@pytest.mark.parametrize("family", ["ridge", "lightgbm"])
def test_a_saved_wrapper_records_the_old_class_path_and_loads(tmp_path: Path, family: str) -> None:
    frame, label = _panel()
    params = {"n_estimators": 20} if family == "lightgbm" else {}
    model = RobustZScoreForecaster(make_forecaster(family, task="regression", params=params)).fit(frame, label)
    model.save(tmp_path / "model")
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["base_class"]
    assert recorded["module"] == "alphaforge.models.tabular", recorded
    loaded = load_forecaster(tmp_path / "model")
    assert type(loaded.model_) is type(model.model_)
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
