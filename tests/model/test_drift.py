"""The drift stage: planted drift is caught, stationary data rarely cries wolf, the alert stops promotion,
data-quality problems are named, alerts reach the log and the webhook, and the HTML report renders in Chromium.

Data: the seeded synthetic market (``make_synthetic``) with the pipeline's own features and labels. Drift is
planted in the *bars* (log returns of the newest 63 bars shifted or scaled, or a real calm-to-turbulent switch
of the synthetic regime chain), so it reaches the features the way real drift would.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from alphaforge.data.synthetic import SyntheticParams, make_synthetic
from alphaforge.drift import (
    AlertDeliveryError,
    DriftError,
    DriftParams,
    check_drift,
    drift_columns,
    run_drift,
    split_windows,
)
from alphaforge.features import FeatureParams, compute_features, compute_labels
from alphaforge.promotion import OOSWindow, PromotionParams, Scorecard, decide

WINDOW = 63
N_SYMBOLS = 10
N_BARS = 900
FALSE_ALARM_SEEDS = range(20)
FALSE_ALARM_BOUND = 0.15


def make_dataset(bars: pd.DataFrame, horizon: int = 5) -> pd.DataFrame:
    """Features and labels of ``bars``, as the features stage writes them."""
    features = compute_features(bars, FeatureParams())
    labels = compute_labels(bars, horizon)
    return pd.concat([features, labels.drop(columns=["timestamp", "symbol"])], axis=1)


def stationary_bars(seed: int, **changes: Any) -> pd.DataFrame:
    """A calm synthetic market with no regime switches: every stretch of it is like every other."""
    settings = {"n_symbols": N_SYMBOLS, "n_bars": N_BARS, "seed": seed, "regime_switch_prob": 0.0} | changes
    return make_synthetic(SyntheticParams(**settings))[0]


def plant(bars: pd.DataFrame, *, mean_shift: float = 0.0, vol_multiple: float = 1.0, bars_planted: int = WINDOW,
          ) -> pd.DataFrame:
    """Shift (add ``mean_shift`` per bar) or scale (x ``vol_multiple``) the log returns of each symbol's last
    ``bars_planted`` bars; open, high and low move with the close so the bars stay consistent."""
    out = bars.copy()
    for _, rows in out.groupby("symbol", sort=False):
        log_close = np.log(rows["close"].to_numpy())
        returns = np.diff(log_close, prepend=log_close[0])
        start = len(returns) - bars_planted
        returns[start:] = returns[start:] * vol_multiple + mean_shift
        ratio = np.exp(log_close[0] + np.cumsum(returns) - log_close)
        for column in ("open", "high", "low", "close"):
            out.loc[rows.index, column] = rows[column].to_numpy() * ratio
    return out


def regime_switch_bars() -> tuple[pd.DataFrame, int]:
    """Synthetic bars cut 63 bars after the synthetic regime chain's first calm -> turbulent switch, with a
    calm history of at least 400 bars before it; and the seed that gave it."""
    for seed in range(500):
        bars, truth = make_synthetic(SyntheticParams(n_symbols=N_SYMBOLS, n_bars=N_BARS, seed=seed,
                                                     regime_switch_prob=0.003))
        regime = truth.loc[truth["symbol"] == truth["symbol"].iloc[0], "regime"].to_numpy()
        switched = np.flatnonzero(regime == 1)
        if len(switched) and 400 <= switched[0] <= N_BARS - WINDOW and regime[switched[0]:switched[0] + WINDOW].all():
            stamps = np.sort(bars["timestamp"].unique())
            return bars[bars["timestamp"] <= stamps[switched[0] + WINDOW - 1]].reset_index(drop=True), seed
    raise AssertionError("no seed below 500 gives a calm-then-turbulent synthetic market")


def params(tmp_path: Path, **changes: Any) -> DriftParams:
    return DriftParams(alerts_path=str(tmp_path / "alerts.jsonl"), **changes)


# ---------------------------------------------------------------------------------------------- false alarms


def test_two_windows_of_stationary_data_rarely_raise_the_alert(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                record_property: Any) -> None:
    alarms, shares = [], []
    for seed in FALSE_ALARM_SEEDS:
        result = run_drift(make_dataset(stationary_bars(seed)), None, params(tmp_path), tmp_path / f"s{seed}",
                           write_html=False)
        alarms.append(result.blocking)
        shares.append(result.check.share)
        assert result.summary["calibration_windows"] == 12  # 756 reference bars / 63
    rate = float(np.mean(alarms))
    record_property("false_alarm_rate", rate)
    with capsys.disabled():
        print(f"\n[drift] false-alarm rate on stationary synthetic data: {rate:.2f} over {len(alarms)} seeds "
              f"(median drift share {np.median(shares):.2f}, max {max(shares):.2f})")
    assert rate <= FALSE_ALARM_BOUND, f"false-alarm rate {rate:.2f} over {len(alarms)} seeds; shares {shares}"


def test_fixed_thresholds_would_cry_wolf_on_the_same_data(tmp_path: Path) -> None:
    """Why thresholds are calibrated: Evidently's fixed 0.1 flags most autocorrelated features of calm data."""
    dataset = make_dataset(stationary_bars(0))
    fixed = params(tmp_path, calibrate_thresholds=False)
    windows = split_windows(dataset, fixed)
    check = check_drift(windows.reference, windows.current, drift_columns(dataset, fixed), fixed)
    calibrated = run_drift(dataset, None, params(tmp_path), tmp_path / "cal", write_html=False)
    assert check.share > calibrated.check.share
    assert not calibrated.blocking


# ---------------------------------------------------------------------------------------------- planted drift


PLANTED = {
    "mean_shift": (lambda: plant(stationary_bars(0), mean_shift=0.005), {"log_return_20", "sma_ratio_50"}),
    "variance_change": (lambda: plant(stationary_bars(0), vol_multiple=2.0), {"volatility_20", "atr_ratio"}),
}


@pytest.mark.parametrize("kind", [*PLANTED, "regime_switch"])
def test_planted_drift_raises_the_blocking_alert(kind: str, tmp_path: Path) -> None:
    if kind == "regime_switch":
        bars, seed = regime_switch_bars()
        control = stationary_bars(seed, n_bars=len(bars) // N_SYMBOLS)
        expected = {"volatility_20", "atr_ratio"}
    else:
        make, expected = PLANTED[kind]
        bars, control = make(), stationary_bars(0)
    result = run_drift(make_dataset(bars), None, params(tmp_path), tmp_path / "planted", write_html=False)
    alert = json.loads((tmp_path / "planted" / "alert.json").read_text())
    assert alert["blocking"] and "data_drift" in alert["rules"], alert
    assert alert["detail"].startswith("data drift:") and result.check.share >= 0.5
    assert expected <= set(result.check.drifted), result.check.drifted
    calm = run_drift(make_dataset(control), None, params(tmp_path), tmp_path / "control", write_html=False)
    assert not calm.blocking, f"the unplanted control already alarms: {calm.alert['detail']}"


# ---------------------------------------------------------------------------------------------- performance


def predictions_frame(dataset: pd.DataFrame, truth: pd.DataFrame, *, broken_from: Any = None) -> pd.DataFrame:
    """OOF-shaped predictions: the planted expected return (a genuinely good signal); from ``broken_from`` on,
    shuffled across rows (a model that stopped working, with the same distribution)."""
    frame = dataset[["timestamp", "symbol", "forward_return"]].copy()
    frame["prediction_lightgbm"] = truth["expected_return_1"].to_numpy()
    if broken_from is not None:
        late = frame["timestamp"] >= broken_from
        frame.loc[late, "prediction_lightgbm"] = np.random.default_rng(1).permutation(
            frame.loc[late, "prediction_lightgbm"].to_numpy())
    return frame.dropna(subset=["forward_return"]).reset_index(drop=True)


def test_a_performance_drop_blocks_and_a_steady_model_does_not(tmp_path: Path) -> None:
    bars, truth = make_synthetic(SyntheticParams(n_symbols=30, n_bars=600, seed=4, regime_switch_prob=0.0,
                                                 signal_strength=0.5))
    dataset = make_dataset(bars)
    current_start = np.sort(dataset["timestamp"].unique())[-WINDOW]
    steady = run_drift(dataset, predictions_frame(dataset, truth), params(tmp_path), tmp_path / "steady",
                       write_html=False)
    broken = run_drift(dataset, predictions_frame(dataset, truth, broken_from=current_start), params(tmp_path),
                       tmp_path / "broken", write_html=False)
    before, after = steady.summary["performance"], broken.summary["performance"]
    # the newest 6 bars have no label yet (5-bar horizon, entered at the next bar's open)
    assert before["checked"] and before["current"]["bars"] == WINDOW - 6
    assert before["reference"]["rank_ic"] > 0.1 and abs(before["reference"]["rank_ic"] - before["current"]["rank_ic"]) < 0.05
    assert "performance" not in steady.alert["rules"] and not steady.blocking
    assert after["current"]["rank_ic"] < after["reference"]["rank_ic"] - 0.05
    assert broken.blocking and "performance" in broken.alert["rules"]
    assert "rank_ic fell from" in broken.alert["detail"]
    # the shuffled predictions keep their distribution: no prediction drift, only the skill is gone
    assert not broken.check.prediction.drifted  # type: ignore[union-attr]
    assert "standard errors" in broken.alert["detail"]
    # a steady model whose current window is a little worse by chance: past any threshold, but within the noise
    hair_trigger = params(tmp_path).model_copy(update={"rank_ic_drop_threshold": 1e-4, "accuracy_drop_threshold": 1e-4})
    blurred = predictions_frame(dataset, truth)
    late = blurred["timestamp"] >= current_start
    spread = blurred["prediction_lightgbm"].std()
    blurred.loc[late, "prediction_lightgbm"] += np.random.default_rng(2).normal(0.0, 0.6 * spread, int(late.sum()))
    noisy = run_drift(dataset, blurred, hair_trigger, tmp_path / "noisy", write_html=False, horizon=5)
    dipped = noisy.summary["performance"]
    assert dipped["current"]["rank_ic"] < dipped["reference"]["rank_ic"]  # it did get worse, a little
    assert "performance" not in noisy.alert["rules"], noisy.alert
    assert "performance" in run_drift(dataset, blurred, hair_trigger.model_copy(update={"performance_z": 0.0}),
                                      tmp_path / "trigger", write_html=False, horizon=5).alert["rules"]


# ---------------------------------------------------------------------------------------------- promotion


def test_data_drift_is_reported_to_the_gate_but_only_a_performance_drop_blocks_the_challenger(tmp_path: Path) -> None:
    """What the promote stage does with reports/drift/alert.json, on a real drift run's file: the challenger was
    just retrained on the drifted bars, so data drift is answered, not blocking; a performance drop blocks."""
    from alphaforge.promotion import BaselineTest, GateEvidence

    run_drift(make_dataset(plant(stationary_bars(0), vol_multiple=2.0)), None, params(tmp_path), tmp_path / "bad",
              write_html=False)
    run_drift(make_dataset(stationary_bars(0)), None, params(tmp_path), tmp_path / "good", write_html=False)
    candidate = Scorecard(window=OOSWindow(start="2013-01-01", end="2013-06-30"), metrics={"sharpe": 1.2})
    passing = BaselineTest(baseline_sharpe=0.3, mean_difference=1e-3, annual_difference=0.25, t_stat=5.0,
                           p_value=1e-6, adjusted_p_value=1e-5, n=500, lags=4)
    evidence = GateEvidence(candidate="ensemble", strategy="long_short", mode="cross_sectional",
                            execution="next_open", periods_per_year=252.0, n_periods=500, n_trials=10,
                            net_sharpe=1.2, gross_sharpe=1.5, rank_ic_mean=0.03, rank_ic_tstat=4.0,
                            baselines={"equal_weight": passing, "momentum_20": passing}, pbo=0.2)

    def decision(folder: str, *extra: str) -> Any:
        drift = json.loads((tmp_path / folder / "alert.json").read_text())
        return decide(candidate, None, evidence, validation_passed=True, drift_rules=[*drift["rules"], *extra],
                      drift_detail=drift.get("detail", ""), params=PromotionParams())

    drifted, steady = decision("bad"), decision("good")
    assert "data_drift" in json.loads((tmp_path / "bad" / "alert.json").read_text())["rules"]
    assert drifted.promote, drifted.reasons
    assert any(r.startswith("PASS drift alert 'data_drift' does not block") for r in drifted.reasons)
    assert steady.promote, steady.reasons
    dropped = decision("bad", "performance")
    assert not dropped.promote
    assert any(r.startswith("FAIL drift alert 'performance' blocks") for r in dropped.reasons)


# ---------------------------------------------------------------------------------------------- windows, quality


def test_reference_is_the_champions_training_window_and_never_overlaps(tmp_path: Path) -> None:
    dataset = make_dataset(stationary_bars(1))
    stamps = np.sort(dataset["timestamp"].unique())
    settings = params(tmp_path, reference_window_bars=300)
    fresh = split_windows(dataset, settings)
    assert fresh.current["timestamp"].nunique() == WINDOW and fresh.current["timestamp"].min() == stamps[-WINDOW]
    assert fresh.reference["timestamp"].max() == stamps[-WINDOW - 1]
    assert fresh.reference["timestamp"].nunique() == 300
    champion = split_windows(dataset, settings, reference_end=stamps[500])
    assert champion.reference["timestamp"].max() == stamps[500] and "champion" in champion.reference_basis
    assert champion.reference["timestamp"].min() == stamps[201]
    late = split_windows(dataset, settings, reference_end=stamps[-1])
    assert late.reference["timestamp"].max() == stamps[-WINDOW - 1] and "cut" in late.reference_basis
    with pytest.raises(DriftError, match="min_reference_bars"):
        split_windows(dataset, settings, reference_end=stamps[60])


def test_data_quality_names_missing_stale_flat_and_nan(tmp_path: Path) -> None:
    bars = stationary_bars(2)
    symbols = sorted(bars["symbol"].unique())
    stamps = np.sort(bars["timestamp"].unique())
    gone, holed, flat = symbols[0], symbols[1], symbols[2]
    bars = bars[~((bars["symbol"] == gone) & (bars["timestamp"] > stamps[-10]))]                  # stops trading
    bars = bars[~((bars["symbol"] == holed) & bars["timestamp"].isin(stamps[-30:-25]))]           # 5 bars missing
    last = (bars["symbol"] == flat) & (bars["timestamp"] >= stamps[-6])
    bars.loc[last, ["open", "high", "low", "close"]] = bars.loc[last & (bars["timestamp"] == stamps[-6]), "close"].iloc[0]
    dataset = make_dataset(bars.reset_index(drop=True))
    dataset.loc[dataset["timestamp"] >= stamps[-20], "rsi"] = np.nan                               # a broken feed
    result = run_drift(dataset, None, params(tmp_path), tmp_path / "q", write_html=False)
    quality = result.summary["quality"]
    assert quality["no_recent_bar"] == [gone] and quality["flat_close"] == [flat]
    assert quality["missing_by_symbol"] == {gone: 9, holed: 5}
    assert quality["features_over_nan_limit"] == ["rsi"]
    warning = [a for a in result.alerts if a.rule == "data_quality"]
    assert len(warning) == 1 and not warning[0].blocking and gone in warning[0].detail
    over_time = pd.read_csv(tmp_path / "q" / "quality.csv")
    assert over_time["coverage"].iloc[-1] == pytest.approx((N_SYMBOLS - 1) / N_SYMBOLS)
    assert over_time.loc[over_time["window"] == "current", "nan_rate"].iloc[-1] > 0


# ---------------------------------------------------------------------------------------------- alert delivery


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that records every JSON body POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


def test_alerts_are_logged_and_posted_to_the_webhook(tmp_path: Path, webhook: tuple[str, list]) -> None:
    url, received = webhook
    dataset = make_dataset(plant(stationary_bars(0), vol_multiple=2.0))
    result = run_drift(dataset, None, params(tmp_path, webhook_url=url), tmp_path / "out", write_html=False)
    assert len(received) == 1 and received[0]["blocking"] and received[0]["source"] == "pipeline"
    assert [a["rule"] for a in received[0]["alerts"]] == [a.rule for a in result.alerts]
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [line["rule"] for line in lines] == [a.rule for a in result.alerts] and lines[0]["blocking"]
    quiet = run_drift(make_dataset(stationary_bars(0)), None, params(tmp_path, webhook_url=url), tmp_path / "q",
                      write_html=False)
    assert not quiet.alerts and len(received) == 1  # nothing to say, nothing posted


def test_an_undeliverable_alert_fails_loudly_after_recording_it(tmp_path: Path) -> None:
    with HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_port  # bound, then closed: nothing listens there
    dataset = make_dataset(plant(stationary_bars(0), vol_multiple=2.0))
    with pytest.raises(AlertDeliveryError, match=f"127.0.0.1:{port}"):
        run_drift(dataset, None, params(tmp_path, webhook_url=f"http://127.0.0.1:{port}/x",
                                        webhook_timeout_seconds=2), tmp_path / "out", write_html=False)
    assert json.loads((tmp_path / "out" / "alert.json").read_text())["blocking"]
    assert (tmp_path / "alerts.jsonl").read_text().count("\n") >= 1


def test_champion_reference_end_reads_the_champions_window_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from alphaforge import tracking
    from alphaforge.drift import champion_reference_end
    from alphaforge.promotion import WINDOW_END_TAG

    versions = {"4": {WINDOW_END_TAG: "2013-06-14 00:00:00+00:00"}, "5": {}}
    aliases: dict[str, str] = {}
    monkeypatch.setattr(tracking, "get_model_aliases", lambda name: dict(aliases))
    monkeypatch.setattr(tracking, "get_model_version",
                        lambda name, version: tracking.ModelVersionRecord(name=name, version=version, run_id=None,
                                                                          source="x", tags=versions[version],
                                                                          created_ms=0))
    assert champion_reference_end("alphaforge-signal") is None  # nothing serves yet
    aliases["champion"] = "4"
    assert champion_reference_end("alphaforge-signal") == pd.Timestamp("2013-06-14", tz="UTC")
    aliases["champion"] = "5"
    with pytest.raises(DriftError, match=WINDOW_END_TAG):
        champion_reference_end("alphaforge-signal")


def test_params_refuse_unknown_keys_and_bad_urls() -> None:
    with pytest.raises(ValidationError, match="drift_share_treshold"):
        DriftParams(drift_share_treshold=0.3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="webhook_url"):
        DriftParams(webhook_url="ftp://example.invalid/hook")


# ---------------------------------------------------------------------------------------------- the HTML report


class _VisibleText(html.parser.HTMLParser):
    """The text a browser shows: everything outside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to check the drift report renders; install it with "
                "`apt-get install -y chromium` (Debian/Ubuntu) and rerun")


def _browser(report: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args, report.resolve().as_uri()]
    return subprocess.run(command, cwd=profile.parent, capture_output=True, text=True, timeout=90, check=False)


def test_html_report_renders_the_drift_table_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    dataset = make_dataset(plant(stationary_bars(0), vol_multiple=2.0))
    predictions = dataset[["timestamp", "symbol", "forward_return", "log_return_1"]].rename(
        columns={"log_return_1": "prediction_ridge"}).dropna()
    settings = params(tmp_path)
    result = run_drift(dataset, predictions, settings, tmp_path / "drift")
    # the report's own verdicts (what the summary uses) equal the fast path's (no HTML, Evidently's stat tests)
    fast = run_drift(dataset, predictions, settings, tmp_path / "fast", write_html=False).check
    assert [(f.column, f.drifted) for f in fast.features] == [(f.column, f.drifted) for f in result.check.features]
    assert [round(f.score, 9) for f in fast.features] == [round(f.score, 9) for f in result.check.features]
    assert result.check.prediction is not None and fast.prediction is not None
    assert result.check.prediction.drifted == fast.prediction.drifted

    report = result.paths["report"]
    page = report.read_text(encoding="utf-8")
    assert all(f'"{name}"' in page for name in result.check.drifted)

    screenshot = tmp_path / "report.png"
    shot = _browser(report, tmp_path / "profile1", f"--screenshot={screenshot}", "--window-size=1280,2000")
    assert screenshot.exists(), f"chromium wrote no screenshot: {shot.stderr[-2000:]}"
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (2000, 1280)
    assert (pixels < 200).mean() > 0.01, "the screenshot is blank: the report did not render"

    dom = _browser(report, tmp_path / "profile2", "--dump-dom")
    parser = _VisibleText()
    parser.feed(dom.stdout)
    text = " ".join(parser.parts)
    assert "Dataset Drift is detected" in text and "Share of Drifted Columns" in text, text[:2000]
    shown = [name for name in result.check.drifted if name in text]
    assert shown, f"no drifted column name is rendered in the drift table: {text[:3000]}"
