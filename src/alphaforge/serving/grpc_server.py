"""The predictor over gRPC (``proto/alphaforge_serving.proto``), sharing the HTTP service's :class:`ModelHost`.

BentoML 1.4's new-style services refuse ``serve-grpc`` (bentoml/BentoML#5607), so the service starts
this grpcio server itself, in the same process, on ``serving.grpc_port``: the same loaded models, the
same handler (:func:`alphaforge.serving.api.predict_rows`) and therefore the same validation and the
same answers as HTTP. Bad input maps to ``INVALID_ARGUMENT`` (400), ``NOT_FOUND`` (404) or
``RESOURCE_EXHAUSTED`` (413); no model at all to ``UNAVAILABLE``.
"""

from __future__ import annotations

import json
import logging
from concurrent import futures
from typing import Any

import grpc
from pydantic import ValidationError

from alphaforge.serving import api
from alphaforge.serving.host import ModelFault, ModelHost, NoModel
from alphaforge.serving.model import BadRequest
from alphaforge.serving.proto import alphaforge_serving_pb2 as pb
from alphaforge.serving.proto import alphaforge_serving_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
           413: grpc.StatusCode.RESOURCE_EXHAUSTED}


def request_from_proto(message: pb.PredictRequest) -> api.PredictRequest:
    """The HTTP API's request model from a gRPC message (pydantic checks the same constraints)."""
    return api.PredictRequest(
        rows=[api.FeatureRow(symbol=row.symbol, timestamp=row.timestamp, features=dict(row.features))
              for row in message.rows],
        model=message.model or None, request_id=message.request_id or None, variant=message.variant or None,
    )


def response_to_proto(answer: dict) -> pb.PredictResponse:
    rows = []
    for row in answer["predictions"]:
        values = {k: row[k] for k in ("prediction", "lower", "upper") if row[k] is not None}
        rows.append(pb.RowPrediction(symbol=row["symbol"], timestamp=row["timestamp"], **values))
    regime = answer.get("regime")
    extra: dict[str, Any] = {} if regime is None else {"regime": pb.RegimeReport(
        timestamp=regime["timestamp"], regime=regime["regime"], probabilities=regime["probabilities"])}
    if answer.get("fallback_reason") is not None:
        extra["fallback_reason"] = answer["fallback_reason"]
    return pb.PredictResponse(model_name=answer["model_name"], model_version=answer["model_version"],
                              variant=answer["variant"], feature_version=answer["feature_version"],
                              target=answer["target"] or "", request_id=answer["request_id"], predictions=rows,
                              **extra)


class PredictorServicer(pb_grpc.PredictorServicer):
    """gRPC handlers over a shared :class:`ModelHost`."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        try:
            return response_to_proto(api.predict_rows(self.host, request_from_proto(request)))
        except ValidationError as err:
            self.host.count_bad_request()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{err.error_count()} validation error(s): "
                          + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
        except BadRequest as err:
            self.host.count_bad_request()
            context.abort(_STATUS.get(err.status, grpc.StatusCode.INVALID_ARGUMENT), str(err))
        except NoModel as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        except ModelFault as err:
            context.abort(grpc.StatusCode.INTERNAL, str(err))
        raise AssertionError("unreachable")  # context.abort raises

    def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfoResponse:
        return pb.ModelInfoResponse(json=json.dumps(self.host.info(), default=str))


def start_grpc_server(host: ModelHost, port: int, *, bind: str = "127.0.0.1", workers: int = 4) -> tuple[Any, int]:
    """Start the gRPC server on ``bind:port`` (0 picks a free port); the server and the port it listens on."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
    pb_grpc.add_PredictorServicer_to_server(PredictorServicer(host), server)
    bound = server.add_insecure_port(f"{bind}:{port}")
    if bound == 0:
        raise OSError(f"gRPC: cannot listen on {bind}:{port} (in use?); set serving.grpc_port or "
                      "ALPHAFORGE_GRPC_PORT")
    server.start()
    log.info("serving: gRPC on %s:%d", bind, bound)
    return server, bound


def grpc_predict(target: str, request: api.PredictRequest, timeout: float = 10.0) -> dict:
    """A client call (for tests and the benchmark): the HTTP request model in, the HTTP answer's data out."""
    message = pb.PredictRequest(
        rows=[pb.FeatureRow(symbol=r.symbol, timestamp=r.timestamp, features=r.features) for r in request.rows],
        model=request.model or "", request_id=request.request_id or "", variant=request.variant or "")
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.PredictorStub(channel).Predict(message, timeout=timeout)
    rows = [{"symbol": r.symbol, "timestamp": r.timestamp,
             **{k: (getattr(r, k) if r.HasField(k) else None) for k in ("prediction", "lower", "upper")}}
            for r in reply.predictions]
    answer = {"model_name": reply.model_name, "model_version": reply.model_version, "variant": reply.variant,
              "feature_version": reply.feature_version, "target": reply.target or None,
              "request_id": reply.request_id, "predictions": rows}
    if reply.HasField("fallback_reason"):
        answer["fallback_reason"] = reply.fallback_reason
    return answer
