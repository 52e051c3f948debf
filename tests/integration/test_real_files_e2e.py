"""A messy real file through the whole pipeline with the real tools: `dvc repro` in a temporary copy of the repo.

The file (tests/messy_panel.py) has listings and delistings, a multi-year suspension, a market-wide holiday,
overlapping duplicated chunks with a step back in time and one row of each row-level fault. With the repairs
allowed and ``validate.policy: quarantine`` the pipeline runs to ``promote`` and ``risk``; the quarantine holds
exactly the faulty rows, and the metrics count them. With ``policy: fail`` validate stops naming each rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers

from messy_panel import CORRECTED_ROWS, FAULTS, expected_quarantine, write_messy_csv  # noqa: E402
from test_pipeline_e2e import MAIN_STAGES, SMALL, _merge, copy_repo, run  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MESSY = _merge(SMALL, {
    "ingest": {"source": "file", "path": "data/external/messy.csv", "start": None, "symbols": None,
               "repair": {"sort": True, "drop_exact_duplicates": True, "dedupe_keep": "last"}},
    "validate": {"policy": "quarantine"},
    # the first training window holds ~2 years of 3 symbols: enough rows for the tuned LightGBM to split
    "train": {"walk_forward": {"min_train_size": 700}},
})


def _workspace(repo_root: Path, target: Path, overrides: dict) -> Path:
    copy_repo(repo_root, target)
    write_messy_csv(target / "data/external/messy.csv")
    params = yaml.safe_load((target / "params.yaml").read_text())
    (target / "params.yaml").write_text(yaml.safe_dump(_merge(params, overrides)))
    return target


@pytest.fixture(scope="module")
def messy_repo(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(repo_root, tmp_path_factory.mktemp("messy_repo"), MESSY)


@pytest.fixture(scope="module")
def messy_repro(messy_repo: Path) -> subprocess.CompletedProcess:
    return run(["dvc", "repro", *MAIN_STAGES], messy_repo)


def test_the_messy_file_runs_to_promote_and_risk(messy_repo: Path, messy_repro: subprocess.CompletedProcess) -> None:
    assert messy_repro.returncode == 0, messy_repro.stdout[-3000:] + messy_repro.stderr[-3000:]
    for stage in ("ingest", "validate", "regimes", "features", "tune", "train", "stack", "evaluate", "drift",
                  "promote", "risk"):
        assert f"Running stage '{stage}'" in messy_repro.stdout
    decision = json.loads((messy_repo / "reports/promotion/decision.json").read_text())
    assert decision["status"] in {"promoted", "refused"}
    assert "data validation passed" in "\n".join(decision["decision"]["reasons"])


def test_repairs_are_counted_in_the_ingest_summary(messy_repo: Path, messy_repro: subprocess.CompletedProcess) -> None:
    repairs = json.loads((messy_repo / "reports/ingest/summary.json").read_text())["repairs"]
    assert repairs["drop_exact_duplicates"]["rows_dropped"] == 59
    assert repairs["dedupe_keep"]["rows_dropped"] == CORRECTED_ROWS
    assert repairs["sort"]["found"] == 1 and repairs["sort"]["rows_moved"] > 0
    assert "repair drop_exact_duplicates (allowed in ingest.repair) changed 59 row(s)" in messy_repro.stderr


def test_the_quarantine_holds_exactly_the_faulty_rows_and_the_metrics_count_them(
    messy_repo: Path, messy_repro: subprocess.CompletedProcess
) -> None:
    rows = pd.read_parquet(messy_repo / "data/quarantine/rows.parquet")
    found = {(None if pd.isna(r.symbol) else r.symbol, None if pd.isna(r.timestamp) else r.timestamp.strftime("%Y-%m-%d"),
              r.rules) for r in rows.itertuples()}
    assert found == expected_quarantine()
    summary = json.loads((messy_repo / "reports/validation/summary.json").read_text())
    assert summary["success"] is True and summary["policy"] == "quarantine"
    assert summary["quarantine"]["rows"] == len(rows) == len(FAULTS)
    assert summary["quarantine"]["by_rule"] == rows["rules"].value_counts().to_dict()
    by_symbol = rows["symbol"].fillna("<missing>").value_counts().to_dict()
    assert summary["quarantine"]["by_symbol"] == by_symbol
    assert summary["rows_validated"] == summary["rows"] - len(FAULTS)
    shown = run(["dvc", "metrics", "show", "--json"], messy_repo)
    assert shown.returncode == 0, shown.stderr
    flat = json.dumps(json.loads(shown.stdout))
    assert '"non_negative_volume[volume]": 2' in flat and '"<missing>": 1' in flat


def test_suspensions_split_series_and_listings_are_skipped_not_fatal(
    messy_repo: Path, messy_repro: subprocess.CompletedProcess
) -> None:
    validated = pd.read_parquet(messy_repo / "data/validated/bars.parquet")
    assert validated.groupby("symbol")["segment"].max().to_dict() == {"AAPL": 0, "FB": 0, "GOOG": 0, "IBM": 0, "MSFT": 1}
    dataset = pd.read_parquet(messy_repo / "data/features/dataset.parquet")
    msft = dataset[dataset["symbol"] == "MSFT"].set_index("timestamp")
    assert msft.loc[:"2005-12-31", "forward_return_1"].iloc[-1:].isna().all()  # no return across the suspension
    assert msft.loc["2008-07-01":, "volatility_20"].iloc[:5].isna().all()  # the indicators restart
    risk = json.loads((messy_repo / "reports/risk/metrics.json").read_text())
    assert {"GOOG", "FB"} <= set(risk["skipped"]) and risk["n_skipped"] == len(risk["skipped"])
    assert "risk: FB skipped" in messy_repro.stderr


def test_with_policy_fail_validate_names_each_rule(repo_root: Path, tmp_path: Path) -> None:
    strict = _workspace(repo_root, tmp_path / "strict", _merge(MESSY, {"validate": {"policy": "fail"}}))
    result = run(["dvc", "repro", "validate"], strict)
    assert result.returncode != 0
    for fault in FAULTS:
        rule, column = fault.rule.rstrip("]").split("[")
        assert f"rule {rule} column {column!r}" in result.stderr, (fault, result.stderr[-3000:])
    assert "validate.policy: quarantine" in result.stderr
    assert not (strict / "data/validated/bars.parquet").exists()
