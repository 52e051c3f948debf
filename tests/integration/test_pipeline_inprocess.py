"""The pipeline in process, in a temporary folder: synthetic ingest -> validate -> features -> train -> stack ->
evaluate, each stage through its module's ``run(params, root=...)`` exactly as ``dvc repro`` runs it, with no
service (tracking off) and nothing written outside ``tmp_path``. The quick guard that the stages still fit
together; ``test_pipeline_e2e.py`` runs the real ``dvc repro``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages import STAGES, run_stage

FAST = {
    "ingest": {"source": "synthetic", "synthetic": {"n_symbols": 12, "n_bars": 420, "seed": 11,
                                                    "signal_strength": 0.1, "signal_span": 20}},
    "features": {"regimes": False},
    "train": {"families": ["ridge"], "permutation_repeats": 0, "use_tuned": False,
              "walk_forward": {"n_splits": 2, "min_train_size": 200, "embargo": 2}},
    "ensemble": {"meta_walk_forward": {"n_splits": 2, "min_train_size": 60, "embargo": 0}, "compile_trees": False},
    "tracking": {"enabled": False},
}


def test_the_stages_run_in_a_temporary_folder_and_fit_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("ALPHAFORGE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # nothing may rely on the current folder either
    params = Params.model_validate(FAST)
    root = tmp_path / "project"
    summaries = {stage: run_stage(stage, params, root=root)
                 for stage in ("ingest", "validate", "features", "train", "stack", "evaluate")}
    paths = Paths(root)
    assert summaries["ingest"]["rows"] == 12 * 420 and summaries["validate"]["success"]
    dataset = pd.read_parquet(paths.dataset)
    assert len(dataset) == 12 * 420 and summaries["features"]["n_features"] == len(summaries["features"]["features"])
    oof = pd.read_parquet(paths.oof)
    assert set(oof["fold"]) == {0, 1} and oof["prediction_ridge"].notna().all()
    assert paths.ensemble_model_dir.is_dir() and pd.read_parquet(paths.stack_oof)["prediction_ensemble"].notna().any()
    metrics = json.loads(paths.evaluate_metrics.read_text())
    assert {"ridge", "ensemble"} <= set(metrics["models"]) and "equal_weight" in json.dumps(metrics["baselines"])
    assert paths.leaderboard.read_text().strip() and paths.report_html.is_file()
    # every output landed under the root (the cwd holds only the root and the state folder)
    assert {p.name for p in tmp_path.iterdir()} <= {"project", "state"}
    assert set(STAGES) >= set(summaries)


def test_a_stage_main_turns_a_data_error_into_exit_code_2_with_the_message(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from alphaforge.stages import validate

    params_file = tmp_path / "params.yaml"
    params_file.write_text("tracking: {enabled: false}\n")
    bad = pd.DataFrame({"timestamp": pd.to_datetime(["2024-01-02", "2024-01-02"], utc=True), "symbol": ["A", "A"],
                        "close": [1.0, -1.0], "open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0],
                        "volume": [1.0, 1.0]})
    Paths(tmp_path).raw_bars.parent.mkdir(parents=True)
    bad.to_parquet(Paths(tmp_path).raw_bars)
    code = validate.main(["--params", str(params_file), "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "alphaforge validate: failed" in err and "close" in err
    assert not Paths(tmp_path).validated_bars.exists()  # nothing downstream runs on bad data
