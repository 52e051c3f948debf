"""A/B verdicts on served traffic: champion against challenger on the same bars, with an always-valid test.

The service answers ``serving.challenger_share`` of requests with the ``challenger`` alias, or with
``serving.shadow`` runs the challenger beside the champion on every request; both land in the request log
(:class:`alphaforge.monitor.RequestLog`) with their variant. :func:`ab_report` joins those predictions with
realised returns and compares the two variants bar by bar:

* **Realised returns** follow the backtest's execution convention (:func:`alphaforge.features.compute_labels`):
  a prediction for bar t trades at bar t+1's execution price and earns that price's return to the next bar,
  ``forward_return_1`` (a log return; P&L uses ``expm1`` of it, as :mod:`alphaforge.evaluate` does).
* **Same requests.** Where both variants predicted the same (symbol, bar) (shadow mode, or a split whose two
  sides served the same bars) only those pairs are compared; otherwise (a split over different symbols) each
  variant's own rows of each bar, on the bars both served.
* **Per bar, per variant**: a portfolio long the rows predicted above ``prediction_centre`` and short the rest,
  equal weights of gross 1; net P&L = its return minus ``cost_bps`` per side on the change of weights since
  the variant's previous bar (turnover); the bar's IC and rank IC (``min_cross_section`` rows or more) and hit
  rate (sign of prediction against sign of return). Latency per variant from the log.
* **The test** is on the per-bar difference challenger - champion of ``metric`` (net P&L by default): an
  asymptotic confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2021, "Time-uniform central
  limit theory and asymptotic confidence sequences", Thm 2.2), a normal-mixture boundary with the sample
  variance, tuned to be tightest at ``planned_bars``. It is valid at every bar at once, so the report can be
  read after each bar (no peeking penalty); the running intersection of the intervals is reported. The
  mixture SPRT's always-valid p-value (same mixture) comes with it.
* **Verdict**: fewer than ``min_bars`` compared bars, or an interval that still holds values on both sides of
  the margin: ``not enough evidence yet``; the interval above ``min_effect`` (per bar): ``promote challenger``;
  below it: ``keep``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from alphaforge.schema import DataError

CHAMPION, CHALLENGER = "champion", "challenger"
KEEP, PROMOTE, UNDECIDED = "keep", "promote challenger", "not enough evidence yet"
Metric = Literal["net_pnl", "ic", "rank_ic", "hit_rate"]


class ABParams(BaseModel):
    """``ab:`` in params.yaml: how `alphaforge ab report` compares champion and challenger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_dir: str = Field("logs/requests", min_length=1, description="the service's request log")
    out_dir: str = Field("reports/ab", min_length=1)
    lookback_hours: float = Field(24.0 * 92, gt=0, description="requests received this long before the run")
    metric: Metric = Field("net_pnl", description="the per-bar difference the sequential test decides on")
    alpha: float = Field(0.05, gt=0, lt=1, description="error level of the confidence sequence (all bars at once)")
    min_bars: int = Field(20, ge=2, description="compared bars needed before any verdict")
    planned_bars: int = Field(250, ge=1, description="bars at which the confidence sequence is tightest")
    min_effect: float = Field(0.0, ge=0, description="per-bar difference (metric's unit) that warrants a switch")
    prediction_centre: float = Field(0.0, description="long above it, short below (0.5 for a classifier's P(up))")
    min_cross_section: int = Field(3, ge=2, description="rows a bar needs for its IC")


# ----------------------------------------------------------------------------------------- the test


def confidence_sequence(values: Sequence[float] | np.ndarray, *, alpha: float, planned: int
                        ) -> dict[str, Any]:
    """The asymptotic confidence sequence for the mean of ``values`` (in time order), and the mSPRT p-value.

    At each t: mean_t +/- sd_t * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)), with
    rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / planned (tightest at t = planned). The reported interval
    is the running intersection from t = 2 on. The always-valid p-value is 1 / max_t of the normal-mixture
    likelihood ratio sqrt(1 / (t rho^2 + 1)) exp(t^2 rho^2 mean_t^2 / (2 sd_t^2 (t rho^2 + 1))).
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return {"n": n, "estimate": float(x.mean()) if n else None, "lower": None, "upper": None,
                "always_valid_p": 1.0, "alpha": alpha}
    t = np.arange(1, n + 1, dtype=np.float64)
    mean = np.cumsum(x) / t
    variance = np.maximum(np.cumsum(x * x) / t - mean ** 2, 0.0) * t / np.maximum(t - 1, 1)
    sd = np.sqrt(variance)
    log_alpha = math.log(alpha)
    rho2 = (-2 * log_alpha + math.log(-2 * log_alpha + 1)) / planned
    half = sd * np.sqrt(2 * (t * rho2 + 1) / (t * t * rho2) * np.log(np.sqrt(t * rho2 + 1) / alpha))
    lower, upper = (mean - half)[1:].max(), (mean + half)[1:].min()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (-0.5 * np.log(t * rho2 + 1)
                     + np.where(variance > 0, (t * t * rho2 * mean ** 2) / (2 * variance * (t * rho2 + 1)),
                                np.where(mean == 0, 0.0, np.inf)))
    p = float(min(1.0, math.exp(-float(np.max(log_ratio[1:])))))
    return {"n": n, "estimate": float(mean[-1]), "lower": float(lower), "upper": float(upper),
            "always_valid_p": p, "alpha": alpha}


def verdict(interval: dict[str, Any], *, min_bars: int, min_effect: float) -> str:
    """``promote challenger`` when the whole interval is above ``min_effect``, ``keep`` when it is below,
    else (or with fewer than ``min_bars`` bars) ``not enough evidence yet``."""
    if interval["n"] < min_bars or interval["lower"] is None:
        return UNDECIDED
    if interval["lower"] > min_effect:
        return PROMOTE
    if interval["upper"] < min_effect:
        return KEEP
    return UNDECIDED


# ----------------------------------------------------------------------------------------- per bar


def _bar_table(rows: pd.DataFrame, *, cost_bps: float, centre: float, min_cross_section: int) -> pd.DataFrame:
    """One variant's rows (timestamp, symbol, prediction, realised) -> per bar: net P&L, IC, rank IC, hit rate."""
    rows = rows.sort_values(["timestamp", "symbol"], kind="stable")
    side = np.sign(rows["prediction"].to_numpy(dtype=np.float64) - centre)
    count = rows.groupby("timestamp", sort=True)["symbol"].transform("size").to_numpy()
    weights = pd.Series(side / count, index=pd.MultiIndex.from_arrays([rows["timestamp"], rows["symbol"]]))
    wide = weights.unstack("symbol", fill_value=0.0).sort_index()
    turnover = wide.diff().abs().sum(axis=1)
    turnover.iloc[0] = wide.iloc[0].abs().sum()
    gross = (weights * np.expm1(rows["realised"].to_numpy(dtype=np.float64))).groupby(level=0).sum()
    realised = rows["realised"].to_numpy(dtype=np.float64)
    hit = (np.sign(rows["prediction"].to_numpy(dtype=np.float64) - centre) == np.sign(realised)).astype(float)
    frame = rows.assign(hit=hit)
    grouped = frame.groupby("timestamp", sort=True)

    def correlations(group: pd.DataFrame) -> pd.Series:
        if len(group) < min_cross_section or group["prediction"].nunique() < 2 or group["realised"].nunique() < 2:
            return pd.Series({"ic": np.nan, "rank_ic": np.nan})
        return pd.Series({"ic": group["prediction"].corr(group["realised"]),
                          "rank_ic": group["prediction"].corr(group["realised"], method="spearman")})

    table = grouped[["prediction", "realised"]].apply(correlations)
    table["hit_rate"] = grouped["hit"].mean()
    table["gross_pnl"] = gross
    table["turnover"] = turnover
    table["net_pnl"] = gross - turnover * cost_bps / 1e4
    table["rows"] = grouped.size()
    return table


def _summary(table: pd.DataFrame, rows: pd.DataFrame, requests: pd.DataFrame) -> dict[str, Any]:
    latency = requests.drop_duplicates("request_id")["latency_ms"].astype(float)
    pnl = table["net_pnl"]
    return {
        "bars": len(table), "rows": int(table["rows"].sum()), "requests": int(requests["request_id"].nunique()),
        "ic": _mean(table["ic"]), "rank_ic": _mean(table["rank_ic"]),
        "hit_rate": float(rows.pipe(lambda r: (np.sign(r["prediction"]) == np.sign(r["realised"])).mean())),
        "net_pnl_total": float(pnl.sum()), "net_pnl_mean_per_bar": float(pnl.mean()),
        "sharpe_per_bar": float(pnl.mean() / pnl.std(ddof=1)) if len(pnl) > 1 and pnl.std(ddof=1) > 0 else None,
        "turnover_mean": float(table["turnover"].mean()),
        "latency_ms": {"mean": _mean(latency), "p50": _quantile(latency, 0.5), "p95": _quantile(latency, 0.95),
                       "p99": _quantile(latency, 0.99)},
        "model_versions": sorted(requests["model_version"].astype(str).unique().tolist()),
    }


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def _quantile(values: pd.Series, q: float) -> float | None:
    return float(values.quantile(q)) if len(values) else None


# ----------------------------------------------------------------------------------------- the report


def ab_report(requests: pd.DataFrame, realised: pd.DataFrame, params: ABParams, *, cost_bps: float) -> dict[str, Any]:
    """Champion against challenger on the request log's rows (:meth:`RequestLog.read`) joined with ``realised``
    (timestamp, symbol, ``forward_return_1``): per-variant figures, per-bar differences, the confidence
    sequence of ``params.metric``'s difference and the verdict (see the module docstring)."""
    missing = [c for c in ("timestamp", "symbol", "forward_return_1") if c not in realised.columns]
    if missing:
        raise DataError(f"ab report: realised returns lack {missing}; rule: timestamp, symbol, forward_return_1 "
                        "(the next-bar execution return of alphaforge.features.compute_labels)")
    served = requests[requests["variant"].isin([CHAMPION, CHALLENGER])]
    counts = served["variant"].value_counts().to_dict()
    absent = [v for v in (CHAMPION, CHALLENGER) if not counts.get(v)]
    if absent:
        raise DataError(f"ab report: no {' or '.join(absent)} rows in the request log ({counts or 'no rows'}); "
                        "rule: serve with serving.challenger_share > 0 or serving.shadow: true and a challenger "
                        "alias")
    # one prediction per (variant, symbol, bar): the latest, so a retried request counts once
    latest = (served.sort_values("received_at", kind="stable")
              .drop_duplicates(["variant", "symbol", "timestamp"], keep="last"))
    returns = realised[["timestamp", "symbol", "forward_return_1"]].rename(columns={"forward_return_1": "realised"})
    returns = returns[np.isfinite(returns["realised"].astype(float))]
    matured = latest.merge(returns, on=["symbol", "timestamp"], how="inner", validate="many_to_one")
    matured = matured[np.isfinite(matured["prediction"].astype(float))]
    by_variant = {v: matured[matured["variant"] == v] for v in (CHAMPION, CHALLENGER)}
    keys = [set(zip(f["symbol"], f["timestamp"], strict=True)) for f in by_variant.values()]
    common = keys[0] & keys[1]
    paired_bars = len({stamp for _, stamp in common})
    pairing = "same requests" if paired_bars >= params.min_bars or (common and common == keys[0] | keys[1]) \
        else "same bars"
    if pairing == "same requests":
        index = pd.MultiIndex.from_tuples(sorted(common), names=["symbol", "timestamp"])
        by_variant = {v: f.set_index(["symbol", "timestamp"]).loc[index].reset_index() for v, f in by_variant.items()}
    tables = {v: _bar_table(f, cost_bps=cost_bps, centre=params.prediction_centre,
                            min_cross_section=params.min_cross_section) for v, f in by_variant.items()}
    bars = tables[CHAMPION].index.intersection(tables[CHALLENGER].index).sort_values()
    difference = (tables[CHALLENGER].loc[bars, ["net_pnl", "ic", "rank_ic", "hit_rate"]]
                  - tables[CHAMPION].loc[bars, ["net_pnl", "ic", "rank_ic", "hit_rate"]])
    tests = {metric: confidence_sequence(difference[metric].dropna().to_numpy(), alpha=params.alpha,
                                         planned=params.planned_bars)
             for metric in ("net_pnl", "ic", "rank_ic", "hit_rate")}
    decision = verdict(tests[params.metric], min_bars=params.min_bars, min_effect=params.min_effect)
    return {
        "verdict": decision,
        "metric": params.metric,
        "pairing": pairing,
        "compared_bars": len(bars),
        "pending_rows": int(len(latest) - len(matured)),
        "first_bar": str(bars[0]) if len(bars) else None, "last_bar": str(bars[-1]) if len(bars) else None,
        "cost_bps": cost_bps,
        "execution": "next bar: a prediction for bar t trades at bar t+1's execution price, held one bar "
                     "(forward_return_1)",
        "variants": {v: _summary(tables[v].loc[bars], by_variant[v][by_variant[v]["timestamp"].isin(bars)],
                                 served[served["variant"] == v]) for v in (CHAMPION, CHALLENGER)},
        "difference": {metric: {**test, "metric": metric} for metric, test in tests.items()},
        "settings": params.model_dump(mode="json"),
    }


def report_text(report: dict[str, Any]) -> str:
    """The report as a few lines for a terminal."""
    test = report["difference"][report["metric"]]
    champion, challenger = report["variants"][CHAMPION], report["variants"][CHALLENGER]

    def number(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"A/B verdict: {report['verdict']}",
             f"  {report['compared_bars']} bars compared ({report['pairing']}), {report['pending_rows']} rows "
             f"waiting for their return; cost {report['cost_bps']:g} bps per side, {report['execution']}",
             f"  {'':22s}{'champion':>14s}{'challenger':>14s}"]
    for label, key, spec in (("net P&L (sum)", "net_pnl_total", ".5f"), ("net P&L per bar", "net_pnl_mean_per_bar",
                             ".6f"), ("IC", "ic", ".4f"), ("rank IC", "rank_ic", ".4f"),
                             ("hit rate", "hit_rate", ".4f"), ("turnover per bar", "turnover_mean", ".3f")):
        lines.append(f"  {label:22s}{number(champion[key], spec):>14s}{number(challenger[key], spec):>14s}")
    lines.append(f"  {'latency p50/p99 ms':22s}"
                 f"{number(champion['latency_ms']['p50'], '.2f') + '/' + number(champion['latency_ms']['p99'], '.2f'):>14s}"
                 f"{number(challenger['latency_ms']['p50'], '.2f') + '/' + number(challenger['latency_ms']['p99'], '.2f'):>14s}")
    lines.append(f"  challenger - champion, {report['metric']} per bar: {number(test['estimate'], '.6f')}, "
                 f"{100 * (1 - test['alpha']):g}% confidence sequence [{number(test['lower'], '.6f')}, "
                 f"{number(test['upper'], '.6f')}], always-valid p {number(test['always_valid_p'], '.4f')}")
    return "\n".join(lines) + "\n"


def run_ab_report(log_dir: str, realised: pd.DataFrame, params: ABParams, *, cost_bps: float,
                  window_end: Any = None, out_dir: str | None = None) -> dict[str, Any]:
    """Read the last ``params.lookback_hours`` of the request log, report, write ``report.json`` and
    ``report.txt`` under ``out_dir`` (default ``params.out_dir``); the report."""
    from pathlib import Path

    from alphaforge.io import write_json_atomic
    from alphaforge.monitor import RequestLog

    end = pd.Timestamp.now(tz="UTC") if window_end is None else pd.Timestamp(window_end)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    start = end - pd.Timedelta(hours=params.lookback_hours)
    requests = RequestLog(log_dir).read(start, end)
    if requests.empty:
        raise DataError(f"ab report: no requests received in [{start}, {end}) under {log_dir}")
    report = ab_report(requests, realised, params, cost_bps=cost_bps)
    report["window"] = {"start": str(start), "end": str(end), "log_dir": str(log_dir)}
    out = Path(out_dir or params.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, out / "report.json")
    (out / "report.txt").write_text(report_text(report))
    return report
