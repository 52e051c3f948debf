"""The predictor over gRPC (``proto/alphaforge_serving.proto``), sharing the HTTP service's :class:`ModelHost`.

BentoML 1.4's new-style services refuse ``serve-grpc`` (bentoml/BentoML#5607), so the service starts
this server itself, in the same process, on ``serving.grpc_port``: the same loaded models, the
same handler (:func:`alphaforge.serving.api.predict_rows`) and therefore the same validation and the
same answers as HTTP. Bad input maps to ``INVALID_ARGUMENT`` (400), ``NOT_FOUND`` (404) or
``RESOURCE_EXHAUSTED`` (413); no model at all to ``UNAVAILABLE``.

The server is grpcio's asyncio server (``grpc.aio``) on a thread of its own with its own event loop
(:class:`GrpcServer`). The thread-pool server it replaced handed every message of a stream from gRPC's
polling thread to a handler thread: on a 2-core machine that cost ~200 µs of CPU per one-row message, more
than predicting it. On the event loop a message costs ~40 µs of gRPC and the handlers never wait on a
thread. A handler runs on the loop, as the HTTP routes run on theirs; one slow request (a large batch)
holds the other gRPC calls meanwhile, as it does the HTTP ones.

``PredictStream`` is the row stream: a bidirectional stream of ``PredictRequest`` messages (usually one row
each) answered in order. A reader task drains the client's messages into an inbox; the handler takes
whatever waits there (up to ``serving.batching.max_batch_size`` messages, one when batching is off),
answers it with one model call (:func:`alphaforge.serving.batching.predict_requests`), writes the answers
straight from the prediction's arrays (:func:`protos_of`: no plain-data answer in between, ~8 us less per row)
and sends them in one ``PredictAnswers`` message: each send is a round trip through gRPC's completion queue. Like
the HTTP micro-batcher it waits for more messages only while they queue (the previous batch held more than
one; a lone message is answered at once), up to ``serving.batching.stream_max_latency_ms``: a stream's client
keeps many messages in flight, and each read is a round trip through gRPC's poller thread, so 1 ms gathered
~8 rows a batch here and 4 ms ~50, which halved the CPU per row without raising the stream's latency (its
queue of messages in flight dominates that). While it gathers, the loop keeps turning instead of sleeping:
each message's completion reaches the loop from the poller thread, and on this virtual machine waking a
sleeping thread took ~100 µs, longer than reading the message (the same stream: ~8,000 rows/s sleeping,
~12,000 turning, and less CPU per row). It turns only while messages queue, at most that long per batch.
A message that cannot be answered gets an answer carrying ``error`` and the HTTP ``status`` of the same
request over ``/v1/predict``, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from pydantic import ValidationError

from alphaforge.serving import api
from alphaforge.serving.batching import Routed, answers_of, predict_requests
from alphaforge.serving.host import BatchingParams, ModelFault, ModelHost, NoModel
from alphaforge.serving.model import BadRequest, Prediction, ServedModel
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


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A row-stream message as the row path reads it (:class:`alphaforge.serving.api.RowsRequest`): its rows are
    the message's own ``FeatureRow`` messages (features read from their map by name, never copied)."""

    rows: Sequence[pb.FeatureRow]
    model: str | None
    request_id: str | None
    variant: str | None


def stream_request_from_proto(message: pb.PredictRequest) -> StreamRequest:
    """A stream message for the row path without pydantic's pass (the row stream's hot path): protobuf has typed
    every field already (features are doubles), and what is left of :class:`api.PredictRequest`'s rules is
    checked here (request id length, variant) or downstream, as for every request (non-empty symbol and
    time-zone-aware timestamp by ``check_keys``, feature names and finite values by the model's row checks), so
    a bad message is refused with the same kind of message as over HTTP."""
    if len(message.request_id) > 128:
        raise BadRequest(f"request_id: {len(message.request_id)} characters; the limit is 128")
    if message.variant not in _VARIANTS:
        raise BadRequest(f"variant: {message.variant!r}; rule: champion, challenger or empty (A/B routing)")
    return StreamRequest(message.rows, message.model or None, message.request_id or None, message.variant or None)


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


def protos_of(prediction: Prediction, model: ServedModel, members: Sequence[Routed]) -> list[pb.PredictResponse]:
    """The answers to the stream messages of a batch predicted together, written straight from the prediction's
    arrays: the messages :func:`response_to_proto` makes of :func:`alphaforge.serving.batching.answers_of`'s plain
    data, without that data in between (a :data:`alphaforge.serving.batching.Render`)."""
    if model.regime_positions:  # the regime report is read from the rows' inputs: the plain path writes it
        return [response_to_proto(answer) for answer in answers_of(prediction, model, members)]
    template = pb.PredictResponse(model_name=prediction.model_name, model_version=prediction.model_version,
                                  variant=prediction.variant, feature_version=model.feature_version,
                                  target=model.spec.get("target") or "")
    if prediction.fallback_reason is not None:
        template.fallback_reason = prediction.fallback_reason
    columns = [np.asarray(values, dtype=np.float64).tolist() if values is not None else None
               for values in (prediction.prediction, prediction.lower, prediction.upper)]
    complete = all(values is not None and np.isfinite(values).all()
                   for values in (prediction.prediction, prediction.lower, prediction.upper))
    replies, at = [], 0
    for member in members:
        reply = pb.PredictResponse()
        reply.CopyFrom(template)
        reply.request_id = member.request_id
        add = reply.predictions.add
        for row in member.request.rows:
            if complete:
                add(symbol=row.symbol, timestamp=row.timestamp, prediction=columns[0][at], lower=columns[1][at],
                    upper=columns[2][at])
            else:  # NaN (no prediction could be made) and absent bounds are left unset, as None is in JSON
                add(symbol=row.symbol, timestamp=row.timestamp,
                    **{name: values[at] for name, values in zip(("prediction", "lower", "upper"), columns, strict=True)
                       if values is not None and math.isfinite(values[at])})
            at += 1
        replies.append(reply)
    return replies


def _validation_message(err: ValidationError) -> str:
    return f"{err.error_count()} validation error(s): " + "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def _error_status(err: Exception) -> int:
    if isinstance(err, BadRequest):
        return err.status
    return 503 if isinstance(err, NoModel) else 500


class _Refused(Exception):
    """A unary call's error as the gRPC status and message it ends with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PredictorServicer:
    """What the gRPC calls do, over a shared :class:`ModelHost`, without the transport: :class:`GrpcServer`
    serves it on the event loop; ``Predict`` and ``ModelInfo`` also run as plain calls (``context`` aborts)."""

    def __init__(self, host: ModelHost, batching: BatchingParams | None = None) -> None:
        self.host = host
        self.batching = batching or BatchingParams()

    def answer(self, request: pb.PredictRequest) -> pb.PredictResponse:
        """A unary ``Predict``; :class:`_Refused` with the status the call ends with."""
        try:
            return response_to_proto(api.predict_rows(self.host, request_from_proto(request)))
        except ValidationError as err:
            self.host.count_bad_request()
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, _validation_message(err)) from None
        except BadRequest as err:
            self.host.count_bad_request()
            raise _Refused(_STATUS.get(err.status, grpc.StatusCode.INVALID_ARGUMENT), str(err)) from None
        except NoModel as err:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        except ModelFault as err:
            raise _Refused(grpc.StatusCode.INTERNAL, str(err)) from None

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        try:
            return self.answer(request)
        except _Refused as err:
            context.abort(err.code, str(err))
        raise AssertionError("unreachable")  # context.abort raises

    def ModelInfo(self, request: pb.ModelInfoRequest, context: Any) -> pb.ModelInfoResponse:
        return pb.ModelInfoResponse(json=json.dumps(self.host.info(), default=str))

    def answer_messages(self, messages: list[pb.PredictRequest]) -> list[pb.PredictResponse]:
        """One answer per stream message, in order: the valid ones predicted together."""
        answers: list[pb.PredictResponse | dict[str, Any] | Exception | None] = [None] * len(messages)
        valid: list[tuple[int, StreamRequest]] = []
        for index, message in enumerate(messages):
            try:
                valid.append((index, stream_request_from_proto(message)))
            except BadRequest as err:
                answers[index] = err
        for (index, _), answer in zip(valid, predict_requests(self.host, [r for _, r in valid], protos_of),
                                      strict=True):
            answers[index] = answer
        replies = []
        for message, answer in zip(messages, answers, strict=True):
            if type(answer) is pb.PredictResponse:  # written by protos_of
                replies.append(answer)
            elif isinstance(answer, Exception):
                if isinstance(answer, BadRequest):
                    self.host.count_bad_request()
                replies.append(pb.PredictResponse(request_id=message.request_id, error=str(answer),
                                                  status=_error_status(answer)))
            else:  # predict_rows's plain data (a message answered alone)
                replies.append(response_to_proto(answer))  # type: ignore[arg-type]
        return replies


class _AsyncPredictor(pb_grpc.PredictorServicer):
    """The gRPC handlers on the server's event loop (the work itself is :class:`PredictorServicer`'s)."""

    def __init__(self, servicer: PredictorServicer) -> None:
        self.servicer = servicer
        batching = servicer.batching
        self.limit = batching.max_batch_size if batching.enabled else 1
        self.wait_s = batching.stream_max_latency_ms / 1000.0 if batching.enabled else 0.0

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        try:
            return self.servicer.answer(request)
        except _Refused as err:
            await context.abort(err.code, str(err))
        raise AssertionError("unreachable")  # context.abort raises

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext
                        ) -> pb.ModelInfoResponse:
        return self.servicer.ModelInfo(request, context)

    async def PredictStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """One answer per message, in order; what waits in the inbox is predicted together (module docstring)."""
        inbox: collections.deque[pb.PredictRequest] = collections.deque()
        arrived = asyncio.Event()
        ended = False

        async def read() -> None:
            nonlocal ended
            try:
                async for message in request_iterator:
                    inbox.append(message)
                    arrived.set()
            except Exception as err:  # the client cancelled or the connection broke: nobody is left to answer
                log.info("serving: a gRPC row stream ended early: %s", err)
            finally:
                ended = True
                arrived.set()

        reader = asyncio.ensure_future(read())
        last_batch = 1
        try:
            while True:
                if not inbox:
                    if ended:
                        return
                    arrived.clear()
                    await arrived.wait()
                    continue
                if last_batch > 1 and self.wait_s > 0:
                    # messages are queueing (the last batch held several): gather for a moment, the loop kept
                    # turning (module docstring); else one turn, for what gRPC has read already
                    deadline = time.perf_counter() + self.wait_s
                    while len(inbox) < self.limit and not ended and time.perf_counter() < deadline:
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(0)
                batch = [inbox.popleft() for _ in range(min(self.limit, len(inbox)))]
                last_batch = len(batch)
                await context.write(pb.PredictAnswers(answers=self.servicer.answer_messages(batch)))
        finally:
            reader.cancel()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GrpcServer:
    """The ``grpc.aio`` server on a thread of its own, with its own event loop (the HTTP server keeps its loop)."""

    def __init__(self, host: ModelHost, *, bind: str, port: int, batching: BatchingParams | None = None) -> None:
        self.servicer = PredictorServicer(host, batching)
        self.address = f"{bind}:{port}"
        self.port = 0
        self._loop = _new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="grpc", daemon=True)

    def start(self, timeout: float = 30.0) -> int:
        """Listen and serve; the port it listens on (:class:`OSError` when it cannot bind)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"gRPC: the server did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # a failed start is raised by start(); later ones end the thread, logged
            if not self._ready.is_set():
                self._error = err
                self._ready.set()
            else:
                log.exception("serving: the gRPC server stopped")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = grpc.aio.server()
        pb_grpc.add_PredictorServicer_to_server(_AsyncPredictor(self.servicer), server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"gRPC: cannot listen on {self.address} (in use?); set serving.grpc_port or "
                          "ALPHAFORGE_GRPC_PORT")
        await server.start()
        self._server, self.port = server, bound
        self._ready.set()
        await self._stopped.wait()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (calls in flight get ``grace`` seconds), then the thread."""
        if self._server is None or not self._thread.is_alive():
            return
        server, stopped = self._server, self._stopped

        async def shut_down() -> None:
            await server.stop(grace)
            stopped.set()  # type: ignore[union-attr]

        try:
            asyncio.run_coroutine_threadsafe(shut_down(), self._loop).result((grace or 0) + 10)
        except Exception as err:  # a stuck loop: the thread is a daemon, the process ends anyway
            log.warning("serving: the gRPC server did not stop cleanly: %s", err)
        self._thread.join(5)


def start_grpc_server(host: ModelHost, port: int, *, bind: str = "127.0.0.1",
                      batching: BatchingParams | None = None) -> tuple[GrpcServer, int]:
    """Start the gRPC server on ``bind:port`` (0 picks a free port); the server and the port it listens on."""
    server = GrpcServer(host, bind=bind, port=port, batching=batching)
    bound = server.start()
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
