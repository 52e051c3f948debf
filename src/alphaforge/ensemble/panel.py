"""The deployable ensemble: the base models' final fits, the fitted combiner and the feature spec, predicting a panel
with an interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import FEATURE_VERSION_ATTR, _utc_index, prediction_column
from alphaforge.ensemble.combiners import Combiner
from alphaforge.schema import DataError


# ------------------------------------------------------------------------------------------------ deployable


def _predict_with_interval(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Point forecast, and the interval where the family gives one (the same calls the train stage makes)."""
    if hasattr(model, "predict_interval"):
        table = model.predict_interval(frame)
        return pd.DataFrame({"prediction": table["prediction"].to_numpy(), "lower": table["lower"].to_numpy(),
                             "upper": table["upper"].to_numpy()})
    if hasattr(model, "predict_with_uncertainty"):
        table = model.predict_with_uncertainty(frame)
        return pd.DataFrame({"prediction": table["mean"].to_numpy(), "lower": table["lower"].to_numpy(),
                             "upper": table["upper"].to_numpy()})
    return pd.DataFrame({"prediction": np.asarray(model.predict(frame), dtype=np.float64)})


class PanelEnsemble:
    """The deployable ensemble: the families' final models, a fitted combiner and the feature spec.

    ``spec`` is ``models/trained/spec.json`` (``feature_version``, ``features``, ``horizon``,
    ``target``, ``task``, ``families``). :meth:`predict` takes a panel frame like the dataset the
    models trained on: ``timestamp``, ``symbol`` and every feature column, sorted by (symbol,
    timestamp); sequence families need each symbol's last ``lookback`` bars before the rows that
    matter (rows without a full window predict NaN).

    It returns one row per input row: ``timestamp``, ``symbol``, ``prediction`` (the combiner's
    output), each family's ``prediction_<family>`` (what an online :class:`HedgeEnsemble` re-weights),
    and, when every family gives an interval, ``lower`` and ``upper``: the ensemble prediction plus
    the weighted average of the families' interval offsets (``lower_i - p_i``, ``upper_i - p_i``)
    with :meth:`Combiner.interval_weights` (non-negative, summing to 1). The offsets are averaged
    rather than the bounds pushed through the combiner because the meta-learner rescales forecasts
    (a stack's weights rarely sum to 1) and the interval's width is about the target's spread, not
    the forecast's. The result always contains the prediction; its coverage is not re-calibrated.

    The feature version: a frame whose ``attrs["feature_version"]`` or ``feature_version`` column
    (every row) differs from the spec's is refused; through MLflow the column is the one that
    reaches the model (MLflow rebuilds the frame, dropping ``attrs``).
    """

    def __init__(self, base_models: Mapping[str, Any], combiner: Combiner, spec: Mapping[str, Any]) -> None:
        missing = [f for f in combiner.families if f not in base_models]
        if missing:
            raise ValueError(f"PanelEnsemble: the combiner needs family(ies) {missing} but no model was given")
        self.base_models = {f: base_models[f] for f in combiner.families}
        self.combiner = combiner
        self.spec = dict(spec)
        self.features: list[str] = list(spec["features"])
        for family, model in self.base_models.items():
            extra = [name for name in getattr(model, "feature_names_", []) if name not in self.features]
            if extra:
                raise ValueError(f"PanelEnsemble: the {family} model uses feature(s) {extra} absent from the spec")

    def check_input(self, frame: pd.DataFrame) -> None:
        """Raise :class:`DataError` naming what is wrong with ``frame`` (columns, feature version, order)."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"ensemble input: expected a pandas DataFrame, got {type(frame).__name__}")
        missing = [c for c in ("timestamp", "symbol", *self.features) if c not in frame.columns]
        if missing:
            raise DataError(f"ensemble input: missing feature column(s) {missing} (feature version "
                            f"{self.spec['feature_version']} needs {len(self.features)} features)")
        expected = str(self.spec["feature_version"])
        stamped = frame.attrs.get(FEATURE_VERSION_ATTR)
        if stamped is not None and str(stamped) != expected:
            raise DataError(f"ensemble input: frame.attrs['feature_version'] is {stamped!r} but the ensemble was "
                            f"trained on feature version {expected!r}; recompute the features")
        if FEATURE_VERSION_ATTR in frame.columns:
            versions = frame[FEATURE_VERSION_ATTR].astype(str)
            wrong = versions != expected
            if wrong.any():
                row = frame.index[wrong.to_numpy()][0]
                raise DataError(f"ensemble input: column 'feature_version' is {versions.loc[row]!r} at row {row!r} "
                                f"but the ensemble was trained on feature version {expected!r}")
        if frame.empty:
            raise DataError("ensemble input: no rows")
        symbols = frame["symbol"].astype(str).to_numpy()
        stamps = _utc_index(frame["timestamp"]).asi8
        out_of_order = (symbols[1:] < symbols[:-1]) | ((symbols[1:] == symbols[:-1]) & (stamps[1:] <= stamps[:-1]))
        if out_of_order.any():
            row = frame.index[int(np.flatnonzero(out_of_order)[0]) + 1]
            raise DataError(f"ensemble input: row {row!r} breaks the order; rule: sorted by symbol then timestamp, "
                            "one row per (symbol, timestamp)")

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Ensemble forecast (and interval) per row of the panel ``frame``; see the class docstring."""
        self.check_input(frame)
        panel = frame[["timestamp", "symbol", *self.features]].reset_index(drop=True)
        panel["timestamp"] = _utc_index(panel["timestamp"])
        out = pd.DataFrame({"timestamp": panel["timestamp"], "symbol": panel["symbol"].astype(str)})
        per_family = {family: _predict_with_interval(model, panel) for family, model in self.base_models.items()}
        base = pd.DataFrame({prediction_column(f): t["prediction"].to_numpy() for f, t in per_family.items()})
        prediction = self.combiner.predict(base)
        out["prediction"] = prediction
        if all("lower" in t.columns for t in per_family.values()):
            weights = self.combiner.interval_weights()
            lower_offset = sum(weights[f] * (t["lower"].to_numpy() - t["prediction"].to_numpy())
                               for f, t in per_family.items())
            upper_offset = sum(weights[f] * (t["upper"].to_numpy() - t["prediction"].to_numpy())
                               for f, t in per_family.items())
            out["lower"] = prediction + lower_offset
            out["upper"] = prediction + upper_offset
        for column in base.columns:
            out[column] = base[column].to_numpy()
        return out
