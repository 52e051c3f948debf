"""The served model in process: the row path equals the pyfunc, row by row and in batches; input rules; A/B routing."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from alphaforge.pyfunc import to_model_input
from alphaforge.serving.host import CHALLENGER, CHAMPION, ModelHost, ServingParams
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
