"""Score every model and baseline on the OOF frame, per fold and overall (:func:`evaluate_oof`)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from alphaforge.backtest import BASELINE_SIGNALS, simulate
from alphaforge.evaluate.ic import _fold_ic_stats, _signal_stats
from alphaforge.evaluate.inputs import _validate_oof, evaluation_mode
from alphaforge.evaluate.params import (
    BASELINES,
    BENCHMARK,
    BENCHMARKED,
    DEFAULT_MODELS,
    METRICS,
    SIGNAL_METRICS,
    STRATEGY_METRICS,
    Evaluation,
    EvaluationParams,
)
from alphaforge.evaluate.strategies import (
    _attribution,
    _panel,
    _signal_matrix,
    _strategy_metrics,
    _targets,
    _tradability,
    strategies_for,
)
from alphaforge.metrics import infer_periods_per_year
from alphaforge.metrics import directional_accuracy as _directional_accuracy
from alphaforge.schema import DataError


def evaluate_oof(oof: pd.DataFrame, params: EvaluationParams, models: dict[str, str] | None = None, *,
                 market: pd.DataFrame, horizon: int = 1) -> Evaluation:
    """Score every model and baseline on the OOF frame, traded through ``market``, per fold and overall.

    ``market`` is :func:`market_for` of the validated bars (it must cover the OOF rows); ``horizon`` is the
    label horizon (the tranche holding period unless ``params.holding`` says otherwise, and the least HAC lag
    of the IC tests). ``models`` maps each model's name to its signal column (default ``{"model":
    "prediction"}``); a name may not be a baseline's.
    """
    models = dict(models or DEFAULT_MODELS)
    clash = sorted(set(models) & set(BASELINES))
    if clash:
        raise DataError(f"evaluate_oof: model name(s) {clash} are baseline names; rename the model(s)")
    _validate_oof(oof, list(models.values()))
    frame = oof.sort_values(["timestamp", "symbol"], kind="mergesort").reset_index(drop=True)
    for name, column in models.items():
        frame[name] = frame[column].astype(float)
    baseline_values = frame[["timestamp", "symbol"]].merge(
        market[["timestamp", "symbol", *BASELINE_SIGNALS]], on=["timestamp", "symbol"], how="left")
    for name in BASELINE_SIGNALS:
        frame[name] = baseline_values[name].to_numpy(dtype=float)
    frame[BENCHMARK] = 1.0
    mode = evaluation_mode(frame, params.min_cross_section)
    periods_per_year = params.periods_per_year or infer_periods_per_year(frame["timestamp"])
    strategies = strategies_for(mode)
    holding = params.holding or horizon
    panel = _panel(frame, market, params)
    folds = sorted(int(f) for f in frame["fold"].unique())
    fold_of_stamp = frame.groupby("timestamp")["fold"].first()

    names = (*models, *BASELINES)
    signal_rows, overall_rows, per_fold_rows = [], [], []
    returns: dict[tuple[str, str], pd.DataFrame] = {}
    attribution: dict[tuple[str, str], dict[str, Any]] = {}
    ic_tested: dict[str, pd.Series] = {}
    fold_ic: dict[str, dict[int, dict[str, float]]] = {}
    for name in names:
        stats, ic, rank_ic, tested = _signal_stats(frame, name, mode, params, horizon)
        signal_rows.append({"signal": name, **stats})
        ic_tested[name] = tested
        fold_ic[name] = _fold_ic_stats(ic, rank_ic, fold_of_stamp, mode, horizon)
        matrix = _signal_matrix(panel, frame, name)
        for strategy in strategies:
            simulation = simulate(panel, _targets(panel, name, matrix, strategy, params, holding))
            returns[(name, strategy)] = simulation.returns
            attribution[(name, strategy)] = _attribution(panel, simulation)
    for name in names:
        for strategy in strategies:
            frame_returns = returns[(name, strategy)]
            benchmark = returns[(BENCHMARK, strategy)]["net_return"].to_numpy() if strategy in BENCHMARKED else None
            excess = None if benchmark is None else frame_returns["net_return"].to_numpy() - benchmark
            overall_rows.append({"signal": name, "strategy": strategy,
                                 **_strategy_metrics(frame_returns, excess, periods_per_year)})
            for fold in folds:
                in_fold = (frame_returns["fold"] == fold).to_numpy()
                signal_fold = fold_ic[name].get(fold, dict.fromkeys(("ic_mean", "ic_tstat", "rank_ic_mean",
                                                                    "rank_ic_tstat"), math.nan))
                rows = frame["fold"] == fold
                per_fold_rows.append({
                    "fold": fold, "signal": name, "strategy": strategy, **signal_fold,
                    "directional_accuracy": _directional_accuracy(frame.loc[rows, name],
                                                                  frame.loc[rows, "forward_return"]),
                    **_strategy_metrics(frame_returns[in_fold], None if excess is None else excess[in_fold],
                                        periods_per_year),
                })
    signals = pd.DataFrame(signal_rows, columns=["signal", *SIGNAL_METRICS]).set_index("signal")
    overall = pd.DataFrame(overall_rows, columns=["signal", "strategy", *STRATEGY_METRICS]).set_index(
        ["signal", "strategy"])
    per_fold = pd.DataFrame(per_fold_rows, columns=["fold", "signal", "strategy", *METRICS])
    primary = per_fold[per_fold["strategy"] == strategies[0]]
    ic_by_fold = primary[["fold", "signal", "ic_mean", "rank_ic_mean"]].rename(
        columns={"ic_mean": "ic", "rank_ic_mean": "rank_ic"}).reset_index(drop=True)
    return Evaluation(mode=mode, periods_per_year=float(periods_per_year), params=params, models=tuple(models),
                      strategies=strategies, horizon=int(horizon), signals=signals, overall=overall,
                      per_fold=per_fold, returns=returns, attribution=attribution, ic=ic_tested,
                      ic_by_fold=ic_by_fold, tradability=_tradability(market, frame),
                      execution=str(market.attrs.get("execution", params.execution)), frame=frame, market=market)
