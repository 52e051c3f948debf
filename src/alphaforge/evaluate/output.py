"""The evaluation's outputs: the leaderboard text, the metrics JSON and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.evaluate.params import BENCHMARKED, Evaluation
from alphaforge.io import atomic_write as _atomic_write


def _format(value: Any, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value)}"
    return f"{value:.3f}"


LEADERBOARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sharpe", "sharpe", "num"), ("annual_return", "net_ret", "pct"), ("gross_annual_return", "gross_ret", "pct"),
    ("information_ratio", "IR", "num"), ("max_drawdown", "max_dd", "pct"), ("turnover", "turnover", "num"),
    ("commission", "comm", "pct"), ("spread_cost", "spread", "pct"), ("impact_cost", "impact", "pct"),
    ("ic_mean", "ic", "num"), ("ic_tstat", "ic_t", "num"), ("rank_ic_mean", "rank_ic", "num"),
    ("rank_ic_tstat", "rank_ic_t", "num"), ("dsr", "dsr", "num"), ("pbo", "pbo", "num"),
)


def _render(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    rule = "-" * len(render(header))
    return [rule, render(header), rule, *[render(r) for r in rows], rule]


def leaderboard(evaluation: Evaluation, overfitting: dict[str, dict[str, Any]] | None = None) -> str:
    """Plain-text tables, one per strategy: every model and baseline, best net Sharpe first (NaN last).

    Returns and costs are annualised; IR is against the equal-weight universe for ``topk``/``long_flat`` and
    against cash otherwise; IC t-stats are Newey-West. ``overfitting`` adds each model's deflated Sharpe and PBO.
    """
    overfitting = overfitting or {}
    blocks = [f"Out-of-sample leaderboard ({evaluation.mode}; {evaluation.execution} execution; "
              f"{evaluation.periods_per_year:g} periods/year; commission {evaluation.params.cost_bps:g} bps/side "
              f"+ half spread + impact; * = trained model)"]
    tradability = evaluation.tradability
    blocks.append(f"tradable symbol-bars {100 * (tradability.get('tradable_share') or 0):.1f}%; spread from "
                  f"{tradability.get('spread_source')} (median half spread "
                  f"{tradability.get('median_half_spread_bps') or 0:.1f} bps)"
                  + (f"; not applied: {', '.join(tradability['rules_not_applied'])}"
                     if tradability.get("rules_not_applied") else ""))
    for strategy in evaluation.strategies:
        table = evaluation.overall.xs(strategy, level="strategy").join(evaluation.signals)
        table["dsr"] = [((overfitting.get(n) or {}).get("dsr") or {}).get("dsr") for n in table.index]
        table["pbo"] = [((overfitting.get(n) or {}).get("pbo") or {}).get("pbo") for n in table.index]
        table = table.astype({"dsr": float, "pbo": float})
        ordered = table.sort_values("sharpe", ascending=False, na_position="last", kind="mergesort")
        header = ["rank", "signal", *[label for _, label, _ in LEADERBOARD_COLUMNS]]
        rows = [[str(position), f"{name}{' *' if name in evaluation.models else ''}",
                 *[_format(ordered.at[name, metric], kind) for metric, _, kind in LEADERBOARD_COLUMNS]]
                for position, name in enumerate(ordered.index, start=1)]
        against = "equal-weight universe" if strategy in BENCHMARKED else "cash"
        blocks += ["", f"strategy {strategy} (IR against the {against})", *_render(header, rows)]
    return "\n".join(blocks)


def write_plots(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Write DVC-plot CSVs and PNGs into ``out_dir``; returns {file name: path}.

    ``equity.csv``: timestamp plus one net-equity column per signal (primary strategy). ``ic_by_fold.csv``:
    fold, signal, ic, rank_ic. ``equity.png``: net equity per strategy, models vs baselines, dotted lines at fold
    starts. ``ic_by_fold.png``: IC and rank IC per fold. Drawn on an Agg canvas (no display, pyplot untouched);
    each file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("equity.csv", "ic_by_fold.csv", "equity.png", "ic_by_fold.png")}

    equity = evaluation.equity(evaluation.primary_strategy).reset_index()
    equity["timestamp"] = pd.to_datetime(equity["timestamp"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    _atomic_write(paths["equity.csv"], lambda p: equity.to_csv(p, index=False))
    _atomic_write(paths["ic_by_fold.csv"], lambda p: evaluation.ic_by_fold.to_csv(p, index=False))

    figure = Figure(figsize=(10, 4.5 * len(evaluation.strategies)), dpi=100)
    FigureCanvasAgg(figure)
    for panel, strategy in enumerate(evaluation.strategies, start=1):
        axes = figure.add_subplot(len(evaluation.strategies), 1, panel)
        curves = evaluation.equity(strategy)
        for name in evaluation.names:
            axes.plot(curves.index, curves[name].to_numpy(), label=name,
                      linewidth=2.0 if name in evaluation.models else 1.0,
                      linestyle="-" if name in evaluation.models else "--")
        axes.axhline(1.0, color="grey", linewidth=0.5)
        fold_starts = evaluation.returns[(evaluation.models[0], strategy)].groupby("fold")["timestamp"].min()
        for fold_start in fold_starts.iloc[1:]:
            axes.axvline(fold_start, color="grey", linewidth=0.5, linestyle=":")
        axes.set_title(f"{strategy}: out-of-sample equity, net of costs ({evaluation.execution} execution)")
        axes.set_ylabel("growth of 1")
        axes.legend(fontsize="small", ncol=2)
    figure.autofmt_xdate()
    figure.tight_layout()
    _atomic_write(paths["equity.png"], lambda p: figure.savefig(p, format="png"))

    folds = sorted(evaluation.ic_by_fold["fold"].unique())
    positions = np.arange(len(folds))
    width = 0.8 / len(evaluation.names)
    figure = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(figure)
    for panel, (column, label) in enumerate([("ic", "IC"), ("rank_ic", "rank IC")], start=1):
        axes = figure.add_subplot(2, 1, panel)
        for offset, name in enumerate(evaluation.names):
            values = (evaluation.ic_by_fold[evaluation.ic_by_fold["signal"] == name]
                      .set_index("fold")[column].reindex(folds).to_numpy(dtype=float))
            axes.bar(positions + (offset - (len(evaluation.names) - 1) / 2) * width, np.nan_to_num(values), width,
                     label=name)
        axes.axhline(0.0, color="grey", linewidth=0.5)
        axes.set_xticks(positions, [str(f) for f in folds])
        axes.set_ylabel(label)
    axes.set_xlabel("fold")
    figure.axes[0].set_title("IC by fold (NaN shown as 0)")
    figure.axes[0].legend(fontsize="small", ncol=2)
    figure.tight_layout()
    _atomic_write(paths["ic_by_fold.png"], lambda p: figure.savefig(p, format="png"))
    return paths


def metrics_json_text(evaluation: Evaluation) -> str:
    """The metrics JSON as text, strict (no NaN tokens), for the evaluate stage to write."""
    return json.dumps(evaluation.to_metrics_json(), indent=2, allow_nan=False)
