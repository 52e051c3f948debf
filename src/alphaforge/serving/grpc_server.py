"""The predictor over gRPC (``proto/alphaforge_serving.proto``), sharing the HTTP service's :class:`ModelHost`.

BentoML 1.4's new-style services refuse ``serve-grpc`` (bentoml/BentoML#5607), so the service starts
this grpcio server itself, in the same process, on ``serving.grpc_port``: the same loaded models, the
same handler (:func:`alphaforge.serving.api.predict_rows`) and therefore the same validation and the
same answers as HTTP. Bad input maps to ``INVALID_ARGUMENT`` (400), ``NOT_FOUND`` (404) or
``RESOURCE_EXHAUSTED`` (413); no model at all to ``UNAVAILABLE``.

``PredictStream`` is the row stream: a bidirectional stream of ``PredictRequest`` messages (usually one row
each) answered in order, one ``PredictResponse`` per message. A reader thread drains the client's messages into
an inbox; the handler takes whatever waits there (up to ``serving.batching.max_batch_size`` messages, one
when batching is off), answers it with one model call (:func:`alphaforge.serving.batching.predict_requests`)
and sends those answers in one ``PredictAnswers`` message: in a Python gRPC stream each send costs a round of
thread hand-offs, more than predicting the row.
A message that cannot be answered gets an answer carrying ``error`` and the HTTP ``status`` of the same
request over ``/v1/predict``, and the stream goes on.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from pydantic import ValidationError

from alphaforge.serving import api
from alphaforge.serving.batching import predict_requests
from alphaforge.serving.host import BatchingParams, ModelFault, ModelHost, NoModel
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


_VARIANTS = ("", "champion", "challenger")


def stream_request_from_proto(message: pb.PredictRequest) -> api.PredictRequest:
    """A stream message as the HTTP request model without pydantic's pass (the row stream's hot path): protobuf
    has typed every field already (features are doubles), and what is left of the model's rules is checked here
    (request id length, variant) or downstream, as for every request (non-empty symbol and time-zone-aware
    timestamp by ``check_keys``, feature names and finite values by ``matrix_from_records``), so a bad message
    is refused with the same kind of message as over HTTP."""
    if len(message.request_id) > 128:
        raise BadRequest(f"request_id: {len(message.request_id)} characters; the limit is 128")
    if message.variant not in _VARIANTS:
        raise BadRequest(f"variant: {message.variant!r}; rule: champion, challenger or empty (A/B routing)")
    rows = [api.FeatureRow.model_construct(symbol=row.symbol, timestamp=row.timestamp, features=dict(row.features))
            for row in message.rows]
    return api.PredictRequest.model_construct(rows=rows, model=message.model or None,
                                              request_id=message.request_id or None,
                                              variant=message.variant or None)


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


def _validation_message(err: ValidationError) -> str:
    return f"{err.error_count()} validation error(s): " + "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def _error_status(err: Exception) -> int:
    if isinstance(err, BadRequest):
        return err.status
    return 503 if isinstance(err, NoModel) else 500


_END = object()  # the client's half of the stream is closed (or broke)


class PredictorServicer(pb_grpc.PredictorServicer):
    """gRPC handlers over a shared :class:`ModelHost`."""

    def __init__(self, host: ModelHost, batching: BatchingParams | None = None) -> None:
        self.host = host
        self.batching = batching or BatchingParams()

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        try:
            return response_to_proto(api.predict_rows(self.host, request_from_proto(request)))
        except ValidationError as err:
            self.host.count_bad_request()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _validation_message(err))
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

    def PredictStream(self, request_iterator: Iterator[pb.PredictRequest], context: grpc.ServicerContext
                      ) -> Iterator[pb.PredictAnswers]:
        """One answer per message, in order; what waits in the inbox is predicted together (module docstring)."""
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def read() -> None:
            try:
                for message in request_iterator:
                    inbox.put(message)
            except Exception as err:  # the client cancelled or the connection broke: nobody is left to answer
                log.info("serving: a gRPC row stream ended early: %s", err)
            finally:
                inbox.put(_END)

        threading.Thread(target=read, name="grpc-stream-reader", daemon=True).start()
        limit = self.batching.max_batch_size if self.batching.enabled else 1
        while True:
            message = inbox.get()
            if message is _END:
                return
            batch, ended = [message], False
            while len(batch) < limit:
                try:
                    message = inbox.get_nowait()
                except queue.Empty:
                    break
                if message is _END:
                    ended = True
                    break
                batch.append(message)
            yield pb.PredictAnswers(answers=self._answer_messages(batch))
            if ended:
                return

    def _answer_messages(self, messages: list[pb.PredictRequest]) -> list[pb.PredictResponse]:
        answers: list[dict[str, Any] | Exception | None] = [None] * len(messages)
        valid: list[tuple[int, api.PredictRequest]] = []
        for index, message in enumerate(messages):
            try:
                valid.append((index, stream_request_from_proto(message)))
            except BadRequest as err:
                answers[index] = err
        for (index, _), answer in zip(valid, predict_requests(self.host, [r for _, r in valid]), strict=True):
            answers[index] = answer
        replies = []
        for message, answer in zip(messages, answers, strict=True):
            if isinstance(answer, Exception):
                if isinstance(answer, BadRequest):
                    self.host.count_bad_request()
                replies.append(pb.PredictResponse(request_id=message.request_id, error=str(answer),
                                                  status=_error_status(answer)))
            else:
                replies.append(response_to_proto(answer))  # type: ignore[arg-type]
        return replies


def start_grpc_server(host: ModelHost, port: int, *, bind: str = "127.0.0.1", workers: int = 8,
                      batching: BatchingParams | None = None) -> tuple[Any, int]:
    """Start the gRPC server on ``bind:port`` (0 picks a free port); the server and the port it listens on.

    Each open row stream holds one of the ``workers`` threads while it lasts."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
    pb_grpc.add_PredictorServicer_to_server(PredictorServicer(host, batching), server)
    bound = server.add_insecure_port(f"{bind}:{port}")
    if bound == 0:
        raise OSError(f"gRPC: cannot listen on {bind}:{port} (in use?); set serving.grpc_port or "
                      "ALPHAFORGE_GRPC_PORT")
    server.start()
    log.info("serving: gRPC on %s:%d", bind, bound)
    return server, bound


def grpc_predict(target: str, request: api.PredictRequest, timeout: float = 10.0) -> dict:
    """A client call (for tests and the benchmark): the HTTP request model in, the HTTP answer's data out."""
    message = request_to_proto(request)
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.PredictorStub(channel).Predict(message, timeout=timeout)
    return answer_from_proto(reply)


def request_to_proto(request: api.PredictRequest) -> pb.PredictRequest:
    return pb.PredictRequest(
        rows=[pb.FeatureRow(symbol=r.symbol, timestamp=r.timestamp, features=r.features) for r in request.rows],
        model=request.model or "", request_id=request.request_id or "", variant=request.variant or "")


def answer_from_proto(reply: pb.PredictResponse) -> dict:
    """The HTTP answer's data from a gRPC answer; a stream's refused message as ``{"request_id", "error",
    "status"}``."""
    if reply.HasField("error"):
        return {"request_id": reply.request_id, "error": reply.error, "status": reply.status}
    rows = [{"symbol": r.symbol, "timestamp": r.timestamp,
             **{k: (getattr(r, k) if r.HasField(k) else None) for k in ("prediction", "lower", "upper")}}
            for r in reply.predictions]
    answer = {"model_name": reply.model_name, "model_version": reply.model_version, "variant": reply.variant,
              "feature_version": reply.feature_version, "target": reply.target or None,
              "request_id": reply.request_id, "predictions": rows}
    if reply.HasField("fallback_reason"):
        answer["fallback_reason"] = reply.fallback_reason
    return answer


def grpc_predict_stream(target: str, requests: Iterable[api.PredictRequest | pb.PredictRequest],
                        timeout: float = 60.0) -> list[dict]:
    """A client of the row stream (for tests and the benchmark): every request sent on one stream, the answers
    (as :func:`answer_from_proto` gives them) in order."""
    messages = (r if isinstance(r, pb.PredictRequest) else request_to_proto(r) for r in requests)
    with grpc.insecure_channel(target) as channel:
        return [answer_from_proto(answer) for reply in
                pb_grpc.PredictorStub(channel).PredictStream(messages, timeout=timeout) for answer in reply.answers]
