"""Cheap load generators for the serving benchmark: raw asyncio sockets, so the client costs the shared CPUs little.

On a 2-core machine the client runs beside the service it measures: an aiohttp client spent ~150 µs of CPU per
one-row request and a grpcio stream client ~200 µs per message, about what the service spends answering, so the
figures measured the client as much as the service. These clients do the protocol's minimum in Python on one
event loop (uvloop when installed) and report the CPU they used:

* :func:`http_closed_loop`: ``connections`` HTTP/1.1 keep-alive connections, each posting the same prepared
  request again as soon as its answer is in (saturation throughput; latency from send to answer).
* :func:`http_open_loop`: ``connections`` connections together offering ``rate`` requests per second on a fixed
  schedule (as wrk2 or k6's constant-arrival-rate executor): request *i* is due at ``start + i / rate`` and
  goes out on the next free connection; its latency counts from when it was due, not when it was sent, so a
  slow answer delays the requests queued behind it in the figures too (no coordinated omission).
* :func:`grpc_stream`: one gRPC bidirectional stream (HTTP/2, prior knowledge, no TLS) with at most ``window``
  one-row messages in flight. Each message is its own gRPC message in its own DATA frame, as a gRPC library sends
  it; the frames ready at one moment are written to the socket together (as gRPC's C core combines writes).
  HTTP/2 flow control is honoured both ways, SETTINGS and PING are acknowledged; HPACK is not decoded (requests
  use literal headers; an answer that never comes, an ``error`` answer or a reset stream counts as a failure).

Each returns latencies in ms (of the measured window, after ``warmup`` seconds), counts, and the client's
CPU seconds.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from collections.abc import Callable
from typing import Any


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # the standard loop works, at a higher cost per callback
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(coroutine_factory: Callable[[], Any]) -> dict[str, Any]:
    loop = _event_loop()
    cpu = time.process_time()
    try:
        result = loop.run_until_complete(coroutine_factory())
    finally:
        loop.close()
    result["client_cpu_seconds"] = time.process_time() - cpu
    return result


# ------------------------------------------------------------------------------------------------ HTTP/1.1


def http_request(host: str, port: int, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A complete HTTP/1.1 keep-alive POST, ready to write again and again."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; ``on_answer(ok)`` when an answer is complete."""

    def __init__(self, on_answer: Callable[[_HttpConnection, bool], None]) -> None:
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self.started = 0.0  # when the answer now awaited was due (open loop) or sent (closed loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop > 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            ok = head.startswith(b"http/1.1 200")
            del self.buffer[:end + 4 + length]
            self.on_answer(self, ok)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def _connect(host: str, port: int, count: int, on_answer: Callable[[_HttpConnection, bool], None]
                   ) -> list[_HttpConnection]:
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(count):
        _, protocol = await loop.create_connection(lambda: _HttpConnection(on_answer), host, port)
        connections.append(protocol)
    return connections


def http_closed_loop(host: str, port: int, request: bytes, *, connections: int, seconds: float,
                     warmup: float = 1.0) -> dict[str, Any]:
    """Each connection sends ``request`` again as soon as its answer is in, for ``warmup + seconds``."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        counts = {"failures": 0, "answers": 0}
        done = loop.create_future()
        clock = time.perf_counter
        begin = clock()
        measure_from, deadline = begin + warmup, begin + warmup + seconds
        busy = [0]

        def on_answer(connection: _HttpConnection, ok: bool) -> None:
            now = clock()
            if connection.started >= measure_from and now <= deadline:
                if ok:
                    latencies.append((now - connection.started) * 1000.0)
                else:
                    counts["failures"] += 1
            if now < deadline:
                connection.started = now
                connection.transport.write(request)  # type: ignore[union-attr]
            else:
                busy[0] -= 1
                if busy[0] == 0 and not done.done():
                    done.set_result(None)

        pool = await _connect(host, port, connections, on_answer)
        busy[0] = len(pool)
        for connection in pool:
            connection.started = clock()
            connection.transport.write(request)  # type: ignore[union-attr]
        await asyncio.wait_for(done, warmup + seconds + 60)
        for connection in pool:
            connection.transport.close()  # type: ignore[union-attr]
        return {"latencies": latencies, "failures": counts["failures"], "seconds": seconds,
                "connections": connections}

    return _run(main)


def http_open_loop(host: str, port: int, request: bytes, *, connections: int, rate: float, seconds: float,
                   warmup: float = 1.0) -> dict[str, Any]:
    """``rate`` requests per second on a fixed schedule over ``connections`` connections (module docstring)."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        counts = {"failures": 0, "sent": 0, "late": 0, "answered_in_window": 0}
        clock = time.perf_counter
        free: collections.deque[_HttpConnection] = collections.deque()
        due: collections.deque[float] = collections.deque()  # requests due and not yet sent: their due times
        finished = loop.create_future()
        outstanding = [0]

        def send(connection: _HttpConnection, due_at: float) -> None:
            connection.started = due_at
            outstanding[0] += 1
            counts["sent"] += 1
            connection.transport.write(request)  # type: ignore[union-attr]

        def on_answer(connection: _HttpConnection, ok: bool) -> None:
            now = clock()
            outstanding[0] -= 1
            if measure_from <= now <= end:
                counts["answered_in_window"] += ok
            if connection.started >= measure_from:
                if ok:
                    latencies.append((now - connection.started) * 1000.0)
                else:
                    counts["failures"] += 1
            if due:
                send(connection, due.popleft())
            else:
                free.append(connection)
            if scheduled_all[0] and not due and outstanding[0] == 0 and not finished.done():
                finished.set_result(None)

        pool = await _connect(host, port, connections, on_answer)
        free.extend(pool)
        begin = clock() + 0.01
        measure_from, end = begin + warmup, begin + warmup + seconds
        total = int((warmup + seconds) * rate)
        scheduled_all = [False]
        issued = 0
        interval = 1.0 / rate
        while issued < total:
            now = clock()
            while issued < total and begin + issued * interval <= now:  # every request due by now
                due_at = begin + issued * interval
                issued += 1
                if free:
                    send(free.popleft(), due_at)
                else:
                    due.append(due_at)
                    counts["late"] += 1
            if issued < total:  # event-loop timers tick in whole milliseconds: a request due meanwhile waits
                await asyncio.sleep(0.001)  # for the tick, and that wait counts in its latency
        scheduled_all[0] = True
        if due or outstanding[0]:  # an overloaded service: the backlog gets a minute, then counts as failed
            try:
                await asyncio.wait_for(finished, 60)
            except TimeoutError:
                pass
        drained = clock()
        for connection in pool:
            connection.transport.close()  # type: ignore[union-attr]
        measured = sum(1 for i in range(total) if begin + i * interval >= measure_from)
        unanswered = len(due) + outstanding[0]
        return {"latencies": latencies, "failures": counts["failures"] + unanswered, "offered_per_s": rate,
                "offered": measured, "answered_in_window": counts["answered_in_window"], "seconds": seconds,
                "connections": connections, "queued_for_a_connection": counts["late"],
                "drain_seconds": drained - end}

    return _run(main)


# ------------------------------------------------------------------------------------------------ gRPC / HTTP/2

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_FRAME = struct.Struct(">HBBBI")  # length as 2 + 1 bytes, type, flags, stream id (top bit reserved)
_MAX_WINDOW = 2 ** 31 - 1
_STREAM = 1
_FRAME_NAMES = {_DATA: "DATA", _HEADERS: "HEADERS", _RST_STREAM: "RST_STREAM", _SETTINGS: "SETTINGS", _PING: "PING",
                _GOAWAY: "GOAWAY", _WINDOW_UPDATE: "WINDOW_UPDATE"}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal_headers(headers: list[tuple[str, str]]) -> bytes:
    """HPACK "literal header field without indexing, new name" for each header (no table, no Huffman)."""
    block = b""
    for name, value in headers:
        block += b"\x00" + _hpack_int(len(name), 7) + name.encode() + _hpack_int(len(value), 7) + value.encode()
    return block


class _GrpcStream(asyncio.Protocol):
    """One HTTP/2 connection with one gRPC bidirectional stream on it (module docstring)."""

    def __init__(self, message: bytes, window: int, on_reply: Callable[[bytes], int]) -> None:
        if len(message) + 5 > 16_384:  # HTTP/2's default largest frame; this client does not split messages
            raise ValueError(f"a {len(message)}-byte message does not fit one HTTP/2 DATA frame (16,384 bytes)")
        self.frame = _frame(_DATA, 0, _STREAM, b"\x00" + struct.pack(">I", len(message)) + message)
        self.frame_cost = len(self.frame) - 9  # what one DATA frame takes of the flow-control windows
        self.window = window
        self.on_reply = on_reply  # a PredictAnswers payload -> how many answers it held
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.grpc_buffer = bytearray()
        self.send_connection = 65_535  # the peer's windows for what we send
        self.send_stream = 65_535
        self.peer_initial_window = 65_535
        self.received = 0  # bytes received since our last WINDOW_UPDATE
        self.sent_times: collections.deque[float] = collections.deque()
        self.stop_sending_at = 0.0
        self.started = False  # the server may speak first (its SETTINGS): nothing is sent before our preface
        self.writing_done = False
        self.ended = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self.frames_in: collections.Counter[int] = collections.Counter()  # frames received, by type
        self.writes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, authority: str, path: str, stop_sending_at: float) -> None:
        self.stop_sending_at = stop_sending_at
        self.started = True
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, _MAX_WINDOW)  # no push; big stream window
        headers = _literal_headers([(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", authority), ("content-type", "application/grpc"),
                                    ("te", "trailers")])
        self.transport.write(_PREFACE + _frame(_SETTINGS, 0, 0, settings)  # type: ignore[union-attr]
                             + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - 65_535))
                             + _frame(_HEADERS, _END_HEADERS, _STREAM, headers))
        self.data_received(b"")  # what the server said before our preface (its SETTINGS), then the first messages

    def pump(self) -> None:
        """Send what the in-flight window and the peer's flow-control windows allow, in one write."""
        if not self.started or self.writing_done or self.ended.done():
            return
        now = time.perf_counter()
        if now >= self.stop_sending_at:
            self.writing_done = True
            self.transport.write(_frame(_DATA, _END_STREAM, _STREAM))  # type: ignore[union-attr]
            return
        room = min(self.window - len(self.sent_times), min(self.send_connection, self.send_stream) // self.frame_cost)
        if room <= 0:
            return
        self.send_connection -= room * self.frame_cost
        self.send_stream -= room * self.frame_cost
        self.sent_times.extend([now] * room)
        self.writes += 1
        self.transport.write(self.frame * room)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.started:  # an answer (a SETTINGS ack) must not go out before the preface
            return
        offset, size = 0, len(buffer)
        replies = False
        while size - offset >= 9:
            high, low, kind, flags, stream = _FRAME.unpack_from(buffer, offset)
            length = (high << 8) | low
            if size - offset - 9 < length:
                break
            payload = bytes(buffer[offset + 9:offset + 9 + length])
            offset += 9 + length
            stream &= _MAX_WINDOW
            self.frames_in[kind] += 1
            if kind == _DATA:
                self.received += length
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                self.grpc_buffer += payload
                replies = True
                if flags & _END_STREAM:
                    self._end(None)
            elif kind == _HEADERS and flags & _END_STREAM:  # trailers (grpc-status, not decoded here)
                self._end(None)
            elif kind == _SETTINGS and not flags & _ACK:
                for at in range(0, len(payload), 6):
                    key, value = struct.unpack_from(">HI", payload, at)
                    if key == 0x4:  # the peer's initial stream window: moves our stream's window by the change
                        self.send_stream += value - self.peer_initial_window
                        self.peer_initial_window = value
                self.transport.write(_frame(_SETTINGS, _ACK, 0))  # type: ignore[union-attr]
            elif kind == _PING and not flags & _ACK:
                self.transport.write(_frame(_PING, _ACK, 0, payload))  # type: ignore[union-attr]
            elif kind == _WINDOW_UPDATE:
                increment = struct.unpack(">I", payload)[0] & _MAX_WINDOW
                if stream == 0:
                    self.send_connection += increment
                else:
                    self.send_stream += increment
            elif kind == _RST_STREAM or kind == _GOAWAY:
                self._end(f"the server ended the stream ({'RST_STREAM' if kind == _RST_STREAM else 'GOAWAY'}, "
                          f"code {struct.unpack_from('>I', payload, 0 if kind == _RST_STREAM else 4)[0]})")
        del buffer[:offset]
        if replies:
            self._read_messages()
        if self.received > 1 << 20:  # give the server its windows back, long before they run out
            increment = struct.pack(">I", self.received)
            self.transport.write(_frame(_WINDOW_UPDATE, 0, 0, increment)  # type: ignore[union-attr]
                                 + _frame(_WINDOW_UPDATE, 0, _STREAM, increment))
            self.received = 0
        self.pump()

    def _read_messages(self) -> None:
        data = self.grpc_buffer
        offset, size = 0, len(data)
        while size - offset >= 5:
            length = int.from_bytes(data[offset + 1:offset + 5], "big")
            if size - offset - 5 < length:
                break
            self.on_reply(bytes(data[offset + 5:offset + 5 + length]))
            offset += 5 + length
        del data[:offset]

    def _end(self, error: str | None) -> None:
        if not self.ended.done():
            self.error = error
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(None if exc is None else f"connection lost: {exc}")


def grpc_stream(host: str, port: int, method: str, message: bytes, count_answers: Callable[[bytes], tuple[int, int]],
                *, window: int, seconds: float, warmup: float = 1.0) -> dict[str, Any]:
    """One bidirectional stream to ``method`` (``/package.Service/Method``) sending the serialised ``message``
    with at most ``window`` in flight; ``count_answers(reply)`` says how many answers a reply message holds and
    how many of them are errors. Answers are matched to messages in order."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        counts = {"failures": 0, "answers": 0, "replies": 0}
        clock = time.perf_counter
        begin = clock()
        measure_from, deadline = begin + warmup, begin + warmup + seconds

        def on_reply(payload: bytes) -> int:
            answers, errors = count_answers(payload)
            now = clock()
            counts["replies"] += 1
            counts["answers"] += answers
            sent = protocol.sent_times
            for _ in range(answers):
                started = sent.popleft()
                if started >= measure_from:
                    latencies.append((now - started) * 1000.0)
            if errors:
                counts["failures"] += errors
            return answers

        _, protocol = await loop.create_connection(lambda: _GrpcStream(message, window, on_reply), host, port)
        protocol.start(f"{host}:{port}", method, deadline)
        await asyncio.wait_for(protocol.ended, warmup + seconds + 60)
        unanswered = len(protocol.sent_times)
        protocol.transport.close()  # type: ignore[union-attr]
        return {"latencies": latencies, "failures": counts["failures"] + unanswered, "unanswered": unanswered,
                "stream_error": protocol.error, "replies": counts["replies"], "answers": counts["answers"],
                "window": window, "seconds": seconds, "socket_writes": protocol.writes,
                "frames_received": {_FRAME_NAMES.get(k, str(k)): n for k, n in sorted(protocol.frames_in.items())}}

    return _run(main)
