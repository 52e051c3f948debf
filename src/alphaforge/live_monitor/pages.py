"""The monitors' HTML pages: ``live.html`` beside the follower's ``live.json``, and ``index.html`` of the daily
monitor (served traffic, live performance by period, the A/B verdict, a link to the Evidently drift report).

Both are standalone pages (:func:`alphaforge.report.html_report`) built from the figures the JSON files hold, so
what a person reads is what the service's ``/model_info``, Prometheus and Airflow read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from alphaforge.report import html_report


def _number(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _when(epoch: float | None) -> str:
    return "never" if epoch is None else pd.Timestamp(epoch, unit="s", tz="UTC").isoformat(timespec="seconds")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def live_page(document: Mapping[str, Any]) -> str:
    """``live.html``: the follower's figures per variant, the alert, the retrain trigger, the weights, the lag."""
    rows = []
    for variant, f in document["variants"].items():
        degradation = f.get("degradation") or {}
        rows.append([variant, str(f["requests"]), str(f["matured_rows"]), str(f["pending"]), str(f["window_bars"]),
                     _number(f["ic"]), _number(f["rank_ic"]), _number(f["hit_rate"]),
                     _number(f["net_pnl_per_bar"], ".6f"), _number(f["net_pnl_sum"], ".5f"),
                     "FIRING" if degradation.get("fired") else "ok"])
    variants = _table(["variant", "requests", "matured rows", "pending", "window bars", "IC", "rank IC", "hit rate",
                       "net P&L / bar", "net P&L sum", "degradation"], rows) if rows else "No served request yet."
    alert, retrain = document["alert"], document["retrain"]
    alert_text = (f"**Blocking alert**: {alert['detail']}" if alert["blocking"] else "No blocking alert.") + (
        f"\n\nRetrain trigger of `{retrain['dag_id']}`: {'on' if retrain['enabled'] else 'off'} "
        f"(cooldown {retrain['cooldown_seconds']:g} s), {retrain.get('triggers', 0)} trigger(s), "
        f"last: {_when(retrain.get('last_trigger_at'))}.")
    weights = document.get("online_weights") or {}
    weight_rows = [[str(k), _number(v, ".4f") if isinstance(v, float) else str(v)] for k, v in weights.items()
                   if not isinstance(v, (dict, list))]
    lag = document.get("lag_seconds") or {}
    lag_text = (f"From a request (or a matured return) to this page: p50 {_number(lag.get('p50'), '.3f')} s, "
                f"p95 {_number(lag.get('p95'), '.3f')} s, max {_number(lag.get('max'), '.3f')} s over "
                f"{lag.get('rows', 0)} events.")
    sections = [
        ("Live figures per variant",
         f"Updated {document['updated_at']}; label horizon {document['horizon']} bar(s), executed at the next bar's "
         f"{document['execution_price']}, cost {10_000 * document['cost_rate_per_side']:g} bps per side.\n\n"
         + variants),
        ("Alert and retraining", alert_text),
        ("Online weights", _table(["field", "value"], weight_rows) if weight_rows else "Not in use."),
        ("Monitoring lag", lag_text),
    ]
    return html_report("alphaforge live monitor", sections)


def ab_section(report: Mapping[str, Any] | None, reason: str | None) -> str:
    """The A/B section: the verdict, the figures of both variants and the sequential test (or why there is none)."""
    if report is None:
        return f"No A/B verdict: {reason}"
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    rows = [[label, _number(champion[key], spec), _number(challenger[key], spec)]
            for label, key, spec in (("net P&L (sum)", "net_pnl_total", ".5f"),
                                     ("net P&L per bar", "net_pnl_mean_per_bar", ".6f"), ("IC", "ic", ".4f"),
                                     ("rank IC", "rank_ic", ".4f"), ("hit rate", "hit_rate", ".4f"),
                                     ("turnover per bar", "turnover_mean", ".3f"))]
    rows.append(["latency p50 / p99 ms",
                 f"{_number(champion['latency_ms']['p50'], '.2f')} / {_number(champion['latency_ms']['p99'], '.2f')}",
                 f"{_number(challenger['latency_ms']['p50'], '.2f')} / "
                 f"{_number(challenger['latency_ms']['p99'], '.2f')}"])
    test = report["difference"][report["metric"]]
    return (f"**Verdict: {report['verdict']}** ({report['compared_bars']} bars compared on the {report['pairing']}, "
            f"{report['pending_rows']} rows waiting for their return; cost {report['cost_bps']:g} bps per side).\n\n"
            + _table(["", "champion", "challenger"], rows)
            + f"\n\nChallenger - champion, {report['metric']} per bar: {_number(test['estimate'], '.6f')}; "
              f"{100 * (1 - test['alpha']):g}% always-valid confidence sequence [{_number(test['lower'], '.6f')}, "
              f"{_number(test['upper'], '.6f')}], mSPRT p {_number(test['always_valid_p'], '.4f')}.")


def monitor_page(summary: Mapping[str, Any], live: pd.DataFrame, ab: Mapping[str, Any] | None,
                 ab_reason: str | None, *, drift_report: str | None) -> str:
    """``index.html`` of ``alphaforge monitor``: served traffic, drift, live performance by period, the A/B verdict."""
    requests, drift, degradation = summary["requests"], summary["drift"], summary["degradation"]
    lag = summary["lag_seconds"]
    traffic = (f"Window {summary['window']['start']} to {summary['window']['end']} ({summary['window']['variant']}):"
               f" {requests['requests']} requests, {requests['unique_rows']} rows over {requests['symbols']} symbols "
               f"and {requests['bars']} bars; {summary['matured_rows']} matured, {summary['pending_rows']} waiting. "
               f"Latency p50 {_number(requests['latency_ms_p50'], '.2f')} ms, p95 "
               f"{_number(requests['latency_ms_p95'], '.2f')} ms. Monitoring lag p50 {_number(lag['p50'], '.1f')} s."
               f"\n\nAlerts: {', '.join(summary['alerts']) or 'none'}.")
    drift_text = (f"{len(drift['drifted_features'])} of {drift['n_features']} features drifted (share "
                  f"{drift['share']:.2f}): {', '.join(drift['drifted_features']) or 'none'}. "
                  + (f"The per-feature detail is in the Evidently report beside this page, `{drift_report}`."
                     if drift_report else "No Evidently report was written."))
    period_rows = [[str(r["period"]), str(r["rows"]), str(r["bars"]), _number(r["ic"]), _number(r["rank_ic"]),
                    _number(r["hit_rate"])] for r in live.to_dict("records")]
    performance = (_table(["period", "rows", "bars", "IC", "rank IC", "hit rate"], period_rows) if period_rows
                   else "No served prediction has matured yet.") + f"\n\nDegradation: {degradation['detail']}"
    sections = [("Served traffic", traffic), ("Drift", drift_text), ("Live performance", performance),
                ("A/B: champion against challenger", ab_section(ab, ab_reason))]
    return html_report("alphaforge monitor", sections)
