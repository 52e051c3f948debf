"""The evaluate stage's overfitting figures per candidate: the deflated Sharpe over the trials tried, and PBO by
CSCV over the tuning trials' out-of-sample returns, every trial traded like the candidate."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphaforge.paths import Paths

if TYPE_CHECKING:
    from alphaforge.config import Params

log = logging.getLogger("alphaforge.stages.evaluate")


def overfitting_by_candidate(
    params: Params, oof: pd.DataFrame, evaluation: Any, families: list[str], centre: float, market: pd.DataFrame,
    paths: Paths,
) -> dict[str, dict[str, Any]]:
    """Deflated Sharpe over the trials tried, and PBO by CSCV over complete trials' OOS returns, per candidate.

    Every trial is traded like the candidate (the gate's strategy, execution, tradability, costs). A family's
    trials are its tuning study's; the ensemble counts the trials of every family it combines.
    """
    from alphaforge import tracking
    from alphaforge.evaluate import strategy_returns
    from alphaforge.overfitting import overfitting_summary, trial_return_matrix
    from alphaforge.promotion import gate_strategy
    from alphaforge.report import plot_pbo_logits
    from alphaforge.tune import trial_predictions_dir

    tuned = json.loads(paths.tune_summary.read_text())["families"] if paths.tune_summary.exists() else {}
    paths.plots_dir.mkdir(parents=True, exist_ok=True)
    strategy = gate_strategy(evaluation, params.promote)
    keys = oof[["timestamp", "symbol", "fold"]]
    trial_returns: dict[str, dict[str, pd.Series]] = {}
    trial_counts: dict[str, int] = {}
    for family in [f for f in families if f != "ensemble"]:
        study = tuned.get(family)
        trial_returns[family], trial_counts[family] = {}, 1
        if not study:
            continue
        trial_counts[family] = max(int(study["n_trials"]), 1)
        folder = trial_predictions_dir(tracking.state_dir() / "tune_trials", study["study_name"])
        for path in sorted(folder.glob("trial_*.parquet")):
            trial = pd.read_parquet(path).merge(keys, on=["timestamp", "symbol"], how="inner")
            if trial.empty:
                continue
            trial["signal"] = trial["prediction"] - centre
            returns = strategy_returns(trial, "signal", params.evaluate, market, horizon=params.labels.horizon,
                                       strategy=strategy)
            trial_returns[family][path.stem] = returns.set_index("timestamp")["net_return"]
    out: dict[str, dict[str, Any]] = {}
    for family in families:
        members = [f for f in families if f != "ensemble"] if family == "ensemble" else [family]
        trials = {f"{m}/{k}": v for m in members for k, v in trial_returns.get(m, {}).items()}
        n_trials = sum(trial_counts.get(m, 1) for m in members)
        candidate = evaluation.returns[(family, strategy)].set_index("timestamp")["net_return"]
        matrix = trial_return_matrix(trials) if len(trials) >= 2 else None
        n_trials = max(n_trials, 0 if matrix is None else matrix.shape[1])
        # an untuned candidate is one trial: its deflated Sharpe is the probabilistic Sharpe (E[max] of one is 0)
        summary = overfitting_summary(candidate, matrix, periods_per_year=evaluation.periods_per_year,
                                      n_trials=n_trials, trial_sharpes_variance=0.0 if n_trials == 1 else None)
        summary["n_trials"] = int(n_trials)
        plot_pbo_logits(summary["pbo"], paths.plots_dir / f"pbo_{family}.png",
                        title=f"{family}: CSCV logits over {len(trials)} tuning trials ({strategy})")
        out[family] = summary
        log.info("evaluate: %s deflated Sharpe %s, PBO %s (%d trials, %s)", family, summary["dsr"].get("dsr"),
                 summary["pbo"].get("pbo"), n_trials, strategy)
    return out
