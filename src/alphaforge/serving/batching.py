"""Micro-batching: concurrent row requests answered with one model call, each answer still its own.

One-row requests cost the model a few tens of microseconds, and everything around the model (routing,
building the matrix, the combiner, counting) about as much again, per call. When many clients send one row
each at the same time, :func:`predict_requests` answers them together: requests are routed one by one (each
keeps its request id and its A/B variant: the hash of *its* id), grouped by the model that answers them, and
each group's rows are predicted in one call of the row path; then every request is counted, logged and
answered on its own, exactly as :func:`alphaforge.serving.api.predict_rows` would have answered it alone.

What is not batched: a request whose input is bad gets its own error (the others are answered); a model
with sequence members (which needs each symbol's history, so rows of different requests must not be mixed)
and a batch the model raises on are answered request by request through ``predict_rows``, so the
per-request fallback (``variant: fallback``) rescues only the requests that fault.

:class:`MicroBatcher` gathers the requests of an asyncio server (the HTTP routes). A lone request never
waits: the batch is flushed on the event loop's next turn, after the requests that have already arrived
have queued; only while requests keep queueing (the previous batch held more than one) does it wait up to
``serving.batching.max_latency_ms`` for more, and a batch of ``max_batch_size`` requests is flushed at once.
The gRPC stream (:mod:`alphaforge.serving.grpc_server`) batches the rows that wait in its inbox the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alphaforge.serving import api
from alphaforge.serving.host import BatchingParams, ModelFault, ModelHost, NoModel, new_request_id
from alphaforge.serving.model import BadRequest, Prediction, ServedModel, check_finite, check_keys, check_row_count

Answer = dict[str, Any] | Exception  # the answer predict_rows gives, or the exception it raises


@dataclass(slots=True)
class Routed:
    """A request of a micro-batch, routed: its place in the batch, its id and its rows' keys (times parsed)."""

    index: int
    request: api.RowsRequest
    request_id: str
    symbols: list[str]
    timestamps: list[Any]


def _alone(host: ModelHost, request: api.RowsRequest, request_id: str) -> Answer:
    """``predict_rows`` on one request, its exception as the answer."""
    try:
        return api.predict_rows(host, request, request_id)
    except (BadRequest, NoModel, ModelFault) as err:
        return err


def answers_of(prediction: Prediction, model: ServedModel, members: Sequence[Routed]) -> list[dict[str, Any]]:
    """The answers to the requests of a batch predicted together (``prediction``: all their rows, in order), each
    as :func:`alphaforge.serving.api.predict_rows` would have given it alone."""
    values_of_rows = prediction.rows()  # one conversion for the whole batch, then each request its slice
    answers, start = [], 0
    for member in members:
        stop = start + len(member.symbols)
        answers.append(api.answer_rows(prediction, model, member.request_id, member.request, member.timestamps,
                                       values=values_of_rows[start:stop]))
        start = stop
    return answers


# how the answers of a batch are written: the HTTP routes take the plain data (answers_of); the gRPC stream writes
# its protobuf answers straight from the prediction's arrays (no dict in between)
Render = Callable[[Prediction, ServedModel, Sequence["Routed"]], list[Any]]


def predict_requests(host: ModelHost, requests: Sequence[api.RowsRequest], render: Render = answers_of
                     ) -> list[Any]:
    """Each request's answer (or the :class:`BadRequest`, :class:`NoModel` or :class:`ModelFault` it raises), in
    order, the rows of requests answered by the same row-path model predicted in one call. A request answered
    alone (a sequence model, a lone request, a model fault) gets ``predict_rows``'s plain data; one answered in a
    batch gets what ``render`` writes (:func:`answers_of`: the same plain data)."""
    answers: list[Answer | None] = [None] * len(requests)
    groups: dict[tuple[str | None, str], list[Routed]] = {}
    max_rows = host.params.max_batch_rows
    for index, request in enumerate(requests):
        request_id = request.request_id or new_request_id()
        try:
            check_row_count(len(request.rows), max_rows)
            symbols = [row.symbol for row in request.rows]
            timestamps = check_keys(symbols, [row.timestamp for row in request.rows])
        except BadRequest as err:
            answers[index] = err
            continue
        chosen = request.variant or host.choose_variant(request_id, request.model)
        groups.setdefault((request.model, chosen), []).append(
            Routed(index, request, request_id, symbols, timestamps))
    for (name, chosen), members in groups.items():
        try:
            model, variant = host.route(name, chosen)
        except (BadRequest, NoModel) as err:
            for member in members:
                answers[member.index] = err
            continue
        if not model.row_wise or len(members) == 1:
            for member in members:
                answers[member.index] = _alone(host, member.request, member.request_id)
            continue
        _predict_together(host, name, model, variant, members, answers, render)
    return answers  # type: ignore[return-value]


def _predict_together(host: ModelHost, name: str | None, model: ServedModel, variant: str, members: list[Routed],
                      answers: list[Any], render: Render) -> None:
    """The rows of ``members`` (requests routed to ``model``) in one matrix and one model call; each request's
    answer, or its own error, into ``answers``."""
    ready, values = [], []
    for member in members:  # the names of every row: one check per row, no copy
        rows = [model.feature_values(row.features) for row in member.request.rows]
        if None in rows:  # the request's own error, in the words of the one-request path
            try:
                model.matrix_from_records([row.features for row in member.request.rows],
                                          max_rows=host.params.max_batch_rows, trusted=True)
            except BadRequest as err:
                answers[member.index] = err
                continue
        ready.append(member)
        values.extend(rows)
    if not ready:
        return
    x = np.array(values, dtype=np.float64)
    if not np.isfinite(x).all():  # the requests holding NaN or infinity get their error, the others go on
        kept, blocks, start = [], [], 0
        for member in ready:
            block = x[start:start + len(member.symbols)]
            start += len(member.symbols)
            try:
                check_finite(block, model.features)
            except BadRequest as err:
                answers[member.index] = err
                continue
            kept.append(member)
            blocks.append(block)
        if not kept:
            return
        ready, x = kept, np.vstack(blocks)
    started = time.perf_counter()
    try:
        prediction, lower, upper = model.predict_matrix(x)
    except Exception:  # a model fault: each request alone, so that the fallback answers only those it hits
        for member in ready:
            answers[member.index] = _alone(host, member.request, member.request_id)
        return
    latency_ms = (time.perf_counter() - started) * 1000.0 / len(ready)  # the model's time, shared out
    symbols = [symbol for member in ready for symbol in member.symbols]
    timestamps = [stamp for member in ready for stamp in member.timestamps]
    host.record_batch(name, model, variant, [member.request_id for member in ready],
                      [len(member.symbols) for member in ready], x, symbols, timestamps, prediction, latency_ms)
    rendered = render(Prediction(prediction, lower, upper, model.name, model.version, variant), model, ready)
    for member, answer in zip(ready, rendered, strict=True):
        answers[member.index] = answer


class MicroBatcher:
    """Gathers the row requests of one asyncio event loop and answers them with :func:`predict_requests`.

    Used from the loop's thread only (the HTTP routes); the prediction runs on the loop, like the unbatched
    route's. See the module docstring for when a batch is flushed.
    """

    def __init__(self, host: ModelHost, settings: BatchingParams) -> None:
        self.host = host
        self.max_batch_size = settings.max_batch_size
        self.max_latency_s = settings.max_latency_ms / 1000.0
        self._pending: list[tuple[api.PredictRequest, asyncio.Future[dict[str, Any]]]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._last_size = 1
        self.batches = 0
        self.requests = 0

    async def predict(self, request: api.PredictRequest) -> dict[str, Any]:
        """The request's answer (as :func:`alphaforge.serving.api.predict_rows` gives it), or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch_size:
            self._flush()
        elif self._flush_handle is None:
            if self._last_size > 1 and self.max_latency_s > 0:  # requests are queueing: wait a moment for more
                self._flush_handle = loop.call_later(self.max_latency_s, self._flush)
            else:  # after the requests that have already arrived, without waiting
                self._flush_handle = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._last_size = len(batch)
        self.batches += 1
        self.requests += len(batch)
        try:
            answers = predict_requests(self.host, [request for request, _ in batch])
        except Exception as err:  # a bug, not a request's fault: every waiting request hears of it
            answers = [err] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def info(self) -> dict[str, Any]:
        return {"enabled": True, "max_batch_size": self.max_batch_size, "max_latency_ms": self.max_latency_s * 1000,
                "batches": self.batches, "requests": self.requests,
                "mean_batch": round(self.requests / self.batches, 2) if self.batches else 0.0}
