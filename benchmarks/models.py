"""Every model family and their stack, out of sample, in Qlib's benchmark form (issue 17).

    python benchmarks/models.py --out benchmarks/results/models.json

What it runs, per feature set (``alpha158`` and ``basic``) and per seed (0, 1, 2):

* the bundled data (``--source``, default params.yaml's ``ingest.source``) through ingest, validate (the
  suspension segments included) and the features stage's code (``features.set`` overridden, no regime
  columns: they need the regimes stage's model), with the gate's execution-aligned labels
  (:func:`alphaforge.features.compute_labels`, ``evaluate.execution``);
* every family (``--families``, default all nine: LightGBM, XGBoost, random forest, ridge, MLP, LSTM, GRU,
  Transformer and the causal dilated CNN, a TCN) through :func:`alphaforge.train.walk_forward_train` with
  params.yaml's walk-forward splits, purge and embargo, starting from params.yaml's hyperparameters with a
  smaller budget (:data:`BUDGET`: fewer trees, iterations and epochs) so the whole run fits in about
  20 minutes on two CPU cores; sequence families are scored on their deterministic forecast
  (:class:`PointForecast`), not the train stage's Monte Carlo dropout mean;
* the stack (:func:`alphaforge.ensemble.fit_stack`, params.yaml's ``ensemble``) over those families' OOF
  predictions; like the evaluate stage, every model is then judged on the rows the stack has
  out-of-sample predictions for (the meta walk-forward's test windows), so the rows compared are the same;
* the scores, on those rows: IC, ICIR, rank IC, rank ICIR (per-timestamp cross-sectional correlations;
  ICIR = mean / std over timestamps, as Qlib), and the ``topk`` strategy (long only, Qlib's TopkDropout:
  :func:`alphaforge.evaluate.evaluate_oof`, params.yaml's ``evaluate`` execution, tradability and costs)
  against the equal-weight universe: annualised excess return, information ratio and max drawdown of the
  excess return, each with costs (net minus the benchmark's net) and without (gross minus gross), summed
  not compounded as Qlib's ``risk_analysis`` does.

The JSON holds every run (``runs``) and the mean and std over seeds (``table``); ``--predictions`` also
writes the scored rows (one parquet per feature set and seed) so that a figure can be recomputed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FAMILIES: tuple[str, ...] = ("lightgbm", "xgboost", "random_forest", "ridge", "mlp", "lstm", "gru", "transformer",
                             "cnn")
SEQUENCE: frozenset[str] = frozenset({"lstm", "gru", "transformer", "cnn"})
STACK = "ensemble"
# The reduced budget: params.yaml's hyperparameters, with these overrides, so nine families x two feature sets x
# three seeds fit in about 20 minutes on two idle CPU cores (half the trees at a higher learning rate, few epochs).
BUDGET: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_estimators": 100, "learning_rate": 0.05},
    "xgboost": {"n_estimators": 100, "learning_rate": 0.08},
    "random_forest": {"n_estimators": 30, "max_samples": 0.3},
    "mlp": {"max_iter": 15},
    **{family: {"max_epochs": 2, "max_train_windows": 20000, "patience": 1}
       for family in ("lstm", "gru", "transformer", "cnn")},
}
# Qlib's published figures on CSI300 with Alpha158 (examples/benchmarks/README.md of microsoft/qlib at commit
# 007082a1, mean over 20 seeds; the strategy metrics are of the TopkDropout excess return with cost): what the
# table is shown beside. Their data are CSI300 (300 names, 2008-2020, test 2017-2020), not ours. Keys are our
# family names where one stands in for theirs: ridge for their Linear, cnn (a TCN) for their TCN, ensemble (a
# stack) beside their DoubleEnsemble; their LSTM and GRU use 20 selected Alpha158 features.
_QLIB_COLUMNS = ("ic", "icir", "rank_ic", "rank_icir", "excess_return_with_cost", "information_ratio_with_cost",
                 "max_drawdown_with_cost")
QLIB_ALPHA158: dict[str, dict[str, Any]] = {
    family: {"model": model, **dict(zip(_QLIB_COLUMNS, figures, strict=True))}
    for family, model, figures in (
        ("lightgbm", "LightGBM", (0.0448, 0.3660, 0.0469, 0.3877, 0.0901, 1.0164, -0.1038)),
        ("xgboost", "XGBoost", (0.0498, 0.3779, 0.0505, 0.4131, 0.0780, 0.9070, -0.1168)),
        ("ridge", "Linear", (0.0397, 0.3000, 0.0472, 0.3531, 0.0692, 0.9209, -0.1509)),
        ("mlp", "MLP", (0.0376, 0.2846, 0.0429, 0.3220, 0.0895, 1.1408, -0.1103)),
        ("lstm", "LSTM (20 features)", (0.0318, 0.2367, 0.0435, 0.3389, 0.0381, 0.5561, -0.1207)),
        ("gru", "GRU (20 features)", (0.0315, 0.2450, 0.0428, 0.3440, 0.0344, 0.5160, -0.1017)),
        ("transformer", "Transformer", (0.0264, 0.2053, 0.0407, 0.3273, 0.0273, 0.3970, -0.1101)),
        ("cnn", "TCN", (0.0275, 0.2157, 0.0411, 0.3379, 0.0190, 0.2887, -0.1202)),
        ("ensemble", "DoubleEnsemble", (0.0544, 0.4340, 0.0523, 0.4284, 0.1168, 1.3384, -0.1036)),
    )
}
METRICS: tuple[str, ...] = (
    "ic", "icir", "rank_ic", "rank_icir",
    "excess_return_without_cost", "information_ratio_without_cost", "max_drawdown_without_cost",
    "excess_return_with_cost", "information_ratio_with_cost", "max_drawdown_with_cost",
)

log = logging.getLogger("benchmarks.models")


def _load_bars(params: Any) -> pd.DataFrame:
    """Ingest and validate ``params.ingest`` like the pipeline, with validate's segments: data validation refuses
    are refused; with ``validate.policy: quarantine`` the broken rows are set aside first (within the limits)."""
    from alphaforge.data.ingest import load_source
    from alphaforge.validate import assign_segments, quarantine_rows, validate_bars

    bars = load_source(params.ingest)
    report = validate_bars(bars, params.validate_, source=params.ingest.source)
    if not report.success and params.validate_.policy == "quarantine":
        bars, quarantine = quarantine_rows(bars, report, params.validate_.max_quarantine_share)
        if quarantine.over_limit:
            raise SystemExit(f"benchmark: quarantine over validate.max_quarantine_share: {quarantine.over_limit}")
        print(f"benchmark: {quarantine.describe()}", file=sys.stderr, flush=True)
        report = validate_bars(bars, params.validate_, source=f"{params.ingest.source} (after quarantine)")
    if not report.success:
        raise SystemExit(f"benchmark: source {params.ingest.source!r} fails validation: {report.summary()}")
    return bars.assign(segment=assign_segments(bars, params.validate_).to_numpy())


def build_dataset(bars: pd.DataFrame, params: Any, feature_set: str) -> pd.DataFrame:
    """The features stage's dataset for ``feature_set`` (no regime columns), with execution-aligned labels."""
    from alphaforge.features import compute_features, compute_labels
    from alphaforge.validate import as_series

    series = as_series(bars).drop(columns="segment", errors="ignore")
    feature_params = params.features.model_copy(update={"set": feature_set, "regimes": False})
    feats = compute_features(series, feature_params)
    labels = compute_labels(series, params.labels.horizon, params.evaluate.execution)
    dataset = pd.concat([feats, labels[[c for c in labels.columns if c not in ("timestamp", "symbol")]]], axis=1)
    dataset["symbol"] = bars["symbol"].to_numpy()
    dataset.attrs["skipped"] = feats.attrs.get("skipped", [])
    return dataset


def _hyperparameters(params: Any, family: str, seed: int, threads: int | None = None) -> dict[str, Any]:
    """params.yaml's hyperparameters with the benchmark's budget, the seed and (tabular) the thread count."""
    chosen = {**dict(params.train.models.get(family, {})), **BUDGET.get(family, {}), "seed": seed}
    if threads is not None and family == "lightgbm":
        chosen["num_threads"] = threads
    elif threads is not None and family not in SEQUENCE:
        chosen["n_jobs"] = threads
    return chosen


class PointForecast:
    """A sequence forecaster scored on its deterministic forecast (dropout off, as Qlib scores its networks).

    The train stage stores the mean of 30 Monte Carlo dropout passes (with an interval); over a test fold that
    is 30 times the prediction cost, which the benchmark's budget spends on training instead.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.family = model.family
        self.task = model.task

    @property
    def feature_names_(self) -> list[str]:
        return self.model.feature_names_

    def fit(self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None) -> PointForecast:
        self.model.fit(frame, target, fit_mask=fit_mask)
        return self

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        return self.model.predict(frame, predict_mask=predict_mask)


def train_families(dataset: pd.DataFrame, params: Any, families: list[str], seed: int, threads: int | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Walk-forward OOF predictions of every family (``prediction_<family>``) and the train stage's metrics."""
    from alphaforge.splits import WalkForward
    from alphaforge.train import model_factory, task_of, walk_forward_train

    target = params.labels.target
    splitter = WalkForward(params.train.walk_forward, purge=params.labels.horizon)
    oof: pd.DataFrame | None = None
    metrics: dict[str, Any] = {"target": target, "families": {}}
    for family in families:
        started = time.perf_counter()
        hyperparameters = _hyperparameters(params, family, seed, threads)
        make_family = model_factory(family, task=task_of(target), hyperparameters=hyperparameters)
        make = (lambda make_family=make_family: PointForecast(make_family())) if family in SEQUENCE else make_family
        result = walk_forward_train(dataset, splitter, make, target=target, fit_final_model=False, label=family,
                                    label_normalise=params.labels.normalise)
        piece = result.oof.rename(columns={"prediction": f"prediction_{family}"})
        piece = piece.drop(columns=[c for c in ("lower", "upper") if c in piece.columns])
        if oof is None:
            oof = piece
        else:
            oof = oof.merge(piece[["timestamp", "symbol", f"prediction_{family}"]], on=["timestamp", "symbol"],
                            how="outer")
        metrics["families"][family] = {**result.metrics(), "seconds": round(time.perf_counter() - started, 2)}
        print(f"benchmark:   {family}: {metrics['families'][family]['seconds']:.1f}s, mean fold rank IC "
              f"{metrics['families'][family]['mean_fold_rank_ic']}", file=sys.stderr, flush=True)
    assert oof is not None
    return oof.sort_values(["fold", "timestamp", "symbol"], kind="stable").reset_index(drop=True), metrics


def _summed_excess(strategy: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Qlib's ``risk_analysis`` (mode sum) of the excess return: annualised mean, IR, max drawdown of the sum."""
    excess = np.asarray(strategy, dtype=float) - np.asarray(benchmark, dtype=float)
    excess = excess[np.isfinite(excess)]
    if excess.size < 2:
        return {"annualised_return": math.nan, "information_ratio": math.nan, "max_drawdown": math.nan}
    std = float(np.std(excess, ddof=1))
    cumulative = np.cumsum(excess)
    return {
        "annualised_return": float(np.mean(excess) * periods_per_year),
        "information_ratio": float(np.mean(excess) / std * math.sqrt(periods_per_year)) if std > 0 else math.nan,
        "max_drawdown": float(np.min(cumulative - np.maximum.accumulate(cumulative))),
    }


def _ir(series: pd.Series) -> float:
    values = series.dropna().to_numpy(dtype=float)
    if values.size < 2 or np.std(values, ddof=1) == 0:
        return math.nan
    return float(np.mean(values) / np.std(values, ddof=1))


def score(frame: pd.DataFrame, models: dict[str, str], params: Any, market: pd.DataFrame) -> dict[str, Any]:
    """Qlib's figures of every model in ``models`` (name -> prediction column) on ``frame``'s rows."""
    from alphaforge.evaluate import BENCHMARK, evaluate_oof, information_coefficients

    evaluation = evaluate_oof(frame, params.evaluate, models=models, market=market, horizon=params.labels.horizon)
    if evaluation.mode != "cross_sectional":
        raise SystemExit("benchmark: the data have too few symbols per timestamp for a cross-sectional table")
    benchmark = evaluation.returns[(BENCHMARK, "topk")]
    out: dict[str, Any] = {}
    for name, column in models.items():
        ic = information_coefficients(frame, column, "forward_return", method="pearson",
                                      min_cross_section=params.evaluate.min_cross_section)
        rank_ic = information_coefficients(frame, column, "forward_return", method="spearman",
                                           min_cross_section=params.evaluate.min_cross_section)
        returns = evaluation.returns[(name, "topk")]
        gross = _summed_excess(returns["gross_return"].to_numpy(), benchmark["gross_return"].to_numpy(),
                               evaluation.periods_per_year)
        net = _summed_excess(returns["net_return"].to_numpy(), benchmark["net_return"].to_numpy(),
                             evaluation.periods_per_year)
        out[name] = {
            "ic": float(ic.mean()), "icir": _ir(ic), "rank_ic": float(rank_ic.mean()), "rank_icir": _ir(rank_ic),
            "excess_return_without_cost": gross["annualised_return"],
            "information_ratio_without_cost": gross["information_ratio"],
            "max_drawdown_without_cost": gross["max_drawdown"],
            "excess_return_with_cost": net["annualised_return"],
            "information_ratio_with_cost": net["information_ratio"],
            "max_drawdown_with_cost": net["max_drawdown"],
            "topk_turnover": float(evaluation.overall.at[(name, "topk"), "turnover"]),
        }
    return out


def run_once(dataset: pd.DataFrame, params: Any, families: list[str], seed: int, market: pd.DataFrame, stack: bool,
             threads: int | None = None) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train every family with ``seed``, stack them, score everything on the stack's out-of-sample rows."""
    from alphaforge.ensemble import fit_stack

    oof, train_metrics = train_families(dataset, params, families, seed, threads)
    frame = oof
    models = {family: f"prediction_{family}" for family in families}
    info: dict[str, Any] = {"train_seconds": {f: m["seconds"] for f, m in train_metrics["families"].items()}}
    if stack:
        spec = {"families": families, "target": params.labels.target, "horizon": params.labels.horizon,
                "task": "regression"}
        started = time.perf_counter()
        result = fit_stack(oof, train_metrics, calendar=dataset["timestamp"].unique(), spec=spec,
                           params=params.ensemble)
        frame = result.evaluation.oof
        models[STACK] = "prediction_ensemble"
        info["stack_weights"] = {k: float(v) for k, v in result.combiner.weights_.items()}
        info["stack_seconds"] = round(time.perf_counter() - started, 2)
    frame = frame.dropna(subset=list(models.values())).reset_index(drop=True)
    info["rows_scored"] = int(len(frame))
    info["span"] = [str(frame["timestamp"].min()), str(frame["timestamp"].max())]
    return score(frame, models, params, market), frame, info


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """Per feature set, model and metric: mean and std (ddof 1; 0 for one seed) over the seeds."""
    table: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for feature_set in dict.fromkeys(r["feature_set"] for r in runs):
        chosen = [r for r in runs if r["feature_set"] == feature_set]
        table[feature_set] = {}
        for model in chosen[0]["scores"]:
            table[feature_set][model] = {}
            for metric in METRICS:
                values = np.array([r["scores"][model][metric] for r in chosen], dtype=float)
                values = values[np.isfinite(values)]
                table[feature_set][model][metric] = {
                    "mean": float(values.mean()) if values.size else None,
                    "std": float(values.std(ddof=1)) if values.size > 1 else (0.0 if values.size else None),
                }
    return table


def markdown_table(table: dict[str, Any], feature_set: str) -> str:
    """One feature set's table as markdown, mean +- std over seeds."""
    header = ("| model | IC | ICIR | rank IC | rank ICIR | ann. excess (no cost) | IR (no cost) | max DD (no cost) | "
              "ann. excess (cost) | IR (cost) | max DD (cost) |")
    lines = [header, "|" + "---|" * 11]
    shown = ("ic", "icir", "rank_ic", "rank_icir", "excess_return_without_cost", "information_ratio_without_cost",
             "max_drawdown_without_cost", "excess_return_with_cost", "information_ratio_with_cost",
             "max_drawdown_with_cost")
    for model, metrics in table[feature_set].items():
        cells = []
        for metric in shown:
            mean, std = metrics[metric]["mean"], metrics[metric]["std"]
            cells.append("n/a" if mean is None else f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def qlib_table() -> str:
    """Qlib's published CSI300 Alpha158 figures as markdown, in the same columns (theirs are with costs only)."""
    lines = ["| Qlib model (our family) | IC | ICIR | rank IC | rank ICIR | ann. excess (cost) | IR (cost) | "
             "max DD (cost) |", "|" + "---|" * 8]
    for family, row in QLIB_ALPHA158.items():
        cells = " | ".join(f"{row[c]:.4f}" for c in _QLIB_COLUMNS)
        lines.append(f"| {row['model']} ({family}) | {cells} |")
    return "\n".join(lines)


def render(path: Path) -> str:
    """The markdown of a results JSON: one table per feature set, then Qlib's."""
    result = json.loads(path.read_text())
    parts = []
    for feature_set, table in result["table"].items():
        seeds = sorted({r["seed"] for r in result["runs"] if r["feature_set"] == feature_set})
        parts.append(f"**{feature_set}** ({result['feature_sets'][feature_set]['features']} features; "
                     f"seeds {', '.join(map(str, seeds))})\n\n{markdown_table(result['table'], feature_set)}")
    parts.append(f"**Qlib, CSI300, Alpha158** (published; 20 seeds)\n\n{qlib_table()}")
    return "\n\n".join(parts)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.json"), help="JSON to write")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the project's params.yaml")
    parser.add_argument("--source", help="ingest.source (default: params.yaml's)")
    parser.add_argument("--synthetic-symbols", type=int, help="with --source synthetic: symbols")
    parser.add_argument("--synthetic-bars", type=int, help="with --source synthetic: bars per symbol")
    parser.add_argument("--feature-sets", nargs="+", default=["alpha158", "basic"], choices=["alpha158", "basic"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help="model families (registry names)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--no-stack", action="store_true", help="leave out the stack (needs two families or more)")
    parser.add_argument("--n-splits", type=int, help="train.walk_forward.n_splits (default: params.yaml's)")
    parser.add_argument("--min-train-size", type=int, help="train.walk_forward.min_train_size (default: params.yaml's)")
    parser.add_argument("--meta-min-train-size", type=int,
                        help="ensemble.meta_walk_forward.min_train_size (default: params.yaml's)")
    parser.add_argument("--predictions", type=Path, help="folder for the scored rows, one parquet per set and seed")
    parser.add_argument("--threads", type=int, help="threads per model (LightGBM num_threads, n_jobs, torch); default: "
                        "the families' own (2). On a busy machine 1 avoids OpenMP threads spinning against each other")
    parser.add_argument("--render", type=Path, help="print the markdown tables of a results JSON and exit")
    parser.add_argument("--note", default="", help="a line saved in the JSON (e.g. whether the machine was idle)")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alphaforge.train").setLevel(logging.INFO)  # a line per fold

    from alphaforge.config import load_params
    from alphaforge.evaluate import load_market_frame
    from alphaforge.features import feature_columns
    from alphaforge.io import write_text_atomic

    params = load_params(args.params)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ingest = params.ingest.model_copy(update={"source": args.source or params.ingest.source})
    if args.synthetic_symbols or args.synthetic_bars:
        synthetic = ingest.synthetic.model_copy(update={k: v for k, v in (
            ("n_symbols", args.synthetic_symbols), ("n_bars", args.synthetic_bars)) if v})
        ingest = ingest.model_copy(update={"synthetic": synthetic})
    walk_forward = params.train.walk_forward.model_copy(update={k: v for k, v in (
        ("n_splits", args.n_splits), ("min_train_size", args.min_train_size)) if v})
    meta = params.ensemble.meta_walk_forward.model_copy(update={k: v for k, v in (
        ("min_train_size", args.meta_min_train_size),) if v})
    params = params.model_copy(update={
        "ingest": ingest, "train": params.train.model_copy(update={"walk_forward": walk_forward}),
        "ensemble": params.ensemble.model_copy(update={"meta_walk_forward": meta, "families": None}),
    })
    stack = not args.no_stack and len(args.families) > 1
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    bars = _load_bars(params)
    market = load_market_frame(bars, params.evaluate)
    runs: list[dict[str, Any]] = []
    datasets: dict[str, pd.DataFrame] = {}
    for feature_set in args.feature_sets:
        datasets[feature_set] = build_dataset(bars, params, feature_set)
    described = {name: {"features": len(feature_columns(data)), "skipped": data.attrs["skipped"]}
                 for name, data in datasets.items()}
    settings = {
        "families": list(args.families), "stack": stack, "seeds": list(args.seeds), "threads": args.threads,
        "budget": {f: BUDGET.get(f, {}) for f in args.families},
        "labels": params.labels.model_dump(mode="json"),
        "walk_forward": params.train.walk_forward.model_dump(mode="json"),
        "meta_walk_forward": params.ensemble.meta_walk_forward.model_dump(mode="json"),
        "processing": params.features.processing,
        "evaluate": params.evaluate.model_dump(mode="json"),
        "strategy": "topk (TopkDropout) vs the equal-weight universe; excess summed, not compounded",
    }
    result: dict[str, Any] = {}
    # Seeds outside, feature sets inside, the JSON rewritten after every run: a run stopped early still leaves
    # every feature set's figures for the seeds it finished (``complete`` says whether all ran).
    for seed in args.seeds:
        for feature_set, dataset in datasets.items():
            print(f"benchmark: {feature_set} ({described[feature_set]['features']} features), seed {seed}",
                  file=sys.stderr, flush=True)
            scores, frame, info = run_once(dataset, params, list(args.families), seed, market, stack, args.threads)
            runs.append({"feature_set": feature_set, "seed": seed, "scores": scores, **info})
            if args.predictions is not None:
                args.predictions.mkdir(parents=True, exist_ok=True)
                frame.to_parquet(args.predictions / f"{feature_set}_seed{seed}.parquet", index=False)
            table = aggregate(runs)
            result = {
                "what": "out-of-sample figures in Qlib's benchmark form (benchmarks/models.py; docs/benchmarks.md)",
                "note": args.note,
                "complete": len(runs) == len(args.seeds) * len(datasets),
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version()},
                "started": started_at,
                "seconds": round(time.perf_counter() - started, 1),
                "data": {"source": params.ingest.source, "symbols": int(bars["symbol"].nunique()),
                         "rows": int(len(bars)),
                         "columns": [c for c in bars.columns if c not in ("timestamp", "symbol", "segment")],
                         "start": str(bars["timestamp"].min()), "end": str(bars["timestamp"].max())},
                "feature_sets": described,
                "settings": settings,
                "metrics": list(METRICS),
                "table": table,
                "qlib_csi300_alpha158": QLIB_ALPHA158,
                "runs": runs,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json.dumps(_json_safe(result), indent=2) + "\n", args.out)
    table = result["table"]
    for feature_set in table:
        print(f"\n{feature_set}\n{markdown_table(table, feature_set)}")
    print(f"\nbenchmark: {result['seconds']:.0f}s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
