"""The service's request-log writer: a child process, so logging never holds the serving process's GIL.

Encoding a row of features for :class:`alphaforge.monitor.RequestLog` and inserting it into SQLite costs
~30 µs of Python per row. Done on a thread of the serving process it took the GIL from the request
handlers (a waiting handler loses up to the interpreter's 5 ms switch interval): one-row p99 went from
~1.3 ms to ~9 ms and 100-row batches from ~3.7 ms to ~11 ms on a 2-core machine. Here the serving process
only queues each request's arrays; one thread sends the queued blocks, pickled (NumPy arrays go as raw
buffers), down a pipe to ``python -m alphaforge.serving.request_log_writer DIR``, which appends them with
:meth:`RequestLog.append_blocks` at a lower CPU priority and answers with the rows written or failed.

Frames on the child's stdin: an 8-byte little-endian length, then a pickle of a list of blocks (the
keyword arguments of :meth:`RequestLog.append_block`); a zero length asks the child to finish. The child
answers each frame with one JSON line ``{"written": n, "failed": n, "error": str|null}`` on stdout. It
ignores SIGINT/SIGTERM (the service's process group gets them on shutdown) and stops at the zero frame or
at end of input, so a killed service never leaves it behind, and rows already sent are written first.
If the child dies, the blocks in flight are counted as failed and a new child is started for the next ones.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")


class RequestLogWriter:
    """Queues served blocks; a background thread ships them in batches to the writer process."""

    def __init__(self, directory: str | Path, flush_seconds: float) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.written = 0
        self.failed = 0
        self.restarts = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._child: subprocess.Popen[bytes] | None = None
        self._start_child()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def _start_child(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "alphaforge.serving.request_log_writer", str(self.directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def put(self, block: dict[str, Any]) -> None:
        """One request's rows: the keyword arguments of :meth:`RequestLog.append_block`."""
        self._queue.put(block)

    def log_requests(self, request_ids: Sequence[str], row_counts: Sequence[int], model_name: str,
                     model_version: str, feature_names: Sequence[str], variant: str, x: np.ndarray,
                     symbols: Sequence[str], timestamps: Any, prediction: np.ndarray, latency_ms: float, *,
                     max_rows: int) -> None:
        """Served requests (their rows consecutive, ``row_counts`` rows each) as one block, each row under its
        own request id; a request of more than ``max_rows`` rows logs an evenly spaced sample of that many (in a
        block of its own), so the log's cost per request stays bounded. ``timestamps`` None: nothing to log."""
        if timestamps is None:
            return
        if len(request_ids) > 1 and max(row_counts) > max_rows:
            bounds = np.cumsum([0, *row_counts]).tolist()
            for i, request_id in enumerate(request_ids):
                rows = slice(bounds[i], bounds[i + 1])
                self.log_requests([request_id], [row_counts[i]], model_name, model_version, feature_names, variant,
                                  x[rows], symbols[rows], timestamps[rows], prediction[rows], latency_ms,
                                  max_rows=max_rows)
            return
        if len(request_ids) == 1 and len(symbols) > max_rows:  # one bulk request: an evenly spaced sample
            keep = np.linspace(0, len(symbols) - 1, max_rows).round().astype(int)
            symbols = [symbols[i] for i in keep]
            timestamps = (timestamps[keep] if isinstance(timestamps, pd.DatetimeIndex)
                          else [timestamps[i] for i in keep])
            x, prediction = x[keep], prediction[keep]
        ids: str | list[str] = request_ids[0] if len(request_ids) == 1 else (
            list(request_ids) if len(request_ids) == len(symbols) else
            [request_id for request_id, count in zip(request_ids, row_counts, strict=True) for _ in range(count)])
        self._queue.put({
            "request_id": ids, "received_at": datetime.now(UTC), "model_name": model_name,
            "model_version": model_version, "variant": variant, "symbols": list(symbols),
            "timestamps_us": timestamps_us(timestamps), "feature_names": feature_names, "features": x,
            "predictions": prediction, "latency_ms": latency_ms})

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            blocks = [first]
            time.sleep(self.flush_seconds / 10)  # let a burst gather: one transaction for many requests
            while len(blocks) < 1000:
                try:
                    block = self._queue.get_nowait()
                except queue.Empty:
                    break
                if block is None:
                    stopping = True
                    break
                blocks.append(block)
            self._ship(blocks)
        self._finish_child()

    def _ship(self, blocks: list[dict[str, Any]]) -> None:
        rows = sum(len(block.get("symbols", ())) for block in blocks)
        try:
            if self._child is None or self._child.poll() is not None:
                self.restarts += 1
                log.error("serving: the request-log writer process had stopped; starting a new one")
                self._start_child()
            assert self._child is not None and self._child.stdin is not None and self._child.stdout is not None
            payload = pickle.dumps(blocks, protocol=pickle.HIGHEST_PROTOCOL)
            self._child.stdin.write(_LENGTH.pack(len(payload)) + payload)
            self._child.stdin.flush()
            answer = self._child.stdout.readline()
            if not answer:
                raise EOFError("the request-log writer process exited")
            result = json.loads(answer)
        except Exception as err:  # a log write must never take the service down; count it and say so
            self.failed += rows
            log.error("serving: could not write %d requests to the request log %s: %s", len(blocks),
                      self.directory, err)
            return
        self.written += int(result["written"])
        self.failed += int(result["failed"])
        if result.get("error"):
            log.error("serving: the request log %s refused %d rows: %s", self.directory, result["failed"],
                      result["error"])

    def _finish_child(self, timeout: float = 10.0) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            assert child.stdin is not None
            child.stdin.write(_LENGTH.pack(0))
            child.stdin.close()
            child.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):  # a dead or stuck child: do not leave it behind
            child.kill()
            child.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the thread and the writer process."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():  # the writer is stuck: stop it rather than hang the shutdown
            child = self._child
            if child is not None:
                child.kill()


def timestamps_us(timestamps: Any) -> np.ndarray:
    """UTC microseconds of a list of aware datetimes or a DatetimeIndex."""
    if isinstance(timestamps, pd.DatetimeIndex):
        return (timestamps.asi8 // 1000).astype(np.int64)
    return np.fromiter((int(t.timestamp() * 1_000_000) for t in timestamps), dtype=np.int64, count=len(timestamps))


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def _per_request(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A block of several requests (``request_id`` one per row) as one block per request, in order."""
    ids = block.get("request_id")
    if isinstance(ids, str) or not isinstance(ids, (list, tuple)) or len(set(ids)) < 2:
        return [block]
    blocks, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[start]:
            rows = slice(start, end)
            blocks.append({**block, "request_id": ids[start], "symbols": block["symbols"][rows],
                           "timestamps_us": block["timestamps_us"][rows], "features": block["features"][rows],
                           "predictions": block["predictions"][rows]})
            start = end
    return blocks


def _append(request_log: Any, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """All blocks in one transaction per file; if that is refused, request by request (a micro-batch's block split
    into its requests), so one bad request (named in the error) does not cost the others."""
    try:
        return {"written": request_log.append_blocks(blocks), "failed": 0, "error": None}
    except Exception:  # retried one by one below; what still fails is reported to the service
        written, failed, errors = 0, 0, []
        for block in (single for block in blocks for single in _per_request(block)):
            try:
                written += request_log.append_blocks([block])
            except Exception as err:
                failed += len(block.get("symbols", ()))
                errors.append(f"request {block.get('request_id')!r}: {type(err).__name__}: {err}")
        return {"written": written, "failed": failed, "error": "; ".join(errors[:5]) or None}


def main(argv: list[str] | None = None) -> int:
    """The writer process: frames of blocks in (stdin), one JSON answer line per frame out (stdout)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m alphaforge.serving.request_log_writer DIRECTORY", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stop at the end of input, after writing what was sent
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(5)  # the service and its clients come first; logging takes what CPU is left
    except OSError:
        pass
    from alphaforge.monitor import RequestLog

    request_log = RequestLog(argv[0])
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            header = _read_exactly(source, _LENGTH.size)
            if header is None:
                break
            (size,) = _LENGTH.unpack(header)
            if size == 0:
                break
            payload = _read_exactly(source, size)
            if payload is None:
                break
            sink.write(json.dumps(_append(request_log, pickle.loads(payload))).encode() + b"\n")
            sink.flush()
    finally:
        request_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
