"""`alphaforge ab report`: champion against challenger on logged traffic joined with next-bar returns, decided
by an always-valid confidence sequence. Seeded synthetic traffic with a planted difference (or none)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphaforge.ab import KEEP, PROMOTE, UNDECIDED, ABParams, ab_report, confidence_sequence, report_text, run_ab_report
from alphaforge.monitor import RequestLog
from alphaforge.schema import DataError

N_SYMBOLS, N_BARS = 20, 150


def _market(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-01-01", periods=N_BARS, freq="D", tz="UTC")
    frame = pd.DataFrame([(t, f"S{i:02d}") for t in stamps for i in range(N_SYMBOLS)], columns=["timestamp", "symbol"])
    frame["forward_return_1"] = rng.normal(0.0, 0.01, len(frame))
    return frame


def _traffic(market: pd.DataFrame, skill: dict[str, float], *, seed: int, shadow: bool = True) -> pd.DataFrame:
    """Request-log rows: each variant predicts skill * return + noise; shadow: both variants on every row
    (same request ids), else a split by symbol (even symbols champion, odd challenger)."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, weight in skill.items():
        part = market if shadow else market[(market["symbol"].str[-1].astype(int) % 2 == 0) == (variant == "champion")]
        prediction = weight * part["forward_return_1"].to_numpy() + rng.normal(0.0, 0.01, len(part))
        rows.append(pd.DataFrame({
            "request_id": [f"r{t.value}" for t in part["timestamp"]], "variant": variant,
            "received_at": part["timestamp"] + pd.Timedelta("1min"), "model_name": "signal",
            "model_version": "1" if variant == "champion" else "2", "symbol": part["symbol"].to_numpy(),
            "timestamp": part["timestamp"].to_numpy(), "prediction": prediction,
            "latency_ms": 1.0 if variant == "champion" else 2.0}))
    return pd.concat(rows, ignore_index=True)


PARAMS = ABParams(min_bars=20, planned_bars=150)


def test_a_planted_better_challenger_is_promoted_with_its_figures() -> None:
    market = _market(1)
    report = ab_report(_traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=2), market, PARAMS, cost_bps=5.0)
    assert report["verdict"] == PROMOTE
    assert report["pairing"] == "same requests" and report["compared_bars"] == N_BARS
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    assert challenger["ic"] > 0.5 and abs(champion["ic"]) < 0.05
    assert challenger["hit_rate"] > 0.7 and 0.45 < champion["hit_rate"] < 0.55
    assert challenger["net_pnl_total"] > champion["net_pnl_total"]
    assert challenger["latency_ms"]["p50"] == 2.0 and champion["latency_ms"]["p50"] == 1.0
    assert report["difference"]["net_pnl"]["lower"] > 0
    assert "promote challenger" in report_text(report)


def test_two_equal_models_are_not_enough_evidence() -> None:
    market = _market(3)
    report = ab_report(_traffic(market, {"champion": 0.3, "challenger": 0.3}, seed=4), market, PARAMS, cost_bps=5.0)
    assert report["verdict"] == UNDECIDED
    test = report["difference"]["net_pnl"]
    assert test["lower"] < 0 < test["upper"] and test["always_valid_p"] > PARAMS.alpha


def test_a_worse_challenger_is_kept_out_and_a_split_compares_the_same_bars() -> None:
    market = _market(5)
    traffic = _traffic(market, {"champion": 1.0, "challenger": -0.5}, seed=6, shadow=False)
    report = ab_report(traffic, market, PARAMS, cost_bps=5.0)
    assert report["verdict"] == KEEP and report["pairing"] == "same bars"
    assert report["variants"]["champion"]["rows"] == report["variants"]["challenger"]["rows"] == N_BARS * 10


def test_too_few_bars_is_not_enough_evidence_and_costs_are_charged() -> None:
    market = _market(7)
    short = market[market["timestamp"] < market["timestamp"].unique()[10]]
    report = ab_report(_traffic(short, {"champion": 0.0, "challenger": 1.0}, seed=8), short, PARAMS, cost_bps=5.0)
    assert report["verdict"] == UNDECIDED and report["compared_bars"] == 10
    free = ab_report(_traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=8), market, PARAMS, cost_bps=0.0)
    costly = ab_report(_traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=8), market, PARAMS, cost_bps=50.0)
    for variant in ("champion", "challenger"):
        paid = free["variants"][variant]["net_pnl_total"] - costly["variants"][variant]["net_pnl_total"]
        assert paid == pytest.approx(50e-4 * free["variants"][variant]["turnover_mean"] * N_BARS, rel=1e-9)


def test_only_returns_that_arrived_count_and_a_missing_variant_is_named() -> None:
    market = _market(9)
    traffic = _traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=10)
    arrived = market[market["timestamp"] < market["timestamp"].unique()[100]]
    report = ab_report(traffic, arrived, PARAMS, cost_bps=5.0)
    assert report["compared_bars"] == 100 and report["pending_rows"] == 2 * 50 * N_SYMBOLS
    with pytest.raises(DataError, match="no challenger rows"):
        ab_report(traffic[traffic["variant"] == "champion"], market, PARAMS, cost_bps=5.0)


def test_the_confidence_sequence_covers_the_mean_at_all_times_at_about_its_level() -> None:
    rng = np.random.default_rng(11)
    misses = sum(not (cs["lower"] <= 0.3 <= cs["upper"]) for cs in
                 (confidence_sequence(rng.normal(0.3, 2.0, 400), alpha=0.1, planned=200) for _ in range(200)))
    assert misses <= 0.1 * 200 + 5


def test_the_report_reads_the_service_request_log_and_writes_json_and_text(tmp_path) -> None:
    market = _market(12)
    traffic = _traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=13)
    log = RequestLog(tmp_path / "requests")
    log.append(traffic.assign(features=[{"f": 1.0}] * len(traffic)))
    report = run_ab_report(str(tmp_path / "requests"), market, PARAMS, cost_bps=5.0,
                           window_end=traffic["received_at"].max() + pd.Timedelta("1h"), out_dir=str(tmp_path / "ab"))
    assert report["verdict"] == PROMOTE
    assert json.loads((tmp_path / "ab" / "report.json").read_text())["verdict"] == PROMOTE
    assert (tmp_path / "ab" / "report.txt").read_text().startswith("A/B verdict: promote challenger")


def test_the_cli_takes_realised_returns_from_bars_at_the_next_bar(tmp_path) -> None:
    """`alphaforge ab report --bars`: forward_return_1 computed by compute_labels with evaluate.execution."""
    from typer.testing import CliRunner

    from alphaforge.cli import app
    from alphaforge.data.synthetic import SyntheticParams, make_synthetic
    from alphaforge.features import compute_labels

    bars, _ = make_synthetic(SyntheticParams(n_symbols=8, n_bars=120, seed=14))
    labels = compute_labels(bars, 1, "next_open").dropna(subset=["forward_return_1"])
    traffic = _traffic(labels[["timestamp", "symbol", "forward_return_1"]], {"champion": 0.0, "challenger": 1.0},
                       seed=15)
    RequestLog(tmp_path / "requests").append(traffic.assign(features=[{"f": 1.0}] * len(traffic)))
    bars.to_parquet(tmp_path / "bars.parquet")
    (tmp_path / "params.yaml").write_text("evaluate:\n  execution: next_open\n  cost_bps: 5.0\n"
                                          "ab:\n  min_bars: 20\n  lookback_hours: 1.0e6\n")
    done = CliRunner().invoke(app, ["ab", "report", "--params", str(tmp_path / "params.yaml"), "--log-dir",
                                    str(tmp_path / "requests"), "--bars", str(tmp_path / "bars.parquet"),
                                    "--out", str(tmp_path / "ab")])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("A/B verdict: promote challenger")
    report = json.loads((tmp_path / "ab" / "report.json").read_text())
    assert report["compared_bars"] == labels["timestamp"].nunique() and report["cost_bps"] == 5.0


def test_the_monitor_page_carries_the_ab_verdict_or_says_why_there_is_none(tmp_path) -> None:
    """index.html of `alphaforge monitor`: its A/B section is the report's verdict and figures (or the reason)."""
    from alphaforge.live_monitor.pages import monitor_page

    market = _market(12)
    traffic = _traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=13)
    RequestLog(tmp_path / "requests").append(traffic.assign(features=[{"f": 1.0}] * len(traffic)))
    report = run_ab_report(str(tmp_path / "requests"), market, PARAMS, cost_bps=5.0,
                           window_end=traffic["received_at"].max() + pd.Timedelta("1h"), out_dir=str(tmp_path / "ab"))
    summary = {"window": {"start": "a", "end": "b", "variant": "champion"},
               "requests": {"requests": 3, "unique_rows": 9, "symbols": 3, "bars": 3, "latency_ms_p50": 0.5,
                            "latency_ms_p95": 0.9},
               "matured_rows": 9, "pending_rows": 0, "lag_seconds": {"p50": 1.0},
               "drift": {"drifted_features": ["f"], "n_features": 2, "share": 0.5}, "degradation": {"detail": "none"},
               "alerts": []}
    live = pd.DataFrame({"period": ["2024-01"], "rows": [9], "bars": [3], "ic": [0.1], "rank_ic": [0.2],
                         "hit_rate": [0.6]})
    page = monitor_page(summary, live, report, None, drift_report="report.html")
    test = report["difference"][report["metric"]]
    assert "<strong>Verdict: promote challenger</strong>" in page
    assert f"{report['variants']['challenger']['net_pnl_total']:.5f}" in page and f"{test['lower']:.6f}" in page
    assert "<code>report.html</code>" in page and "<td>2024-01</td>" in page
    no_challenger = monitor_page(summary, live.iloc[0:0], None, "no challenger rows in the request log",
                                 drift_report=None)
    assert "No A/B verdict: no challenger rows in the request log" in no_challenger
    assert "No served prediction has matured yet." in no_challenger


def test_the_monitor_stage_takes_its_ab_verdict_from_the_request_log_or_the_reason(tmp_path) -> None:
    from alphaforge.config import load_params
    from alphaforge.stages.monitor import _ab_verdict

    market = _market(12)
    traffic = _traffic(market, {"champion": 0.0, "challenger": 1.0}, seed=13)
    (tmp_path / "params.yaml").write_text("evaluate:\n  cost_bps: 5.0\nab:\n  min_bars: 20\n  planned_bars: 150\n"
                                          "  lookback_hours: 1.0e6\n")
    params = load_params(tmp_path / "params.yaml")
    champion_only = RequestLog(tmp_path / "champion")
    champion_only.append(traffic[traffic["variant"] == "champion"].assign(features=[{"f": 1.0}] * int(
        (traffic["variant"] == "champion").sum())))
    report, reason = _ab_verdict(params, market, str(tmp_path / "champion"), tmp_path / "out")
    assert report is None and "no challenger rows" in reason
    RequestLog(tmp_path / "both").append(traffic.assign(features=[{"f": 1.0}] * len(traffic)))
    report, reason = _ab_verdict(params, market, str(tmp_path / "both"), tmp_path / "out")
    assert reason is None and report["verdict"] == PROMOTE
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"] == PROMOTE
    report, reason = _ab_verdict(params, market.drop(columns="forward_return_1"), str(tmp_path / "both"), tmp_path)
    assert report is None and "forward_return_1" in reason
