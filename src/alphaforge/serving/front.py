"""The fast HTTP routes, answered in front of BentoML's ASGI stack: ``/v1/predict`` and ``/v1/predict_arrow``.

BentoML wraps every request in its middleware (Prometheus metrics with multiprocess files, OpenTelemetry, a
timeout that starts a task and a timer per request, its request context) and Starlette's routing before a
mounted app sees it: on a 2-core machine that was ~150 µs of a one-row request's ~300 µs of CPU, more than
predicting it. :class:`Front` is a plain ASGI app placed outside that stack (the service is built with
:class:`FrontedService`, BentoML's ``service_class`` hook): it answers the two routes itself and hands
everything else, the lifespan included, to BentoML unchanged. The routes keep their answers, statuses and
counters (the host's own, in ``/metrics``); BentoML's generic per-route HTTP metrics no longer see them.

* ``POST /v1/predict``: the ``/predict`` JSON (:class:`alphaforge.serving.api.PredictRequest`) without
  BentoML's request model; with ``serving.batching`` on, concurrent requests are predicted together
  (:class:`alphaforge.serving.batching.MicroBatcher`). 400 for a body that does not validate or input the model
  refuses, 404 unknown model, 413 too many rows, 503 no model, 500 a model fault with no fallback.
* ``POST /v1/predict_arrow``: an Arrow IPC stream (symbol, timestamp with time zone, features) in and out,
  ``?model=``, ``?variant=`` and ``x-request-id`` as for JSON; the answer's model, version, variant, feature
  version and request id in ``x-*`` headers.

Other methods on these paths get 405, as the Starlette routes they replace answered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import bentoml
from pydantic import ValidationError

from alphaforge.serving import api
from alphaforge.serving.batching import MicroBatcher
from alphaforge.serving.host import ModelFault, ModelHost, NoModel
from alphaforge.serving.model import BadRequest

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
PREDICT, PREDICT_ARROW = "/v1/predict", "/v1/predict_arrow"


class FastRoutes:
    """What the fast routes answer with: the service instance's host and micro-batcher (None until the
    service has started; the routes answer 503 meanwhile)."""

    def __init__(self) -> None:
        self.host: ModelHost | None = None
        self.batcher: MicroBatcher | None = None

    async def predict(self, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """``/v1/predict``: status, JSON body, extra headers."""
        host = self.host
        if host is None:
            return 503, _error("the service is starting"), []
        try:
            request = api.PredictRequest.model_validate_json(body)
            batcher = self.batcher
            answer = await batcher.predict(request) if batcher is not None else api.predict_rows(host, request)
        except ValidationError as err:
            host.count_bad_request()
            return 400, _json({"error": f"{err.error_count()} validation error(s)",
                               "detail": err.errors(include_context=False, include_input=False)}), []
        except (BadRequest, NoModel, ModelFault) as err:
            return _refusal(host, err)
        return 200, api.to_json(answer), []

    async def predict_arrow(self, body: bytes, query: dict[str, list[str]], request_id: str | None
                            ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """``/v1/predict_arrow``: status, body (Arrow IPC, or JSON for an error), extra headers."""
        host = self.host
        if host is None:
            return 503, _error("the service is starting"), []
        try:
            columns, symbols, timestamps = api.read_arrow(body)
            prediction, model, request_id = api.predict_columns(
                host, columns, symbols, timestamps, model_name=_first(query, "model"), request_id=request_id,
                variant=_first(query, "variant"))
        except (BadRequest, NoModel, ModelFault) as err:
            return _refusal(host, err)
        return 200, api.write_arrow(prediction), [
            (b"content-type", api.ARROW_MEDIA_TYPE.encode()), (b"x-model-name", model.name.encode()),
            (b"x-model-version", model.version.encode()), (b"x-variant", prediction.variant.encode()),
            (b"x-feature-version", model.feature_version.encode()), (b"x-request-id", request_id.encode())]


def _refusal(host: Any, err: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A request the service could not answer: 400/404/413 for input it refuses (counted), 503 without a model,
    500 for a model fault no fallback answered."""
    if isinstance(err, BadRequest):
        host.count_bad_request()
        return err.status, _error(str(err)), []
    return (503 if isinstance(err, NoModel) else 500), _error(str(err)), []


def _json(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(message: str) -> bytes:
    return _json({"error": message})


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    if not any(name == b"content-type" for name, _ in headers):
        headers = [(b"content-type", JSON), *headers]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Front:
    """An ASGI app answering the fast routes with ``routes`` and passing every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: FastRoutes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path != PREDICT and path != PREDICT_ARROW:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b"Method Not Allowed", [(b"content-type", b"text/plain; charset=utf-8"),
                                                              (b"allow", b"POST")])
            return
        body = await _read_body(receive)
        if body is None:
            return
        if path == PREDICT:
            status, answer, headers = await self.routes.predict(body)
        else:
            request_id = next((value.decode("latin-1") for name, value in scope["headers"]
                               if name == b"x-request-id"), None)
            status, answer, headers = await self.routes.predict_arrow(
                body, parse_qs(scope.get("query_string", b"").decode("latin-1")), request_id)
        await _respond(send, status, answer, headers)


FAST_ROUTES = FastRoutes()  # filled in by the service instance (bentos/service.py); one per worker process


class FrontedService(bentoml.Service):  # type: ignore[type-arg]
    """A BentoML service whose ASGI app is :class:`Front` over BentoML's own (``@bentoml.service(service_class=
    FrontedService)``), answering the fast routes from :data:`FAST_ROUTES`."""

    def to_asgi(self, is_main: bool = True) -> ASGIApp:
        return Front(super().to_asgi(is_main), FAST_ROUTES)
