"""The gRPC row stream writes its answers straight from a batch's arrays (``grpc_server.protos_of``): they must be
the messages the plain path makes (``batching.answers_of``, then ``response_to_proto``), whatever the prediction
holds: bounds or none, NaN where no prediction could be made, a fallback's reason. And the keys' checks that
remember parsed times (``model.check_keys``) answer a repeated time, and refuse a bad one, as the first time."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from alphaforge.serving.batching import Routed, answers_of
from alphaforge.serving.grpc_server import StreamRequest, protos_of, response_to_proto
from alphaforge.serving.model import BadRequest, Prediction, check_keys
from alphaforge.serving.proto import alphaforge_serving_pb2 as pb

MODEL = SimpleNamespace(regime_positions=[], feature_version="fv-1", spec={"target": "fwd_return_1"})


def _members(row_counts: list[int]) -> list[Routed]:
    members, n = [], 0
    for index, count in enumerate(row_counts):
        rows = [pb.FeatureRow(symbol=f"S{n + i}", timestamp=f"2024-01-0{1 + (n + i) % 9}T00:00:00+00:00",
                              features={"a": 1.0}) for i in range(count)]
        n += count
        request = StreamRequest(rows, None, f"id-{index}", None)
        members.append(Routed(index, request, f"id-{index}", [r.symbol for r in rows],
                              check_keys([r.symbol for r in rows], [r.timestamp for r in rows])))
    return members


@pytest.mark.parametrize("case", ["intervals", "no_bounds", "nan", "fallback"])
def test_the_stream_answers_equal_the_plain_path_answers(case: str) -> None:
    members = _members([1, 3, 1, 2])
    point = np.array([0.1, -0.2, 0.3, 0.0, 1e-9, 2.5, -7.0])
    lower, upper = point - 0.5, point + 0.5
    reason = None
    if case == "no_bounds":
        lower = upper = None
    elif case == "nan":
        point[2], lower[4], upper[6] = np.nan, np.nan, np.inf
    elif case == "fallback":
        reason = "m v2 (champion) raised ValueError: boom"
    prediction = Prediction(point, lower, upper, "m", "3", "fallback" if reason else "champion", reason)

    written = protos_of(prediction, MODEL, members)
    plain = [response_to_proto(answer) for answer in answers_of(prediction, MODEL, members)]

    assert [m.SerializeToString(deterministic=True) for m in written] == \
        [m.SerializeToString(deterministic=True) for m in plain]
    assert [len(m.predictions) for m in written] == [1, 3, 1, 2]
    if case == "nan":  # not a number is left unset, as None is in JSON
        assert not written[1].predictions[1].HasField("prediction")
        assert written[1].predictions[1].HasField("lower")
    if case == "no_bounds":
        assert not any(p.HasField("lower") or p.HasField("upper") for m in written for p in m.predictions)


def test_check_keys_answers_a_remembered_time_as_the_first_time_and_refuses_bad_ones_each_time() -> None:
    stamp = "2024-03-04T09:30:00-05:00"
    first = check_keys(["A"], [stamp])
    again = check_keys(["B"], [stamp])
    assert first == again == [datetime(2024, 3, 4, 14, 30, tzinfo=UTC)]
    for _ in range(2):
        with pytest.raises(BadRequest, match="has no time zone"):
            check_keys(["A"], ["2024-03-04T09:30:00"])
        with pytest.raises(BadRequest, match="not an ISO 8601 time"):
            check_keys(["A"], ["04/03/2024"])
    with pytest.raises(BadRequest, match="rows repeat"):
        check_keys(["A", "A"], [stamp, "2024-03-04T14:30:00Z"])  # the same bar written two ways
