"""Stage ``regimes``: a market regime model (HMM or GMM) fitted on the first walk-forward training window.

Writes models/regimes/model.json (the features stage turns it into causal ``regime_prob_*`` features, and the
trained spec carries it so a served model computes them from raw bars), data/regimes/features.parquet, a plot
of the market shaded by regime, and reports/regimes/summary.json.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.io import write_json_atomic, write_parquet_atomic
from alphaforge.paths import Paths
from alphaforge.stages._main import stage_main

if TYPE_CHECKING:
    from alphaforge.regimes import RegimeModel

log = logging.getLogger(__name__)


def load_regime_model(paths: Paths) -> RegimeModel:
    """The regimes stage's fitted model (``features.regimes`` on); a clear error when that stage has not run."""
    from alphaforge.regimes import RegimeModel

    if not paths.regime_model.is_file():
        raise FileNotFoundError(f"{paths.regime_model} is missing and features.regimes is on: run the regimes stage "
                                "first (dvc repro regimes), or set features.regimes: false")
    return RegimeModel.load(paths.regime_model)


def regime_model_of(feature_names: list[str], paths: Paths) -> dict[str, Any] | None:
    """The regime model's JSON for the trained model's spec when its features include regime probabilities,
    so a served model computes them from raw bars without the repository's files (None otherwise)."""
    if not any(name.startswith("regime_prob_") for name in feature_names):
        return None
    model = load_regime_model(paths)
    expected = [f"regime_prob_{k}" for k in range(model.params.n_regimes)]
    used = [name for name in feature_names if name.startswith("regime_prob_")]
    if used != expected:
        raise ValueError(f"train: the dataset's regime columns {used} do not match {paths.regime_model} "
                         f"({model.params.n_regimes} regimes); rerun the features stage (dvc repro features)")
    return model.to_json()


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Fit the market regime model on the first training window; causal regime features for every bar."""
    from alphaforge.regimes import current_regime, market_returns, plot_regimes, regime_features
    from alphaforge.splits import first_training_end
    from alphaforge.validate import as_series

    paths = Paths(root)

    bars = as_series(pd.read_parquet(paths.validated_bars))  # no market return across a suspension
    fit_end = first_training_end(params.train.walk_forward, params.labels.horizon, bars["timestamp"])
    model, frame = regime_features(bars, params.regimes, fit_end)
    frame["symbol"] = pd.read_parquet(paths.validated_bars, columns=["symbol"])["symbol"].to_numpy()
    model.save(paths.regime_model)
    write_parquet_atomic(frame, paths.regime_features)
    plot_regimes(market_returns(bars), model, paths.regime_plot)
    summary = {"fit_end": str(fit_end), "method": params.regimes.method, "n_regimes": params.regimes.n_regimes,
               "transmat": None if model.transmat_ is None else model.transmat_.tolist(),
               "share_by_regime": {str(int(k)): float(v) for k, v in
                                   frame["regime"].dropna().value_counts(normalize=True).sort_index().items()},
               "current": current_regime(model, market_returns(bars))}
    write_json_atomic(summary, paths.regime_summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("regimes", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
