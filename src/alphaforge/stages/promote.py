"""Stage ``promote``: register the ensemble as the challenger; move ``champion`` to it only if it passes every rule.

Rules (``promote:``, :mod:`alphaforge.promotion`): over the whole out-of-sample span a significant rank IC, a net
edge over every naive baseline (same strategy, execution and costs) that survives the count of trials, a PBO
within bounds and a plausible P&L; on the latest window, beat the champion; data validation passed; no drift
alert that concerns this model. Every rule with its figure, threshold and verdict goes to
reports/promotion/decision.json. The alias switch is the last step: any failure leaves the champion as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages._common import candidate_frame, load_market, read_run_reference, read_spec
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Register the ensemble as the challenger; move ``champion`` to it only if it passes every rule.

    Rules (``promote:``, see :mod:`alphaforge.promotion`): over the whole out-of-sample span a significant rank
    IC, a net edge over every naive baseline (same strategy, execution and costs) that survives the count of
    trials, a PBO within bounds and a plausible P&L; on the latest window, beat the champion; data validation
    passed; no drift alert that concerns this model. The decision, every rule with its figure, threshold and
    verdict, goes to reports/promotion/decision.json, the version's tags and the run's tags. The alias switch
    is the last step: any failure before it leaves the champion as it was, and the stage says so.
    """
    from alphaforge import tracking
    from alphaforge.evaluate import evaluate_oof
    from alphaforge.promotion import PromotionError, gate_evidence, gate_strategy, window_scorecards
    from alphaforge.promotion import promote as promote_model

    paths = Paths(root)
    spec = read_spec(paths)
    stack_metrics = json.loads(paths.stack_metrics.read_text()) if paths.stack_metrics.exists() else {}
    model_uri = (stack_metrics.get("mlflow") or {}).get("model_uri")
    if not model_uri:
        raise PromotionError("promote: the stack stage logged no model (is tracking.enabled false?); champion unchanged")
    oof, models, centre = candidate_frame(spec, paths)
    candidate_name = "ensemble" if "ensemble" in models else spec["families"][0]
    market = load_market(params, paths)
    horizon = params.labels.horizon
    evaluation = evaluate_oof(oof, params.evaluate, models=models, market=market, horizon=horizon)
    evaluated = json.loads(paths.evaluate_metrics.read_text()) if paths.evaluate_metrics.exists() else {}
    overfitting = ((evaluated.get("models") or {}).get(candidate_name) or {}).get("overfitting") or {}
    pbo = overfitting.get("pbo") or {}
    evidence = gate_evidence(
        evaluation, candidate_name, params.promote, n_trials=int(overfitting.get("n_trials") or 1),
        pbo=pbo.get("pbo"), pbo_trials=int(pbo.get("n_trials") or 0), dsr=(overfitting.get("dsr") or {}).get("dsr"),
        pbo_detail=f"CSCV over {pbo.get('n_trials')} tuning trials" if pbo.get("pbo") is not None
        else pbo.get("reason"))
    strategy = gate_strategy(evaluation, params.promote)
    card = window_scorecards(evaluation, oof, candidate_name, strategy=strategy)
    validation = json.loads(paths.validation_summary.read_text())
    drift = json.loads(paths.drift_alert.read_text()) if paths.drift_alert.exists() else None
    reference = read_run_reference(paths)

    def rescore_champion(champion: Any, window: Any) -> dict[str, Any]:
        """The champion scored on the challenger's window, on the bars it has not been trained on."""
        trained_until = pd.Timestamp(champion.stored.window.end) if champion.stored else None
        start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
        rows = oof[(oof["timestamp"] >= start) & (oof["timestamp"] <= end)]
        if trained_until is not None:
            rows = rows[rows["timestamp"] > trained_until + pd.Timedelta(0)]
        if rows["timestamp"].nunique() < params.promote.min_unseen_bars:
            raise PromotionError(
                f"promote: champion v{champion.version} was trained on data up to {trained_until}; the window "
                f"{window} leaves {rows['timestamp'].nunique()} unseen bars (< {params.promote.min_unseen_bars}) to "
                "compare it fairly; champion unchanged")
        from alphaforge.pyfunc import predict_frame

        dataset = pd.read_parquet(paths.dataset, columns=["timestamp", "symbol", *spec["features"]])
        dataset = dataset[dataset["timestamp"] <= end]
        predicted = predict_frame(tracking.load_pyfunc_model(champion.model_uri), dataset, spec["feature_version"])
        predicted["timestamp"] = pd.to_datetime(predicted["timestamp"], utc=True)
        scored = rows.merge(predicted[["timestamp", "symbol", "prediction"]].rename(columns={"prediction": "champ"}),
                            on=["timestamp", "symbol"], how="inner")
        scored["signal_champion"] = scored["champ"] - centre
        scored["fold"] = 0
        champion_eval = evaluate_oof(scored, params.evaluate, models={"champion": "signal_champion"}, market=market,
                                     horizon=horizon)
        return window_scorecards(champion_eval, scored, "champion", strategy=strategy).metrics

    outcome = promote_model(
        model_uri, card, evidence,
        validation_passed=bool(validation.get("success")),
        drift_rules=list((drift or {}).get("rules") or []),
        drift_detail=(drift or {}).get("detail", "no drift report in this pipeline yet"),
        params=params.promote, run_id=reference.get("run_id"), rescore_champion=rescore_champion,
        decision_path=paths.decision,
    )
    result = outcome.model_dump(mode="json")
    log.info("promote: %s%s", result.get("status"),
             f" ({outcome.decision.diagnosis})" if outcome.decision.diagnosis else "")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("promote", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
