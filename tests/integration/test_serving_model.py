"""The served model in process: the row path equals the pyfunc, row by row and in batches; input rules; A/B routing;
the regime a model with regime features computes from bars and reports."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from alphaforge.features import FeatureParams, compute_features
from alphaforge.pyfunc import to_model_input
from alphaforge.regimes import current_regime, market_returns
from alphaforge.serving import api
from alphaforge.serving.host import CHALLENGER, CHAMPION, ModelHost, Registry, ServingParams
from alphaforge.serving.model import BadRequest, check_keys, load_served_model
from ensemble_fixtures import stack_and_register, train_small_ensemble

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("served")
    (work / "trained").mkdir()
    trained = train_small_ensemble(work / "trained", seed=11)
    built = stack_and_register(trained, work / "stack", model_name=None)
    return {"trained": trained, "model_dir": Path(built["model_dir"])}


def test_row_path_equals_the_pyfunc_one_row_at_a_time_and_in_batches(packaged: dict) -> None:
    model = load_served_model(packaged["model_dir"], name="m", version="1")
    assert model.row_wise and model.load_seconds < 5
    dataset = packaged["trained"]["dataset"]
    frame = dataset.dropna(subset=model.features).groupby("symbol").tail(4)[["timestamp", "symbol", *model.features]]
    frame = frame.sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    expected = mlflow.pyfunc.load_model(str(packaged["model_dir"])).predict(to_model_input(frame, "1"))
    x = frame[model.features].to_numpy()
    batch = model.predict_matrix(x)
    singles = [model.predict_matrix(x[i:i + 1]) for i in range(len(x))]  # LightGBM's single-row fast API
    for k, column in enumerate(("prediction", "lower", "upper")):
        np.testing.assert_allclose(batch[k], expected[column].to_numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose([s[k][0] for s in singles], expected[column].to_numpy(), rtol=1e-9, atol=1e-12)


def test_tree_members_are_compiled_when_packaged_and_used_only_where_they_match(packaged: dict, tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    import json

    from alphaforge.models.compiled import MANIFEST

    model = load_served_model(packaged["model_dir"], name="m", version="1")
    assert model.info()["compiled_trees"] == ["lightgbm.base"]  # the conformal LightGBM's booster, compiled
    booster = model.ensemble.base_models["lightgbm"].model_.booster_
    code = model.compiled[("lightgbm", "base")]
    rows = np.random.default_rng(3).normal(size=(257, booster.num_feature()))
    rows[::7, 2] = np.nan  # missing values take each tree's default branch
    np.testing.assert_allclose(code(rows), booster.predict(rows, num_threads=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(code(rows[:1]), booster.predict(rows[:1], num_threads=1), rtol=1e-12, atol=1e-12)

    # Another machine's build (other triple) and a compiled file that is not this booster's are refused
    # with a log line; the model still loads and answers through LightGBM's own predictor.
    for damage in ("triple", "swapped"):
        copy = tmp_path / damage
        shutil.copytree(packaged["model_dir"], copy)
        folder = next(copy.rglob(MANIFEST)).parent
        manifest = json.loads((folder / MANIFEST).read_text())
        if damage == "triple":
            manifest["triple"] = "aarch64-unknown-linux-gnu"
            (folder / MANIFEST).write_text(json.dumps(manifest))
        else:  # a different forest's code under this booster's name
            import lleaves

            other = model.ensemble.base_models["lightgbm"].model_.booster_.model_to_string(num_iteration=3)
            (folder / "lightgbm.base.txt").write_text(other)
            (folder / "lightgbm.base.o").unlink()
            lleaves.Model(model_file=str(folder / "lightgbm.base.txt")).compile(
                cache=str(folder / "lightgbm.base.o"), finline=False)
        caplog.clear()
        fallback = load_served_model(copy, name="m", version="1")
        assert fallback.info()["compiled_trees"] == []
        assert "compiled trees" in caplog.text and ("aarch64" in caplog.text or "differ" in caplog.text)
        x = np.random.default_rng(4).normal(size=(5, len(model.features)))
        for got, want in zip(fallback.predict_matrix(x), model.predict_matrix(x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_request_log_writer_process_keeps_good_blocks_and_survives_its_death(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from alphaforge.monitor import RequestLog
    from alphaforge.serving.request_log_writer import RequestLogWriter

    def block(request_id: str, variant: str = "champion") -> dict:
        return {"request_id": request_id, "received_at": datetime.now(UTC), "model_name": "m", "model_version": "1",
                "variant": variant, "symbols": ["A", "B"], "timestamps_us": np.array([1_700_000_000_000_000] * 2)
                + np.arange(2), "feature_names": ["f1", "f2"], "features": np.array([[1.0, 2.0], [3.0, np.nan]]),
                "predictions": np.array([0.1, 0.2]), "latency_ms": 0.5}

    writer = RequestLogWriter(tmp_path, flush_seconds=0.2)
    first_child = writer._child
    for i in range(20):
        writer.put(block(f"r{i}"))
    writer.put(block("bad", variant="canary"))  # refused by the log's rules: only this block is lost
    deadline = time.monotonic() + 30
    while writer.written + writer.failed < 42 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (writer.written, writer.failed) == (40, 2)
    first_child.kill()
    first_child.wait()
    writer.put(block("after-death"))
    writer.close()
    assert (writer.written, writer.failed, writer.restarts) == (42, 2, 1)
    assert first_child.poll() is not None and writer._child is None  # no writer process left behind
    frame = RequestLog(tmp_path).read(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert sorted(set(frame["request_id"])) == sorted([f"r{i}" for i in range(20)] + ["after-death"])
    assert len(frame) == 42 and frame["f2"].isna().sum() == 21  # NaN features stay null


def test_a_micro_batch_is_logged_as_one_block_each_row_under_its_own_request(tmp_path: Path) -> None:
    """What the micro-batcher logs: one block for the requests predicted together, each row under its own request
    id; a request above the row limit is sampled on its own; a block whose ids do not match its rows is refused."""
    from datetime import UTC, datetime

    from alphaforge.monitor import RequestLog
    from alphaforge.schema import DataError
    from alphaforge.serving.request_log_writer import RequestLogWriter

    stamp = datetime(2024, 1, 2, tzinfo=UTC)
    writer = RequestLogWriter(tmp_path, flush_seconds=0.2)
    writer.log_requests(["a", "b", "c"], [1, 2, 1], "m", "1", ["f1", "f2"], "champion", np.arange(8.0).reshape(4, 2),
                        ["A", "B", "C", "D"], [stamp] * 4, np.array([0.1, 0.2, 0.3, 0.4]), 0.25, max_rows=3)
    writer.log_requests(["small", "big"], [1, 5], "m", "1", ["f1", "f2"], "champion", np.ones((6, 2)),
                        ["A", *"VWXYZ"], [stamp] * 6, np.zeros(6), 0.5, max_rows=3)
    deadline = time.monotonic() + 30
    while writer.written < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    # a retried request (same id, symbol and bar: the log's key) in a batch costs its own row only
    writer.log_requests(["b", "d"], [1, 1], "m", "1", ["f1", "f2"], "champion", np.ones((2, 2)), ["B", "E"],
                        [stamp] * 2, np.zeros(2), 0.5, max_rows=3)
    writer.close()
    assert (writer.written, writer.failed) == (9, 1)
    frame = RequestLog(tmp_path).read(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    rows = sorted(zip(frame["request_id"], frame["symbol"], strict=True))
    assert rows == [("a", "A"), ("b", "B"), ("b", "C"), ("big", "V"), ("big", "X"), ("big", "Z"), ("c", "D"),
                    ("d", "E"), ("small", "A")]
    assert frame.set_index("symbol").loc["C", "f2"] == 5.0 and set(frame["latency_ms"]) == {0.25, 0.5}
    with pytest.raises(DataError, match="2 request ids"):
        RequestLog(tmp_path).append_block(
            request_id=["x", "y"], received_at=stamp, model_name="m", model_version="1", variant="champion",
            symbols=["A"], timestamps_us=np.array([1]), feature_names=["f1"], features=np.ones((1, 1)),
            predictions=np.zeros(1), latency_ms=0.1)


def test_input_rules_name_row_feature_and_rule(packaged: dict) -> None:
    model = load_served_model(packaged["model_dir"], name="m", version="1")
    row = dict.fromkeys(model.features, 0.1)
    assert model.matrix_from_records([row], max_rows=10).shape == (1, len(model.features))
    with pytest.raises(BadRequest, match=r"row 1, feature 'rsi': nan is not a finite number"):
        model.matrix_from_records([row, {**row, "rsi": float("nan")}], max_rows=10)
    with pytest.raises(BadRequest, match=r"row 0, feature 'rsi': '1' is not a number"):
        model.matrix_from_records([{**row, "rsi": "1"}], max_rows=10)
    with pytest.raises(BadRequest, match=r"row 0, feature 'rsi': True is not a number"):
        model.matrix_from_records([{**row, "rsi": True}], max_rows=10)
    with pytest.raises(BadRequest, match=r"limit is 10") as too_many:
        model.matrix_from_records([row] * 11, max_rows=10)
    assert too_many.value.status == 413
    with pytest.raises(BadRequest, match="no time zone"):
        check_keys(["A"], ["2020-01-01T00:00:00"])
    with pytest.raises(BadRequest, match="repeat"):
        check_keys(["A", "A"], ["2020-01-01T00:00:00Z", "2020-01-01T00:00:00+00:00"])


def test_ab_routing_is_stable_per_request_and_near_the_configured_share() -> None:
    host = ModelHost(ServingParams(challenger_share=0.25, request_log=False))
    variants = [host.choose_variant(f"request-{i}", None) for i in range(4000)]
    share = variants.count(CHALLENGER) / len(variants)
    assert 0.22 < share < 0.28
    assert [host.choose_variant(f"request-{i}", None) for i in range(50)] == variants[:50]
    assert ModelHost(ServingParams(request_log=False)).choose_variant("x", None) == CHAMPION
    host.close()


def test_an_ensemble_with_a_sequence_member_serves_through_the_panel_path(tmp_path: Path) -> None:
    """An LSTM member needs each symbol's history: the service's panel path answers the last bar of a window of
    rows like the pyfunc does on the whole history, and a window too short for the lookback is a clear 400."""
    import pandas as pd

    from alphaforge.serving import api

    (tmp_path / "trained").mkdir()
    lookback = 6
    trained = train_small_ensemble(tmp_path / "trained", seed=13, n_symbols=6, n_bars=420, families={
        "ridge": {"alpha": 10.0},
        "lstm": {"lookback": lookback, "hidden_size": 8, "num_layers": 1, "batch_size": 128, "max_epochs": 1}})
    built = stack_and_register(trained, tmp_path / "stack", model_name=None)
    model = load_served_model(built["model_dir"], name="m", version="1")
    assert not model.row_wise and model.lookback == lookback and model.info()["compiled_trees"] == []

    dataset = trained["dataset"]
    complete = dataset.dropna(subset=model.features).sort_values(["symbol", "timestamp"])
    history = complete.groupby("symbol").tail(40)[["timestamp", "symbol", *model.features]].reset_index(drop=True)
    expected = mlflow.pyfunc.load_model(str(built["model_dir"])).predict(to_model_input(history, "1"))
    expected = expected.assign(timestamp=pd.to_datetime(expected["timestamp"], utc=True))
    window = history.groupby("symbol").tail(lookback)  # exactly one lookback per symbol: the last bar answers
    rows = [{"symbol": r["symbol"], "timestamp": r["timestamp"].isoformat(),
             "features": {f: float(r[f]) for f in model.features}} for r in window.to_dict("records")]

    host = ModelHost(ServingParams(request_log=False, grpc_port=0))
    host.model = lambda name=None: model  # type: ignore[method-assign]  # the registry is tested in test_serving
    answer = api.predict_rows(host, api.PredictRequest(rows=rows))
    got = pd.DataFrame(answer["predictions"])
    got["timestamp"] = pd.to_datetime(got["timestamp"], utc=True)
    last = got.dropna(subset=["prediction"])
    assert len(last) == window["symbol"].nunique()  # one prediction per symbol: its window's last bar
    merged = last.merge(expected, on=["symbol", "timestamp"], suffixes=("", "_pyfunc"))
    assert len(merged) == len(last)
    np.testing.assert_allclose(merged["prediction"], merged["prediction_pyfunc"], rtol=1e-5, atol=1e-7)

    # the service's array panel path (no pandas) = the ensemble's frame path, rows in any order, intervals too
    assert model._panel_functions is not None
    shuffled = history.sample(frac=1.0, random_state=0)
    fast = model.predict_panel_matrix(shuffled[model.features].to_numpy(), shuffled["symbol"].tolist(),
                                      pd.DatetimeIndex(shuffled["timestamp"]))
    slow = model.predict_panel(shuffled)
    assert fast[1] is not None and np.isfinite(fast[0]).sum() == len(history) - 5 * history["symbol"].nunique()
    for got, want in zip(fast, slow, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


# ------------------------------------------------------------------------------------------ regimes


class LocalRegistry(Registry):
    """One registered version, ``champion``, served from a local model folder (no MLflow)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def aliases(self, name: str) -> dict[str, str]:
        return {CHAMPION: "1"}

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return {}

    def download(self, name: str, version: str, destination: Path) -> Path:
        return Path(shutil.copytree(self.model_dir, destination / "model"))


@pytest.fixture(scope="module")
def regime_host(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("served-regimes")
    (work / "trained").mkdir()
    trained = train_small_ensemble(work / "trained", seed=13, regimes=True)
    built = stack_and_register(trained, work / "stack", model_name=None)
    host = ModelHost(ServingParams(model_name="m", request_log=False, cache_dir=str(work / "cache")),
                     registry=LocalRegistry(Path(built["model_dir"])))
    yield {"trained": trained, "host": host}
    host.close()


def bar_records(bars: pd.DataFrame) -> list[api.Bar]:
    frame = bars.assign(timestamp=bars["timestamp"].map(lambda t: t.isoformat()))
    return [api.Bar(**record) for record in frame.to_dict(orient="records")]


def test_served_model_computes_and_reports_the_regime_from_its_own_regime_model(regime_host: dict) -> None:
    trained, host = regime_host["trained"], regime_host["host"]
    bars, regime_model = trained["bars"], trained["regime_model"]
    model = host.model()
    assert model.regime_columns == ["regime_prob_0", "regime_prob_1"]
    assert model.features[-2:] == model.regime_columns  # the probabilities are model inputs
    assert model.regime_model.to_json() == regime_model.to_json()  # from the spec, not the repository
    info = model.info()["regimes"]
    assert info["n_regimes"] == 2 and info["method"] == "hmm" and info["last"] is None
    assert info["fit_end"] == str(regime_model.train_end_)

    recent = bars[bars["timestamp"] >= sorted(bars["timestamp"].unique())[-150]]
    answer = api.predict_bars(host, api.PredictBarsRequest(bars=bar_records(recent)), FeatureParams())
    expected = current_regime(regime_model, market_returns(recent))  # the filter starts at the first bar sent
    assert answer["regime"]["regime"] == expected["regime"]
    np.testing.assert_allclose(answer["regime"]["probabilities"], expected["probabilities"], rtol=0, atol=1e-12)
    assert pd.Timestamp(answer["regime"]["timestamp"]) == pd.Timestamp(expected["timestamp"])
    api.PredictResponse.model_validate(answer)  # the documented schema
    assert model.info()["regimes"]["last"] == {**answer["regime"], "route": "predict_bars"}
    # the predictions used those probabilities: the same rows through /predict give the same predictions
    features = compute_features(recent.reset_index(drop=True), FeatureParams(), regime_model=regime_model)
    last = features.groupby("symbol").tail(1)
    rows = [api.FeatureRow(symbol=r["symbol"], timestamp=r["timestamp"].isoformat(),
                           features={f: float(r[f]) for f in model.features}) for r in last.to_dict("records")]
    by_rows = api.predict_rows(host, api.PredictRequest(rows=rows))
    assert [p["prediction"] for p in by_rows["predictions"]] == pytest.approx(
        [p["prediction"] for p in answer["predictions"]], rel=1e-12)
    assert by_rows["regime"] == answer["regime"]  # /predict reads the regime from its inputs

    # gRPC gives the same answer, regime included (the servicer's own conversion of the same handler's answer)
    from alphaforge.serving.grpc_server import PredictorServicer, request_from_proto
    from alphaforge.serving.proto import alphaforge_serving_pb2 as pb

    message = pb.PredictRequest(rows=[pb.FeatureRow(symbol=r.symbol, timestamp=r.timestamp, features=r.features)
                                      for r in rows])
    assert request_from_proto(message).rows == rows
    reply = PredictorServicer(host).Predict(message, context=None)  # type: ignore[arg-type]
    assert reply.HasField("regime") and reply.regime.regime == answer["regime"]["regime"]
    assert list(reply.regime.probabilities) == by_rows["regime"]["probabilities"]
    assert reply.regime.timestamp == by_rows["regime"]["timestamp"]
    assert [p.prediction for p in reply.predictions] == [p["prediction"] for p in by_rows["predictions"]]

    one = api.predict_rows(host, api.PredictRequest(rows=rows[:1]))
    assert one["regime"]["regime"] == int(np.argmax([rows[0].features[c] for c in model.regime_columns]))


def test_regime_features_cannot_come_from_too_short_a_history(regime_host: dict) -> None:
    trained, host = regime_host["trained"], regime_host["host"]
    bars = trained["bars"]
    short = bars[bars["timestamp"] >= sorted(bars["timestamp"].unique())[-15]]  # < the volatility window
    with pytest.raises(BadRequest, match="no bar has every feature yet"):
        api.predict_bars(host, api.PredictBarsRequest(bars=bar_records(short)), FeatureParams())
    assert api.min_history_bars(host.model()) >= 22


def test_predict_symbols_reads_regime_features_the_streamer_computed_incrementally(
    regime_host: dict, tmp_path: Path,
) -> None:
    """`alphaforge stream` with the model's regime model stores what batch computes; the answer reports the regime."""
    import uuid

    from alphaforge.featurestore.config import FeatureStoreParams
    from alphaforge.featurestore.online import OnlineStore
    from alphaforge.featurestore.stream import run_stream

    trained, host = regime_host["trained"], regime_host["host"]
    bars, dataset = trained["bars"], trained["dataset"]
    model = host.model()
    source = tmp_path / "bars.csv"
    bars.assign(timestamp=bars["timestamp"].map(lambda t: t.isoformat())).to_csv(source, index=False)
    store_params = FeatureStoreParams(redis_url="redis://127.0.0.1:6379/0", bar_log=tmp_path / "log.sqlite",
                                      key_prefix=f"alphaforge-test:{uuid.uuid4().hex[:12]}:")
    store = OnlineStore.from_params(store_params)
    symbols = sorted(bars["symbol"].unique())
    try:
        without = run_stream(FeatureParams(), store_params.model_copy(update={"bar_log": tmp_path / "plain.sqlite"}),
                             str(source))
        assert without.bars == len(bars)
        with pytest.raises(BadRequest, match=r"lack feature\(s\) \['regime_prob_0', 'regime_prob_1'\].*regime model"):
            api.predict_symbols(host, api.SymbolsRequest(symbols=symbols), store)
        store.clear()
        run_stream(FeatureParams(), store_params, str(source), regime_model=trained["regime_model"])
        answer = api.predict_symbols(host, api.SymbolsRequest(symbols=symbols), store)

        # probabilities another regime model filtered (same columns, same feature version) are refused by name
        from alphaforge.regimes import RegimeModel

        payload = trained["regime_model"].to_json()
        other = RegimeModel.from_json({**payload, "center": [c + 0.01 for c in payload["center"]]})
        store.clear()
        run_stream(FeatureParams(), store_params.model_copy(update={"bar_log": tmp_path / "other.sqlite"}),
                   str(source), regime_model=other)
        with pytest.raises(BadRequest, match=r"another regime model.*--regime-model"):
            api.predict_symbols(host, api.SymbolsRequest(symbols=symbols), store)
    finally:
        store.clear()
    last = dataset.groupby("symbol").tail(1).set_index("symbol").loc[symbols]
    expected = regime_report_of(last, model.regime_columns)
    assert answer["regime"]["regime"] == expected["regime"]
    np.testing.assert_allclose(answer["regime"]["probabilities"], expected["probabilities"], rtol=1e-9, atol=1e-9)
    predicted = model.predict_matrix(last[model.features].to_numpy())[0]
    np.testing.assert_allclose([p["prediction"] for p in answer["predictions"]], predicted, rtol=1e-9, atol=1e-9)
    assert model.info()["regimes"]["last"] == {**answer["regime"], "route": "predict_symbols"}


def regime_report_of(rows: pd.DataFrame, columns: list[str]) -> dict:
    probabilities = rows[columns].iloc[-1].to_numpy()
    return {"regime": int(np.argmax(probabilities)), "probabilities": probabilities.tolist()}


def test_bars_sent_to_the_service_restart_at_a_suspension_as_in_training() -> None:
    """The service splits a request's bars where validate split the training data (the rule the model's spec
    records), so a suspended symbol's features restart there instead of spanning the gap."""
    from messy_panel import SUSPENSION, clean_panel

    from alphaforge.features import FeatureParams, compute_features
    from alphaforge.serving.api import _split_at_suspensions

    bars = clean_panel()
    bars = bars[(bars["symbol"] == "MSFT") & (bars["timestamp"] >= pd.Timestamp("2005-01-01", tz="UTC"))]
    bars = bars[bars["timestamp"] < pd.Timestamp("2009-06-01", tz="UTC")].reset_index(drop=True)
    split = _split_at_suspensions(bars, {"max_gap_bars": 10, "max_closure_days": 30.0})
    back = (bars["timestamp"] > SUSPENSION[1]).to_numpy()
    assert (split.loc[~back, "symbol"] == "MSFT").all() and (split.loc[back, "symbol"] != "MSFT").all()
    features = compute_features(split, FeatureParams(regimes=False))
    assert np.isnan(features.loc[np.flatnonzero(back)[0], "log_return_1"])
    kept = _split_at_suspensions(bars, {"max_gap_bars": 10_000, "max_closure_days": 10_000.0})
    assert (kept["symbol"] == "MSFT").all()
