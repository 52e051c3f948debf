"""Tests for the model card and the HTML report.

The metrics come from a real evaluation (evaluate_oof on skfolio's S&P 500 closes with a seeded noisy-foresight
model), and the overfitting figures from a seeded trial matrix, so the card is built from the shapes the
pipeline writes.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from alphaforge.evaluate import BASELINES, EvaluationParams, evaluate_oof, market_for, write_plots
from alphaforge.overfitting import overfitting_summary
from alphaforge.report import (
    TrustedHtml,
    dsr_reading,
    html_report,
    markdown_to_html,
    model_card,
    pbo_reading,
    plot_pbo_logits,
    write_text_atomic,
)

SPEC = {"feature_version": "1", "features": ["log_return_1", "rsi", "volatility_20"], "horizon": 1,
        "target": "forward_return", "task": "regression", "families": ["lightgbm"]}
DATA = {"source": "skfolio_sp500", "rows": 5200, "symbols": 20, "start": "2021-11-29 00:00:00+00:00",
        "end": "2022-12-28 00:00:00+00:00"}
PARAMS = {"num_leaves": 15, "learning_rate": 0.05, "objective": "regression"}


@pytest.fixture(scope="module")
def evaluation_and_oof() -> tuple[Any, pd.DataFrame]:
    """A real OOF evaluation: 20 stocks, 4 folds, a model that sees the label through heavy seeded noise."""
    from skfolio.datasets import load_sp500_dataset

    closes = load_sp500_dataset().iloc[-260:]
    log_close = np.log(closes)
    index = pd.DatetimeIndex(closes.index).tz_localize("UTC")
    parts = {"log_return_1": log_close.diff(), "log_return_20": log_close.diff(20),
             "forward_return_1": log_close.shift(-1) - log_close}
    parts["forward_return"] = parts["forward_return_1"]
    frame = pd.concat({k: v.set_axis(index) for k, v in parts.items()}, axis=1).stack(
        level=1, future_stack=True).rename_axis(["timestamp", "symbol"]).reset_index()
    frame = frame.dropna().reset_index(drop=True)
    stamps = np.sort(frame["timestamp"].unique())
    fold_of = pd.Series(np.arange(len(stamps)) * 4 // len(stamps), index=stamps)
    frame["fold"] = fold_of.reindex(frame["timestamp"]).to_numpy().astype(int)
    noise = np.random.default_rng(0).normal(0.0, 0.05, len(frame))
    frame["prediction_lightgbm"] = frame["forward_return"] + noise
    bars = log_close.set_axis(index).pipe(np.exp).stack().rename("close").rename_axis(["timestamp", "symbol"])
    market = market_for(bars.reset_index(), EvaluationParams())
    evaluation = evaluate_oof(frame, EvaluationParams(), models={"lightgbm": "prediction_lightgbm"}, market=market,
                              horizon=1)
    return evaluation, frame


@pytest.fixture(scope="module")
def metrics(evaluation_and_oof: tuple[Any, pd.DataFrame]) -> dict[str, Any]:
    evaluation, _ = evaluation_and_oof
    result = evaluation.to_metrics_json()
    result["models"]["lightgbm"]["interval_coverage"] = 0.874
    return result


@pytest.fixture(scope="module")
def overfitting(evaluation_and_oof: tuple[Any, pd.DataFrame]) -> dict[str, Any]:
    evaluation, _ = evaluation_and_oof
    candidate = evaluation.returns[("lightgbm", "long_short")].set_index("timestamp")["net_return"]
    rng = np.random.default_rng(1)
    trials = pd.DataFrame(rng.normal(0.0, 0.01, (len(candidate), 7)), index=candidate.index)
    trials[7] = candidate
    return overfitting_summary(candidate, trials, periods_per_year=252, n_trials=10, n_partitions=8)


def test_model_card_holds_the_candidate_every_baseline_the_data_and_the_overfitting(
        metrics: dict[str, Any], overfitting: dict[str, Any]) -> None:
    card = model_card("lightgbm", spec=SPEC, data_summary=DATA, params=PARAMS, metrics=metrics,
                      overfitting=overfitting)
    assert card.startswith("# Model card: lightgbm")
    table = [line for line in card.splitlines() if line.startswith("| ") and "(" in line]
    assert any(line.startswith("| **lightgbm** (candidate)") for line in table)
    for baseline in BASELINES:
        assert any(line.startswith(f"| {baseline} (baseline)") for line in table)
    assert "2021-11-29 00:00:00+00:00 to 2022-12-28 00:00:00+00:00" in card
    assert "`rsi`" in card and "| num_leaves | 15 |" in card and "| objective | 'regression' |" in card
    candidate_row = next(line for line in table if line.startswith("| **lightgbm** (candidate)"))
    cells = [cell.strip() for cell in candidate_row.strip("|").split("|")]
    assert cells[6] == f"{metrics['models']['lightgbm']['sharpe']:.3f}"  # the net Sharpe column
    assert "87.40%" in card  # interval coverage, as a percentage
    overfit_section = card.split("## Overfitting", 1)[1]
    assert f"{overfitting['dsr']['dsr']:.3f}" in overfit_section
    assert f"{overfitting['pbo']['pbo']:.3f}" in overfit_section
    assert dsr_reading(overfitting["dsr"]) in overfit_section and pbo_reading(overfitting["pbo"]) in overfit_section
    assert "best of 10" in overfit_section or "of 10 skill-less" in overfit_section


def test_model_card_states_why_a_figure_is_missing(metrics: dict[str, Any]) -> None:
    missing = {"dsr": {"dsr": None, "n_trials": 1, "reason": "no per-trial returns"},
               "pbo": {"pbo": None, "reason": "1 trial(s); PBO compares trials, so it needs at least 2"}}
    card = model_card("lightgbm", spec=SPEC, data_summary=DATA, params={}, metrics=metrics, overfitting=missing)
    assert "DSR not available: no per-trial returns." in card
    assert "PBO not available: 1 trial(s)" in card
    assert "defaults (no tuned parameters)" in card


def test_model_card_rejects_an_unscored_candidate(metrics: dict[str, Any], overfitting: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="candidate 'xgboost' not in metrics\\['models'\\]"):
        model_card("xgboost", spec=SPEC, data_summary=DATA, params={}, metrics=metrics, overfitting=overfitting)


def test_readings_say_what_the_numbers_mean() -> None:
    assert dsr_reading({"dsr": 0.31, "n_trials": 8}).startswith(
        "DSR 0.31: the Sharpe is not distinguishable from the best of 8 random trials")
    assert "beats" in dsr_reading({"dsr": 0.97, "n_trials": 8})
    low, mid, high = (pbo_reading({"pbo": p}) for p in (0.05, 0.4, 0.7))
    assert "carries over." in low and "weakly" in mid and "no better than chance" in high


def test_html_report_embeds_pngs_and_escapes_values(tmp_path: Path, metrics: dict[str, Any],
                                                    overfitting: dict[str, Any],
                                                    evaluation_and_oof: tuple[Any, pd.DataFrame]) -> None:
    evaluation, _ = evaluation_and_oof
    plots = write_plots(evaluation, tmp_path / "plots")
    logits_png = plot_pbo_logits(overfitting["pbo"], tmp_path / "pbo_logits.png")
    hostile = {**PARAMS, "note": "<script>alert(1)</script> | & \"quoted\""}
    card = model_card("lightgbm", spec=SPEC, data_summary=DATA, params=hostile, metrics=metrics,
                      overfitting=overfitting)
    page = html_report("Run <script>x</script>", [("lightgbm", card), ("raw", TrustedHtml("<p id='ok'>hi</p>"))],
                       [plots["equity.png"], ("CSCV logits", logits_png)])
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | &amp; &quot;quoted&quot;" in page  # the pipe stayed in its cell
    assert "<p id='ok'>hi</p>" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [plots["equity.png"].read_bytes(), logits_png.read_bytes()]
    assert "<figcaption>CSCV logits</figcaption>" in page and "<figcaption>equity.png</figcaption>" in page
    assert "<h3>Model card: lightgbm</h3>" in page  # the card's title nests under its section
    assert '<td class="num">' in page and "<th>signal</th>" in page


def test_html_report_refuses_a_non_png(tmp_path: Path) -> None:
    fake = tmp_path / "plot.png"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match="plot.png is not a PNG"):
        html_report("t", [], [fake])
    with pytest.raises(FileNotFoundError):
        html_report("t", [], [tmp_path / "absent.png"])


def test_markdown_subset() -> None:
    rendered = markdown_to_html("## Title *x*\n\nline one\nline **two** `a<b`\n\n- item 1\n- item 2\n\n"
                                "| k | v |\n| --- | ---: |\n| a\\|b | 1 |\n\n```\n<raw> & code\n```")
    assert "<h2>Title *x*</h2>" in rendered
    assert "<p>line one line <strong>two</strong> <code>a&lt;b</code></p>" in rendered
    assert "<ul><li>item 1</li><li>item 2</li></ul>" in rendered
    assert "<td>a|b</td><td class=\"num\">1</td>" in rendered
    assert "<pre><code>&lt;raw&gt; &amp; code</code></pre>" in rendered


def test_written_files(tmp_path: Path, overfitting: dict[str, Any]) -> None:
    target = write_text_atomic("héllo\n", tmp_path / "deep" / "card.md")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert [p.name for p in target.parent.iterdir()] == ["card.md"]  # no temporary left behind
    empty = plot_pbo_logits({"pbo": None, "reason": "1 trial(s)"}, tmp_path / "none.png")
    assert empty.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert plot_pbo_logits(overfitting["pbo"], tmp_path / "pbo.png").stat().st_size > 1000
