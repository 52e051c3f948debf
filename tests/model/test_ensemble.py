"""Ensembles: stacking only on out-of-fold predictions, voting, the online Hedge, and the deployable pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphaforge.ensemble import (
    EnsembleParams,
    HedgeEnsemble,
    PanelEnsemble,
    StackingEnsemble,
    VotingEnsemble,
    check_out_of_fold,
    combiner_from_dict,
    fit_stack,
    fold_spans_from_metrics,
    walk_forward_meta_evaluation,
)
from alphaforge.io import write_parquet_atomic
from alphaforge.models.importance import rank_ic
from alphaforge.schema import DataError
from alphaforge.splits import WalkForwardParams
from ensemble_fixtures import FAMILIES, HORIZON, train_small_ensemble

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the train stage leaves behind, on a small synthetic market: OOF frame, metrics, spec, models."""
    return train_small_ensemble(tmp_path_factory.mktemp("trained"))


def test_stacking_refuses_a_planted_leak(trained: dict) -> None:
    """In-sample base predictions slipped into the OOF frame are caught, naming family, fold and row."""
    oof, spans = trained["oof"], fold_spans_from_metrics(trained["metrics"])
    calendar = trained["dataset"]["timestamp"].unique()
    assert check_out_of_fold(oof, spans, calendar=calendar, purge=HORIZON) == {
        f: int(oof[f"prediction_{f}"].notna().sum()) for f in FAMILIES}

    # the leak: fold 2's ridge model predicting the last 10 timestamps it trained on, filed as fold-2 rows
    dataset, fold2 = trained["dataset"], trained["splitter"].split(trained["dataset"]["timestamp"])[2]
    model = trained["results"]["ridge"].models[2]
    last_train = np.sort(dataset["timestamp"].iloc[fold2.train_rows].unique())[-10:]
    mask = dataset["timestamp"].isin(last_train).to_numpy()
    leaked_rows = dataset.loc[mask, ["timestamp", "symbol", "forward_return"]].assign(
        fold=2, prediction_ridge=model.predict(dataset, predict_mask=mask), prediction_lightgbm=np.nan)
    leaked = pd.concat([oof, leaked_rows], ignore_index=True)
    first_leak = len(oof)
    with pytest.raises(DataError, match=rf"'ridge' fold 2: row {first_leak} .*inside that fold model's training span"):
        check_out_of_fold(leaked, spans, calendar=calendar, purge=HORIZON)
    # the stage entry point runs the check before fitting anything
    with pytest.raises(DataError, match="inside that fold model's training span"):
        fit_stack(leaked, trained["metrics"], calendar=calendar, spec=trained["spec"], params=EnsembleParams())

    # a prediction 2 bars after the training span ends: its label overlaps the training labels (purge 5)
    after = np.sort(dataset["timestamp"].unique())
    near = after[np.searchsorted(after, fold2.train_end) + 2]
    purged = oof.iloc[:1].assign(timestamp=near, fold=2)
    with pytest.raises(DataError, match=r"'ridge' fold 2: .*2 bar\(s\) after .*within the purge of 5 bars"):
        check_out_of_fold(pd.concat([oof, purged], ignore_index=True), spans, calendar=calendar, purge=HORIZON)

    # an in-sample row has no fold id at all
    in_sample = oof.copy()
    in_sample["fold"] = in_sample["fold"].astype(float)
    in_sample.loc[7, "fold"] = np.nan
    with pytest.raises(DataError, match=r"row 7 .*no fold id: an in-sample prediction"):
        check_out_of_fold(in_sample, spans, calendar=calendar, purge=HORIZON)


def test_stack_weights_and_its_own_walk_forward(trained: dict) -> None:
    """The non-negative stack ignores useless and harmful families, and is judged only on later OOF rows."""
    rng = np.random.default_rng(0)
    oof = trained["oof"].copy()
    spread = 3 * oof["prediction_ridge"].std()
    oof["prediction_noise"] = rng.normal(0.0, spread, len(oof))
    # a family with negative skill: an unconstrained fit would short it, the stack gives it nothing
    oof["prediction_wrong"] = -0.1 * oof["forward_return"].fillna(0.0) + rng.normal(0.0, spread, len(oof))
    families = ["ridge", "lightgbm", "noise", "wrong"]
    stack = StackingEnsemble(families).fit(oof, oof["forward_return"])
    x = oof[[f"prediction_{f}" for f in families]].to_numpy()
    known = np.isfinite(x).all(axis=1) & oof["forward_return"].notna().to_numpy()
    least_squares = np.linalg.lstsq(np.c_[np.ones(known.sum()), x[known]], oof.loc[known, "forward_return"],
                                    rcond=None)[0]
    assert least_squares[4] < -0.05 and stack.weights_["wrong"] == 0.0, (least_squares, stack.weights_)
    assert stack.weights_["noise"] < 0.2 * min(stack.weights_["ridge"], stack.weights_["lightgbm"]), stack.weights_

    wf = WalkForwardParams(n_splits=3, min_train_size=60, embargo=0)
    evaluation = walk_forward_meta_evaluation(oof, families, "forward_return", walk_forward=wf, purge=HORIZON,
                                              make=lambda: StackingEnsemble(families))
    stamps = np.sort(oof["timestamp"].unique())
    for report in evaluation.folds:
        train_end = np.searchsorted(stamps, pd.Timestamp(report["train_end"]))
        test_start = np.searchsorted(stamps, pd.Timestamp(report["test_start"]))
        assert test_start - train_end > HORIZON, report
    meta = evaluation.oof
    assert set(meta["fold"]) == {0, 1, 2} and "base_fold" in meta and not meta.duplicated(["timestamp", "symbol"]).any()
    summary = evaluation.summary()
    scores = summary["rank_ic"]
    assert scores["ensemble"] > 0.03, scores
    assert scores["ensemble"] > max(scores["noise"], scores["wrong"]) + 0.03
    assert scores["ensemble"] >= min(scores["ridge"], scores["lightgbm"]) - 0.01, scores


def test_voting_weights_and_meta_learners_round_trip(trained: dict) -> None:
    """Voting weighs by OOF rank IC; every combiner predicts identically after a JSON round trip."""
    rng = np.random.default_rng(1)
    oof = trained["oof"].copy()
    oof["prediction_contrarian"] = -oof["prediction_ridge"] + rng.normal(0, 1e-4, len(oof))
    families = ["ridge", "lightgbm", "contrarian"]
    voting = VotingEnsemble(families).fit(oof, oof["forward_return"])
    assert voting.weights_["contrarian"] == 0.0 and voting.rank_ic_["contrarian"] < 0
    assert voting.weights_["ridge"] > 0 and abs(sum(voting.weights_.values()) - 1) < 1e-12
    flipped = VotingEnsemble(["ridge"]).fit(oof.assign(forward_return=-oof["forward_return"]), -oof["forward_return"])
    assert flipped.weights_ == {"ridge": 1.0}  # no positive rank IC: equal weights
    lgbm = StackingEnsemble(families, meta_learner="lightgbm", lightgbm_params={"n_estimators": 30,
                                                                                "min_child_samples": 50})
    lgbm.fit(oof, oof["forward_return"])
    for combiner in (voting, lgbm, StackingEnsemble(families).fit(oof, oof["forward_return"])):
        reloaded = combiner_from_dict(json.loads(json.dumps(combiner.to_dict())))
        np.testing.assert_array_equal(reloaded.predict(oof), combiner.predict(oof))
        own = rank_ic(combiner.predict(oof), oof["forward_return"].to_numpy(), oof["timestamp"].to_numpy())
        assert own > 0.03, (combiner.kind, own)


def _hedge_stream(rng: np.random.Generator, n_steps: int, n_symbols: int = 20):
    """A market where family 'good' sees the outcome through noise and the others guess."""
    for step in range(n_steps):
        realised = rng.normal(0.0, 0.02, n_symbols)
        predictions = {
            "good": realised + rng.normal(0.0, 0.02, n_symbols),
            "noise_a": rng.normal(0.0, 0.02, n_symbols),
            "noise_b": rng.normal(0.0, 0.02, n_symbols),
        }
        yield pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(days=step), predictions, realised


def test_hedge_concentrates_and_its_regret_is_sublinear() -> None:
    hedge = HedgeEnsemble(["good", "noise_a", "noise_b"])
    regret_per_step = {}
    for step, (stamp, predictions, realised) in enumerate(_hedge_stream(np.random.default_rng(2), 2000), start=1):
        hedge.update(predictions, realised, timestamp=stamp)
        if step in (200, 2000):
            regret_per_step[step] = hedge.regret() / step
            assert hedge.regret() <= hedge.regret_bound()
    assert hedge.weights()["good"] > 0.99, hedge.weights()
    assert hedge.report()["best_family"] == "good"
    assert regret_per_step[2000] < regret_per_step[200] / 3 and regret_per_step[2000] < 0.01, regret_per_step


def test_hedge_state_survives_a_restart(tmp_path: Path) -> None:
    stream = list(_hedge_stream(np.random.default_rng(3), 400))
    running = HedgeEnsemble(["good", "noise_a", "noise_b"], loss="squared", loss_scale=0.05)
    for stamp, predictions, realised in stream[:150]:
        running.update(predictions, realised, timestamp=stamp)
    running.save(tmp_path / "state.json")
    restarted = HedgeEnsemble.resume(tmp_path / "state.json", seed_path=tmp_path / "absent.json")
    with pytest.raises(ValueError, match="not after the last update"):
        restarted.update(stream[149][1], stream[149][2], timestamp=stream[149][0])  # already applied
    for stamp, predictions, realised in stream[150:]:
        running.update(predictions, realised, timestamp=stamp)
        restarted.update(predictions, realised, timestamp=stamp)
    assert restarted.to_dict() == running.to_dict()
    assert restarted.weights() == running.weights() and restarted.regret() == running.regret()


def test_pyfunc_from_registry_alias_predicts_like_the_in_memory_ensemble(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stack stage logs one pyfunc; loaded from models:/NAME@champion it predicts as the in-memory ensemble."""
    import mlflow

    from alphaforge import tracking
    from alphaforge.paths import Paths
    from alphaforge.pyfunc import to_model_input
    from alphaforge.stages.stack import run_stack

    monkeypatch.setenv("ALPHAFORGE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    paths = Paths(tmp_path, trained_dir=trained["trained_dir"])
    write_parquet_atomic(trained["oof"], paths.oof)
    write_parquet_atomic(trained["dataset"], paths.dataset)
    for folder in (paths.train_metrics.parent, paths.run_reference.parent):
        folder.mkdir(parents=True, exist_ok=True)
    paths.train_metrics.write_text(json.dumps(trained["metrics"]))
    with tracking.start_run("ensemble-test", run_name="train") as run:
        run_id = run.run_id
    paths.run_reference.write_text(json.dumps({"run_id": run_id, "experiment": "ensemble-test"}))
    params = EnsembleParams(registered_model_name="ensemble-test",
                            meta_walk_forward=WalkForwardParams(n_splits=2, min_train_size=60, embargo=0))

    report = run_stack(params, experiment="ensemble-test", paths=paths)

    assert json.loads(paths.stack_metrics.read_text())["mlflow"]["registered_model_version"] == "1"
    assert report["hedge"]["n_updates"] > 0 and report["hedge"]["regret"] <= report["hedge"]["regret_bound"]
    assert pd.read_parquet(paths.stack_oof)["prediction_ensemble"].notna().mean() > 0.95
    tracking.set_model_alias("ensemble-test", "champion", report["mlflow"]["registered_model_version"])
    mlflow.set_tracking_uri(tracking.tracking_uri())
    loaded = mlflow.pyfunc.load_model("models:/ensemble-test@champion")
    requirements = Path(mlflow.artifacts.download_artifacts("models:/ensemble-test@champion")) / "requirements.txt"
    assert any(line.startswith("torch==") and "+cpu" in line for line in requirements.read_text().splitlines())

    # the in-memory ensemble: the final models as trained, the combiner as fitted, no file in between
    stack = StackingEnsemble(list(FAMILIES)).fit(trained["oof"], trained["oof"]["forward_return"])
    in_memory = PanelEnsemble({f: r.final_model for f, r in trained["results"].items()}, stack, trained["spec"])
    dataset = trained["dataset"]
    frame = dataset[dataset["symbol"].isin(sorted(dataset["symbol"].unique())[:4])]
    frame = frame.groupby("symbol").tail(40)[["timestamp", "symbol", *trained["spec"]["features"]]]
    expected = in_memory.predict(frame)
    served = loaded.predict(to_model_input(frame, "1"))
    for column in ("prediction", "lower", "upper", "prediction_ridge", "prediction_lightgbm"):
        np.testing.assert_allclose(served[column].to_numpy(), expected[column].to_numpy(), rtol=0, atol=1e-12)
    assert expected["prediction"].notna().all()
    assert (expected["lower"] <= expected["prediction"]).all() and (expected["prediction"] <= expected["upper"]).all()

    with pytest.raises(DataError, match="feature version '1'"):
        loaded.predict(to_model_input(frame, "0"))
    with pytest.raises(Exception, match="ema_ratio_5"):
        loaded.predict(to_model_input(frame.drop(columns=["ema_ratio_5"]), "1"))
    with pytest.raises(DataError, match=r"missing feature column\(s\) \['ema_ratio_5'\]"):
        in_memory.predict(frame.drop(columns=["ema_ratio_5"]))
