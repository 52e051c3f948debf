"""benchmarks/models.py: the model benchmark's table is computed from the predictions it scored, in Qlib's form."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
QLIB_METRICS = {"ic", "icir", "rank_ic", "rank_icir", "excess_return_without_cost", "information_ratio_without_cost",
                "max_drawdown_without_cost", "excess_return_with_cost", "information_ratio_with_cost",
                "max_drawdown_with_cost"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Two fast families and their stack, two seeds, on a small synthetic market with a planted signal."""
    out_dir = tmp_path_factory.mktemp("bench_models")
    out, predictions = out_dir / "models.json", out_dir / "predictions"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "models.py"), "--out", str(out), "--source", "synthetic",
         "--synthetic-symbols", "10", "--synthetic-bars", "420", "--feature-sets", "basic",
         "--families", "ridge", "lightgbm", "--seeds", "0", "1", "--n-splits", "2", "--min-train-size", "150",
         "--meta-min-train-size", "60", "--threads", "1", "--predictions", str(predictions), "--note", "test run"],
        check=True, cwd=out_dir, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.read_text()), predictions


def test_the_table_has_every_model_metric_and_seed(tiny_run: tuple[dict, Path]) -> None:
    result, _ = tiny_run
    assert result["note"] == "test run"
    assert result["data"]["source"] == "synthetic" and result["data"]["symbols"] == 10
    assert [(r["feature_set"], r["seed"]) for r in result["runs"]] == [("basic", 0), ("basic", 1)]
    table = result["table"]["basic"]
    assert list(table) == ["ridge", "lightgbm", "ensemble"]
    for model, metrics in table.items():
        assert set(metrics) == QLIB_METRICS, model
        for metric, cell in metrics.items():
            assert math.isfinite(cell["mean"]) and math.isfinite(cell["std"]), (model, metric)
            assert cell["std"] >= 0.0
    # ridge ignores the seed; LightGBM's row and feature subsampling does not
    assert table["ridge"]["rank_ic"]["std"] == pytest.approx(0.0, abs=1e-12)
    seeds = [r["scores"]["lightgbm"]["ic"] for r in result["runs"]]
    assert seeds[0] != seeds[1]
    assert table["lightgbm"]["ic"]["mean"] == pytest.approx(np.mean(seeds))
    assert table["lightgbm"]["ic"]["std"] == pytest.approx(np.std(seeds, ddof=1))
    for metrics in table.values():  # a drawdown is never a gain
        assert metrics["max_drawdown_with_cost"]["mean"] <= 0.0


def test_ic_and_rank_ic_are_the_cross_sectional_correlations_of_the_saved_predictions(
        tiny_run: tuple[dict, Path]) -> None:
    result, predictions = tiny_run
    for run in result["runs"]:
        frame = pd.read_parquet(predictions / f"basic_seed{run['seed']}.parquet")
        assert len(frame) == run["rows_scored"]
        for model, column in (("ridge", "prediction_ridge"), ("lightgbm", "prediction_lightgbm"),
                              ("ensemble", "prediction_ensemble")):
            ic, rank_ic = [], []
            for _, group in frame.groupby("timestamp"):
                pair = group[[column, "forward_return"]].dropna()
                if len(pair) < 3 or pair[column].std() == 0 or pair["forward_return"].std() == 0:
                    continue
                ic.append(np.corrcoef(pair[column], pair["forward_return"])[0, 1])
                rank_ic.append(np.corrcoef(pair[column].rank(), pair["forward_return"].rank())[0, 1])
            scores = run["scores"][model]
            assert scores["ic"] == pytest.approx(np.mean(ic), abs=1e-9)
            assert scores["rank_ic"] == pytest.approx(np.mean(rank_ic), abs=1e-9)
            assert scores["icir"] == pytest.approx(np.mean(ic) / np.std(ic, ddof=1), abs=1e-9)
            assert scores["rank_icir"] == pytest.approx(np.mean(rank_ic) / np.std(rank_ic, ddof=1), abs=1e-9)


def test_the_planted_signal_is_found_out_of_sample(tiny_run: tuple[dict, Path]) -> None:
    """The synthetic market's signal is in its recent returns: a benchmark that scored noise would miss it."""
    result, _ = tiny_run
    assert result["table"]["basic"]["ridge"]["rank_ic"]["mean"] > 0.02


def test_summed_excess_matches_qlib_risk_analysis() -> None:
    """Annualised mean, IR and max drawdown of the summed (not compounded) excess, as Qlib's risk_analysis."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from models import _summed_excess
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    strategy = np.array([0.01, -0.02, 0.03, -0.01, 0.0])
    benchmark = np.array([0.0, 0.0, 0.01, 0.01, -0.01])
    out = _summed_excess(strategy, benchmark, 252.0)
    excess = strategy - benchmark  # 0.01, -0.02, 0.02, -0.02, 0.01; cumulative 0.01, -0.01, 0.01, -0.01, 0.0
    assert out["annualised_return"] == pytest.approx(excess.mean() * 252)
    assert out["information_ratio"] == pytest.approx(excess.mean() / excess.std(ddof=1) * math.sqrt(252))
    assert out["max_drawdown"] == pytest.approx(-0.02)


def test_render_prints_every_model_beside_qlib(tiny_run: tuple[dict, Path], tmp_path: Path) -> None:
    result, _ = tiny_run
    path = tmp_path / "models.json"
    path.write_text(json.dumps(result))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "models.py"), "--render", str(path)],
                          check=True, capture_output=True, text=True, timeout=120)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:4]] == ["| ridge", "| lightgbm", "| ensemble"]
    ridge_ic = result["table"]["basic"]["ridge"]["ic"]
    assert f"{ridge_ic['mean']:.4f} ± {ridge_ic['std']:.4f}" in rows[1]
    assert any(line.startswith("| LightGBM (lightgbm) | 0.0448 | 0.3660 |") for line in rows)
