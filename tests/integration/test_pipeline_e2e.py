"""The whole pipeline with the real tools: `dvc repro` in a temporary copy of the repository.

Runs on a small slice of real data (skfolio closes, 2016-2022) with a small model, so it
takes well under a minute, and checks what a user sees: every stage's outputs, the MLflow
run, the leaderboard, that a second `dvc repro` skips everything, and that bad data stops
the pipeline at validate with nothing downstream written.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from isolation import PIPELINE_OUTPUTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = {
    "ingest": {"source": "skfolio_sp500", "start": "2016-01-01", "symbols": ["AAPL", "JPM", "KO", "XOM", "WMT", "PFE"]},
    "train": {
        "families": ["lightgbm", "ridge"],
        "walk_forward": {"n_splits": 3, "min_train_size": 400, "embargo": 2},
        "models": {"lightgbm": {"n_estimators": 40, "min_child_samples": 50}},
    },
    "tune": {"families": ["lightgbm"], "n_trials": 3, "timeout_seconds": 60},
}


MAIN_STAGES = ["promote", "risk", "regimes"]  # what `make run` reproduces; rl is optional and slow


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def copy_repo(repo_root: Path, target: Path) -> Path:
    """The files git would give a fresh clone (tracked and untracked-not-ignored), in a new git repo.

    Pipeline outputs are left out, the tracked ones too (dvc.lock, the .gitignore files DVC keeps beside its
    outputs): the copy starts as if no pipeline had run, whatever `make run` left in the checkout.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo_root, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        if any(name == output or name.startswith(output + "/") for output in PIPELINE_OUTPUTS):
            continue
        source = repo_root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    return target


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["ALPHAFORGE_HOME"] = str(cwd / ".alphaforge")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = copy_repo(repo_root, tmp_path_factory.mktemp("repo"))
    params = yaml.safe_load((target / "params.yaml").read_text())
    (target / "params.yaml").write_text(yaml.safe_dump(_merge(params, SMALL)))
    return target


@pytest.fixture(scope="module")
def first_repro(workspace: Path) -> subprocess.CompletedProcess:
    return run(["dvc", "repro", *MAIN_STAGES], workspace)


def test_dvc_repro_runs_every_stage(workspace: Path, first_repro: subprocess.CompletedProcess) -> None:
    assert first_repro.returncode == 0, first_repro.stdout[-3000:] + first_repro.stderr[-3000:]
    for stage in ("ingest", "validate", "features", "tune", "train", "stack", "evaluate", "drift", "promote",
                  "regimes", "risk"):
        assert f"Running stage '{stage}'" in first_repro.stdout
    for out in ("data/raw/bars.parquet", "data/validated/bars.parquet", "data/features/dataset.parquet",
                "data/predictions/oof.parquet", "models/trained/lightgbm/final/config.json",
                "models/trained/lightgbm/fold_2/config.json", "models/tuned/best_params.json",
                "reports/validation/index.html", "reports/evaluate/plots/equity.png",
                "reports/train/permutation_importance_lightgbm.png", "reports/train/gain_importance_ridge.png",
                "models/ensemble/pyfunc/MLmodel", "reports/evaluate/report.html",
                "reports/evaluate/model_cards/ensemble.md", "reports/evaluate/plots/pbo_lightgbm.png",
                "reports/drift/report.html", "reports/risk/metrics.json", "reports/regimes/summary.json"):
        assert (workspace / out).stat().st_size > 0, out
    assert "lightgbm: fold 3/3" in first_repro.stderr  # progress per fold
    assert "tune lightgbm" in first_repro.stderr.lower() or "trial" in first_repro.stderr  # progress per trial


def test_regimes_run_before_features_and_the_served_model_carries_the_regime_model(
    workspace: Path, first_repro: subprocess.CompletedProcess,
) -> None:
    import pandas as pd

    stdout = first_repro.stdout
    assert stdout.index("Running stage 'regimes'") < stdout.index("Running stage 'features'")
    regime_model = json.loads((workspace / "models/regimes/model.json").read_text())
    columns = [f"regime_prob_{k}" for k in range(regime_model["params"]["n_regimes"])]
    summary = json.loads((workspace / "reports/features/summary.json").read_text())
    assert summary["features"][-len(columns):] == columns
    assert summary["regimes"]["fit_end"] == regime_model["train_end"]
    dataset = pd.read_parquet(workspace / "data/features/dataset.parquet", columns=columns)
    assert dataset.notna().all(axis=1).mean() > 0.95
    for spec_path in ("models/trained/spec.json", "models/ensemble/spec.json"):
        spec = json.loads((workspace / spec_path).read_text())
        assert spec["features"][-len(columns):] == columns and spec["regime_model"] == regime_model, spec_path


def test_metrics_compare_model_with_baselines(workspace: Path, first_repro: subprocess.CompletedProcess) -> None:
    metrics = json.loads((workspace / "reports/evaluate/metrics.json").read_text())
    assert set(metrics["baselines"]) == {"equal_weight", "momentum_20", "momentum_12_1", "reversal_1", "reversal_5",
                                         "low_volatility"}
    assert metrics["execution"] == "next_close" and metrics["primary_strategy"] == "long_short"  # closes only
    assert set(metrics["models"]) == {"lightgbm", "ridge", "ensemble"}
    assert 0.5 < metrics["models"]["lightgbm"]["interval_coverage"] < 1
    overfitting = metrics["models"]["lightgbm"]["overfitting"]
    assert overfitting["dsr"]["n_trials"] == 3 and 0 <= overfitting["dsr"]["dsr"] <= 1
    assert 0 <= overfitting["pbo"]["pbo"] <= 1 and overfitting["pbo"]["n_trials"] == 3
    for block in (*metrics["models"].values(), *metrics["baselines"].values()):
        assert {"sharpe", "max_drawdown", "turnover", "annual_return"} <= set(block)
    shown = run(["dvc", "metrics", "show", "--json"], workspace)
    assert shown.returncode == 0 and "mean_fold_rank_ic" in shown.stdout
    board = run(["alphaforge", "leaderboard"], workspace)
    assert board.returncode == 0 and "lightgbm *" in board.stdout and "equal_weight" in board.stdout
    assert (workspace / "reports/evaluate/plots/tearsheet_ensemble.png").stat().st_size > 0


def test_the_run_is_tracked_in_mlflow(workspace: Path, first_repro: subprocess.CompletedProcess) -> None:
    run_id = json.loads((workspace / "models/run.json").read_text())["run_id"]
    with sqlite3.connect(workspace / ".alphaforge/mlflow.db") as db:
        status = db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0]
        keys = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (run_id,))}
        params = {k for (k,) in db.execute("select key from params where run_uuid = ?", (run_id,))}
    assert status == "FINISHED"
    assert "lightgbm.mean_fold_rank_ic" in keys and any(k.startswith("oos.models.lightgbm.") for k in keys)
    assert "train.models.lightgbm.n_estimators" in params
    artifacts = workspace / ".alphaforge/mlartifacts"
    assert list(artifacts.rglob("config.json")) and list(artifacts.rglob("equity.png"))


def test_promotion_decision_is_recorded(workspace: Path, first_repro: subprocess.CompletedProcess) -> None:
    decision = json.loads((workspace / "reports/promotion/decision.json").read_text())
    assert decision["status"] in {"promoted", "refused"}
    reasons = "\n".join(decision["decision"]["reasons"])
    assert "baseline equal_weight" in reasons and "data validation passed" in reasons
    rules = {rule["rule"]: rule for rule in decision["decision"]["rules"]}
    assert {"ic_tstat", "beats_equal_weight", "beats_reversal_1", "pbo", "plausible_sharpe", "champion"} <= set(rules)
    assert rules["ic_tstat"]["threshold"] == 2.0 and rules["ic_tstat"]["verdict"] in {"PASS", "FAIL"}
    shown = run(["alphaforge", "registry", "show"], workspace)
    assert shown.returncode == 0, shown.stderr
    assert "challenger" in shown.stdout
    assert ("champion" in shown.stdout) == (decision["status"] == "promoted")


def test_second_repro_skips_every_stage(workspace: Path, first_repro: subprocess.CompletedProcess) -> None:
    again = run(["dvc", "repro", *MAIN_STAGES], workspace)
    assert again.returncode == 0
    assert "Running stage" not in again.stdout
    assert "didn't change, skipping" in again.stdout


def test_bad_data_stops_at_validate(workspace: Path, first_repro: subprocess.CompletedProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    outputs = {".alphaforge", "data", "models", "reports"}
    shutil.copytree(workspace, bad, ignore=lambda folder, names: outputs & set(names) if Path(folder) == workspace else [])
    (bad / "data/external").mkdir(parents=True)
    (bad / "data/external/bars.csv").write_text(
        "timestamp,symbol,open,high,low,close,volume\n"
        + "".join(f"2024-01-{d:02d},X,10,11,9,10.5,100\n" for d in range(2, 20))
        + "2024-01-22,X,10,9,11,10.5,100\n"  # high below low
    )
    params = yaml.safe_load((bad / "params.yaml").read_text())
    params["ingest"] = {"source": "file", "path": "data/external/bars.csv"}
    (bad / "params.yaml").write_text(yaml.safe_dump(params))
    result = run(["dvc", "repro", *MAIN_STAGES], bad)
    assert result.returncode != 0
    assert "high_ge_open_close" in result.stderr or "high_ge_open_close" in result.stdout
    assert (bad / "reports/validation/index.html").exists()
    assert not (bad / "data/validated/bars.parquet").exists()
    assert not (bad / "data/features/dataset.parquet").exists()
    assert not (bad / "models/trained").exists()
