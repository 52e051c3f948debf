"""Volatility forecasts scored against realised volatility and a trailing baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alphaforge.evaluate.params import _json_number
from alphaforge.schema import DataError


def evaluate_volatility(oof: pd.DataFrame, models: dict[str, str], *, baseline: str = "volatility_20") -> dict[str, Any]:
    """Score forward-volatility forecasts out of sample: rank IC, MSE and QLIKE, against the trailing volatility.

    The naive baseline forecasts the next ``horizon`` bars' volatility by the trailing 20-bar one
    (``volatility_20``, same units: the std of one-bar log returns). QLIKE (Patton 2011) is
    ``mean(s/f - log(s/f) - 1)`` on variances s = realised^2, f = forecast^2, robust to noise in the
    realised proxy; lower is better. Rows without a positive forecast and realisation are left out.
    """
    from alphaforge.models.importance import rank_ic

    realised = oof["forward_volatility"].to_numpy(dtype=float)
    columns = {**models, "trailing_volatility": baseline}
    result: dict[str, Any] = {}
    for name, column in columns.items():
        if column not in oof.columns:
            raise DataError(f"evaluate_volatility: OOF frame has no column {column!r} for {name!r}")
        forecast = oof[column].to_numpy(dtype=float)
        ok = np.isfinite(forecast) & np.isfinite(realised) & (forecast > 0) & (realised > 0)
        ratio = realised[ok] ** 2 / forecast[ok] ** 2
        result[name] = {
            "rank_ic": _json_number(rank_ic(forecast, realised, oof["timestamp"].to_numpy())),
            "mse": _json_number(np.mean((forecast[ok] - realised[ok]) ** 2)) if ok.any() else None,
            "qlike": _json_number(np.mean(ratio - np.log(ratio) - 1.0)) if ok.any() else None,
            "n": int(ok.sum()),
        }
    return {"target": "forward_volatility", "models": {k: result[k] for k in models},
            "baselines": {"trailing_volatility": result["trailing_volatility"]}}
