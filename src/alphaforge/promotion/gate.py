"""The promotion decision, a pure function of the evidence (:func:`decide`), and how the evidence is read off an
evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alphaforge.promotion.params import (
    BaselineTest,
    Decision,
    GateEvidence,
    GateRule,
    OOSWindow,
    PromotionParams,
    Scorecard,
)
from alphaforge.schema import finite_or_none as _finite
from alphaforge.schema import format_metric as _fmt

if TYPE_CHECKING:
    import pandas as pd

    from alphaforge.evaluate import Evaluation


# ---------------------------------------------------------------------------------------------- decide


def plausible_sharpe_limit(max_plausible_sharpe: float, periods_per_year: float) -> float:
    """The daily limit scaled to the bar frequency: an annualised Sharpe grows with sqrt(bars a year)."""
    return max_plausible_sharpe * math.sqrt(max(periods_per_year, 1.0) / 252.0)


def decide(
    candidate: Scorecard,
    champion: Scorecard | None,
    evidence: GateEvidence,
    *,
    validation_passed: bool,
    drift_rules: Sequence[str] = (),
    params: PromotionParams,
    champion_label: str = "champion",
    drift_detail: str = "",
) -> Decision:
    """Apply the promotion rules (module docstring); pure (no I/O), so every outcome is testable and explainable.

    ``evidence``: the whole out-of-sample span (:func:`gate_evidence`). ``candidate`` and ``champion``: scores on
    the latest window for the champion comparison; ``champion`` is None when nothing serves yet, and must be
    scored on ``candidate.window`` or that rule fails. ``drift_rules``: the drift rules that fired.
    """
    metric = params.metric
    reasons: list[str] = []
    rules: list[GateRule] = []
    failed = False
    diagnoses: list[str] = []

    def rule(name: str, passed: bool | None, line: str, *, figure: Any = None, threshold: Any = None,
             required: bool = True) -> None:
        nonlocal failed
        if passed is None:
            verdict = "SKIP"
        elif not required:
            verdict = "INFO"
            line = f"(not required) {'passes' if passed else 'fails'}: {line}"
        else:
            verdict = "PASS" if passed else "FAIL"
            failed = failed or not passed
        reasons.append(f"{verdict} {line}")
        number = _finite(figure) if not isinstance(figure, str) else figure
        limit = _finite(threshold) if not isinstance(threshold, str) else threshold
        rules.append(GateRule(rule=name, verdict=verdict, figure=number, threshold=limit, detail=line))

    span = (f"{evidence.strategy} on the whole out-of-sample span ({evidence.n_periods} bars, "
            f"{evidence.execution} execution)")
    ic_t = evidence.rank_ic_tstat
    rule("ic_tstat", ic_t is not None and ic_t >= params.min_ic_tstat,
         f"rank IC {_fmt(evidence.rank_ic_mean)} with Newey-West t-stat {_fmt(ic_t)} "
         f"{'>=' if ic_t is not None and ic_t >= params.min_ic_tstat else '<'} min_ic_tstat {params.min_ic_tstat:g}",
         figure=ic_t, threshold=params.min_ic_tstat)

    if not evidence.baselines:
        rule("baselines", False, "no baseline was scored: cannot show the candidate beats the naive baselines",
             required=params.require_beat_baselines)
    for name, test in sorted(evidence.baselines.items()):
        adjusted = test.adjusted_p_value
        if adjusted is None:
            rule(f"beats_{name}", False,
                 f"net return vs baseline {name} ({span}): no test possible (too few bars or no difference)",
                 required=params.require_beat_baselines)
            continue
        passed = adjusted <= params.alpha
        rule(f"beats_{name}", passed,
             f"net return over baseline {name}: {_pct(test.annual_difference)} a year, HAC t {_fmt(test.t_stat)}, "
             f"p {_fmt(test.p_value)} x {evidence.n_trials} trial(s) = {_fmt(adjusted)} "
             f"{'<=' if passed else '>'} alpha {params.alpha:g} ({span})",
             figure=adjusted, threshold=params.alpha, required=params.require_beat_baselines)

    if evidence.pbo is None:
        rule("pbo", None, f"probability of backtest overfitting not measured: {evidence.pbo_detail}")
    elif evidence.pbo_trials < params.min_pbo_trials:
        rule("pbo", None, f"probability of backtest overfitting {_fmt(evidence.pbo)} over only {evidence.pbo_trials} "
                          f"complete tuning trial(s) (< min_pbo_trials {params.min_pbo_trials}): too few to judge; "
                          "not gated")
    else:
        rule("pbo", evidence.pbo <= params.max_pbo,
             f"probability of backtest overfitting {_fmt(evidence.pbo)} "
             f"{'<=' if evidence.pbo <= params.max_pbo else '>'} max_pbo {params.max_pbo:g} ({evidence.pbo_detail})",
             figure=evidence.pbo, threshold=params.max_pbo)

    limit = plausible_sharpe_limit(params.max_plausible_sharpe, evidence.periods_per_year)
    sharpe = evidence.net_sharpe
    too_good = sharpe is not None and sharpe > limit
    rule("plausible_sharpe", not too_good,
         f"net Sharpe {_fmt(sharpe)} {'>' if too_good else '<='} max_plausible_sharpe {limit:.2f} "
         f"({params.max_plausible_sharpe:g} for daily bars at {evidence.periods_per_year:g} bars a year)",
         figure=sharpe, threshold=limit)
    if too_good:
        diagnoses.append(f"too good to be true: net Sharpe {sharpe:.1f} above {limit:.1f}")
    for key, label, threshold in (
        ("illiquid_share", "of P&L from the least liquid quintile", params.max_illiquid_pnl_share),
        ("stale_share", "of P&L from bars that did not trade", params.max_stale_pnl_share),
        ("top_symbols_share", f"of the positive P&L from {len(evidence.top_symbols) or 'the top'} symbols "
                              f"({', '.join(evidence.top_symbols)})", params.max_top_symbols_pnl_share),
    ):
        share = getattr(evidence, key)
        if share is None:
            why = {"illiquid_share": "no volume to rank liquidity, or no positive P&L",
                   "stale_share": "no positive P&L", "top_symbols_share": "fewer than 10 symbols or no positive P&L"}
            rule(f"plausible_{key}", None, f"P&L attribution {key}: not measured ({why[key]})")
            continue
        passed = share <= threshold
        rule(f"plausible_{key}", passed, f"{100 * share:.0f}% {label} {'<=' if passed else '>'} "
                                         f"{100 * threshold:.0f}%", figure=share, threshold=threshold)
        if not passed:
            diagnoses.append(f"too good to be true: {100 * share:.0f}% {label}")

    ours = candidate.value(metric)
    theirs: float | None = None
    if champion is None:
        rule("champion", True, f"no {champion_label} serves yet: nothing to beat on {metric}")
    elif champion.window != candidate.window:
        rule("champion", False, f"{champion_label} was scored on window {champion.window}, the candidate on "
                                f"{candidate.window}: scores on different windows do not compare (rescore the "
                                "champion on the latest window)")
    else:
        theirs = champion.value(metric)
        if theirs is None:
            rule("champion", ours is not None, f"{champion_label} {metric} is undefined on window "
                                               f"{candidate.window}; candidate {_fmt(ours)} is defined")
        else:
            beats = ours is not None and ours > theirs + params.margin
            rule("champion", beats, f"candidate {metric} {_fmt(ours)} {'>' if beats else '<='} {champion_label} "
                                    f"{_fmt(theirs)} + margin {params.margin:g} on the latest window "
                                    f"{candidate.window}", figure=ours, threshold=theirs)

    rule("validation", validation_passed, f"data validation {'passed' if validation_passed else 'failed'}",
         required=params.require_validation)
    fired = list(dict.fromkeys(drift_rules))
    if not fired:
        rule("drift", True, f"drift report raised no alert{f' ({drift_detail})' if drift_detail else ''}",
             required=params.require_no_drift_alert)
    for name in fired:
        blocks = name in params.drift_blocks
        why = ("a measured drop in the model's own out-of-sample performance concerns this model"
               if name == "performance" else
               "listed in promote.drift_blocks" if blocks else
               "the challenger was just retrained on these bars: drift of the newest data against the old champion's "
               "training window is what retraining answers" if name in ("data_drift", "prediction_drift") else
               "not in promote.drift_blocks")
        rule(f"drift_{name}", not blocks, f"drift alert {name!r} {'blocks' if blocks else 'does not block'}: {why}",
             required=params.require_no_drift_alert)

    return Decision(promote=not failed, reasons=tuple(reasons), rules=tuple(rules), metric=metric,
                    margin=params.margin, window=candidate.window, candidate_value=ours, champion_value=theirs,
                    diagnosis="; ".join(diagnoses) or None)


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{100 * value:+.2f}%"


def gate_strategy(evaluation: Evaluation, params: PromotionParams) -> str:
    """The strategy the gate judges: ``params.strategy``, or the evaluation's primary one for ``auto``."""
    from alphaforge.schema import DataError

    if params.strategy == "auto":
        return evaluation.primary_strategy
    if params.strategy not in evaluation.strategies:
        raise DataError(f"promote.strategy {params.strategy!r}: the evaluation ({evaluation.mode}) has strategies "
                        f"{list(evaluation.strategies)}; rule: pick one of them, or auto")
    return params.strategy


def gate_evidence(evaluation: Evaluation, candidate: str, params: PromotionParams, *, n_trials: int = 1,
                  pbo: float | None = None, pbo_trials: int = 0, pbo_detail: str | None = None,
                  dsr: float | None = None) -> GateEvidence:
    """The gate's figures for ``candidate`` over every out-of-sample bar: the HAC test of its net return against
    every baseline (same strategy, same bars), its rank-IC t-stat and where its P&L came from.

    ``n_trials``: every configuration tried to reach the candidate (Optuna trials times families, at least 1).
    """
    from alphaforge.evaluate import BASELINES
    from alphaforge.stats import adjusted_p_value, newey_west

    strategy = gate_strategy(evaluation, params)
    ours = evaluation.returns[(candidate, strategy)]["net_return"].to_numpy(dtype=float)
    lags = max(evaluation.horizon - 1, 0)
    tests: dict[str, BaselineTest] = {}
    for name in BASELINES:
        theirs = evaluation.returns[(name, strategy)]["net_return"].to_numpy(dtype=float)
        test = newey_west(ours - theirs, min_lags=lags)
        tests[name] = BaselineTest(
            baseline_sharpe=_finite(evaluation.overall.at[(name, strategy), "sharpe"]),
            mean_difference=_finite(test.mean), annual_difference=_finite(test.mean * evaluation.periods_per_year),
            t_stat=_finite(test.t_stat), p_value=_finite(test.p_value),
            adjusted_p_value=_finite(adjusted_p_value(test.p_value, n_trials)), n=test.n, lags=test.lags)
    attribution = evaluation.attribution[(candidate, strategy)]
    return GateEvidence(
        candidate=candidate, strategy=strategy, mode=evaluation.mode, execution=evaluation.execution,
        periods_per_year=evaluation.periods_per_year, n_periods=int(ours.size), n_trials=max(int(n_trials), 1),
        net_sharpe=evaluation.overall.at[(candidate, strategy), "sharpe"],
        gross_sharpe=evaluation.overall.at[(candidate, strategy), "gross_sharpe"],
        rank_ic_mean=evaluation.signals.at[candidate, "rank_ic_mean"],
        rank_ic_tstat=evaluation.signals.at[candidate, "rank_ic_tstat"],
        baselines=tests, pbo=pbo, pbo_trials=int(pbo_trials), dsr=dsr,
        pbo_detail=pbo_detail or "no tuning trials to measure it on",
        illiquid_share=attribution.get("illiquid_share"), stale_share=attribution.get("stale_share"),
        top_symbols_share=attribution.get("top_symbols_share"), top_symbols=tuple(attribution.get("top_symbols", ())),
        n_symbols=int(attribution.get("n_symbols", 0)),
    )


def window_scorecards(evaluation: Evaluation, oof: pd.DataFrame, model: str, *, fold: int | None = None,
                      strategy: str | None = None) -> Scorecard:
    """One walk-forward fold's window from an evaluation (default: the last fold, the latest out-of-sample
    window): the model's scorecard there for ``strategy`` (default: the primary), for the champion comparison.

    ``oof`` is the frame that was evaluated (its ``fold`` and ``timestamp`` give the window's bounds);
    ``model`` is one of ``evaluation.models``.
    """
    from alphaforge.evaluate import METRICS
    from alphaforge.schema import DataError

    if model not in evaluation.models:
        raise DataError(f"window_scorecards: model {model!r} not in the evaluation's models {list(evaluation.models)}")
    strategy = strategy or evaluation.primary_strategy
    folds = sorted(int(f) for f in evaluation.per_fold["fold"].unique())
    chosen = folds[-1] if fold is None else fold
    if chosen not in folds:
        raise DataError(f"window_scorecards: fold {chosen} not in the evaluation's folds {folds}")
    stamps = oof.loc[oof["fold"] == chosen, "timestamp"]
    if stamps.empty:
        raise DataError(f"window_scorecards: the OOF frame has no rows in fold {chosen}")
    window = OOSWindow(start=stamps.min().isoformat(), end=stamps.max().isoformat())
    rows = evaluation.per_fold[(evaluation.per_fold["fold"] == chosen) & (evaluation.per_fold["strategy"] == strategy)]
    rows = rows.set_index("signal")
    return Scorecard(window=window, metrics={m: rows.at[model, m] for m in METRICS})
