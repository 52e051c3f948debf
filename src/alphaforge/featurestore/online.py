"""The online store: the latest feature vector of each symbol, with its bar timestamp and feature version.

Redis when ``feature_store.redis_url`` is set (one key per symbol, ``{key_prefix}{symbol}``, with a
TTL; writes are pipelined, reads are one ``MGET``); otherwise an in-process dictionary with the
same behaviour (TTL included), which only that process can read.

A value is a one-line JSON header (``{"t": bar timestamp in UTC ns, "v": feature version,
"s": schema id}``), a newline, then the features as little-endian float64. The feature names of a
schema id live once under ``{key_prefix}__schema__:{id}`` (same TTL, refreshed on every write),
so a vector costs 8 bytes a feature and reads back bit for bit.

The serving side needs only::

    store = OnlineStore.from_params(load_params().feature_store)
    frame = store.read(["AAPL", "MSFT"], feature_version=spec["feature_version"])
    # columns: timestamp, symbol, <features...>, feature_version
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from alphaforge.featurestore.config import FeatureStoreParams
from alphaforge.schema import DataError

_SCHEMA = "__schema__:"


class StoreUnavailable(RuntimeError):
    """The Redis server named by feature_store.redis_url cannot be reached."""


class MissingFeatures(KeyError):
    """Some symbols have no stored feature vector (never written, or expired after ttl_seconds)."""

    def __init__(self, symbols: Sequence[str], prefix: str) -> None:
        super().__init__(f"no stored features for {list(symbols)} under key prefix {prefix!r} "
                         "(never streamed, or older than feature_store.ttl_seconds)")
        self.symbols = list(symbols)


class FeatureVersionMismatch(DataError):
    """Stored features were made by another feature version than the caller (the model) expects."""


@dataclass(frozen=True)
class FeatureVectors:
    """Stored vectors as arrays: row ``i`` of ``values`` is ``symbols[i]``'s, as of ``timestamps_ns[i]``."""

    timestamps_ns: np.ndarray
    symbols: list[str]
    names: list[str]
    values: np.ndarray
    feature_versions: list[str]

    def frame(self) -> pd.DataFrame:
        """timestamp (UTC), symbol, the features, feature_version (also in ``attrs``)."""
        columns: dict[str, Any] = {
            "timestamp": pd.DatetimeIndex(self.timestamps_ns.view("datetime64[ns]")).tz_localize("UTC"),
            "symbol": np.asarray(self.symbols, dtype=object),
        }
        for i, name in enumerate(self.names):
            columns[name] = self.values[:, i]
        columns["feature_version"] = np.asarray(self.feature_versions, dtype=object)
        frame = pd.DataFrame(columns)
        if len(set(self.feature_versions)) == 1:
            frame.attrs["feature_version"] = self.feature_versions[0]
        return frame


class _DictClient:
    """The few Redis commands the store uses, over a dictionary (used when no URL is configured)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            self._data.pop(key, None)
            return None
        return item[0]

    def set(self, key: str, value: bytes, ex: int) -> None:
        with self._lock:
            self._data[key] = (value, time.monotonic() + ex)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(k) for k in keys]

    def get(self, key: str) -> bytes | None:
        return self.mget([key])[0]

    def ttl(self, key: str) -> int:
        with self._lock:
            if self._live(key) is None:
                return -2
            return max(0, round(self._data[key][1] - time.monotonic()))

    def delete(self, *keys: str) -> int:
        with self._lock:
            return sum(self._data.pop(k, None) is not None for k in keys)

    def scan_iter(self, match: str, count: int = 1000) -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._data if fnmatch.fnmatchcase(k, match) and self._live(k) is not None]
        return iter(keys)

    def pipeline(self, transaction: bool = False) -> _DictClient:
        return self

    def execute(self) -> list[Any]:
        return []


def _escape_glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)


class OnlineStore:
    """Latest feature vector per symbol; see the module docstring for the layout."""

    def __init__(self, client: Any, *, key_prefix: str, ttl_seconds: int, url: str | None = None) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.ttl_seconds = int(ttl_seconds)
        self.url = url
        self._schemas: dict[str, list[str]] = {}

    @classmethod
    def from_params(cls, params: FeatureStoreParams, *, redis_url: str | None = None) -> OnlineStore:
        """Redis at ``redis_url`` (default ``params.redis_url``), or an in-process dictionary when neither is set."""
        url = redis_url or params.redis_url
        if not url:
            return cls(_DictClient(), key_prefix=params.key_prefix, ttl_seconds=params.ttl_seconds)
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        return cls(client, key_prefix=params.key_prefix, ttl_seconds=params.ttl_seconds, url=url)

    @property
    def backend(self) -> str:
        return "redis" if self.url else "in-process dictionary"

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self.url is None:
            return function(*args, **kwargs)
        import redis

        try:
            return function(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise StoreUnavailable(f"feature store: cannot {what} Redis at {self.url}: {err}") from err

    # ---------------------------------------------------------------------------------------- write

    def write(self, timestamp_ns: int | np.ndarray, symbols: Sequence[str], names: Sequence[str],
              values: np.ndarray, feature_version: str) -> None:
        """Store each symbol's feature vector (a row of ``values``) as of its bar ``timestamp_ns``, in one
        pipelined round trip; each key's TTL starts again."""
        values = np.ascontiguousarray(values, dtype="<f8")
        if values.shape != (len(symbols), len(names)):
            raise ValueError(f"OnlineStore.write: values have shape {values.shape}, expected "
                             f"({len(symbols)}, {len(names)})")
        stamps = np.broadcast_to(np.asarray(timestamp_ns, dtype=np.int64), (len(symbols),))
        schema = hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()[:16]
        ttl = self.ttl_seconds
        pipe = self.client.pipeline(transaction=False)
        pipe.set(f"{self.key_prefix}{_SCHEMA}{schema}", json.dumps(list(names)).encode(), ex=ttl)
        prefix = self.key_prefix
        version = json.dumps(str(feature_version))
        for i, symbol in enumerate(symbols):
            header = f'{{"t":{int(stamps[i])},"v":{version},"s":"{schema}"}}\n'.encode()
            pipe.set(f"{prefix}{symbol}", header + values[i].tobytes(), ex=ttl)
        self._call("write to", pipe.execute)
        self._schemas[schema] = list(names)

    # ----------------------------------------------------------------------------------------- read

    def _names(self, schema: str) -> list[str]:
        if schema not in self._schemas:
            raw = self._call("read from", self.client.get, f"{self.key_prefix}{_SCHEMA}{schema}")
            if raw is None:
                raise MissingFeatures([f"(feature names of schema {schema})"], self.key_prefix)
            self._schemas[schema] = json.loads(raw)
        return self._schemas[schema]

    def read_vectors(self, symbols: str | Sequence[str], *, feature_version: str | None = None,
                     missing: Literal["raise", "skip"] = "raise") -> FeatureVectors:
        """The stored vectors of ``symbols`` as arrays (the fast path: one MGET, no pandas).

        A symbol with nothing stored raises :class:`MissingFeatures` (``missing="skip"`` leaves it
        out); a stored version other than ``feature_version`` (when given) raises
        :class:`FeatureVersionMismatch`.
        """
        wanted = [symbols] if isinstance(symbols, str) else list(symbols)
        raws = self._call("read from", self.client.mget, [f"{self.key_prefix}{s}" for s in wanted]) if wanted else []
        absent = [s for s, raw in zip(wanted, raws, strict=True) if raw is None]
        if absent and missing == "raise":
            raise MissingFeatures(absent, self.key_prefix)
        rows: list[np.ndarray] = []
        stamps: list[int] = []
        versions: list[str] = []
        found: list[str] = []
        names: list[str] | None = None
        for symbol, raw in zip(wanted, raws, strict=True):
            if raw is None:
                continue
            cut = raw.index(b"\n")
            header = json.loads(raw[:cut])
            if feature_version is not None and header["v"] != str(feature_version):
                raise FeatureVersionMismatch(
                    f"feature store: symbol {symbol!r} has features of version {header['v']!r}, the model needs "
                    f"{str(feature_version)!r}; re-stream the bars with the matching feature definitions")
            these = self._names(header["s"])
            if names is None:
                names = these
            elif these != names:
                raise DataError(f"feature store: symbol {symbol!r} was stored with other feature names than "
                                f"{found[0]!r}; restart the streamer so every symbol has the same feature set")
            rows.append(np.frombuffer(raw, dtype="<f8", offset=cut + 1))
            stamps.append(header["t"])
            versions.append(header["v"])
            found.append(symbol)
        names = names or []
        return FeatureVectors(
            timestamps_ns=np.asarray(stamps, dtype=np.int64), symbols=found, names=names,
            values=np.vstack(rows) if rows else np.empty((0, len(names))), feature_versions=versions,
        )

    def read(self, symbols: str | Sequence[str], *, feature_version: str | None = None,
             features: Sequence[str] | None = None, missing: Literal["raise", "skip"] = "raise") -> pd.DataFrame:
        """The latest stored features of ``symbols``, one row per symbol in the order asked.

        Columns: ``timestamp`` (UTC, the bar the features are as of), ``symbol``, the features (only
        ``features``, in that order, when given: a model's ``spec["features"]``), ``feature_version``;
        ``frame.attrs["feature_version"]`` too. A requested feature the store does not hold raises
        :class:`~alphaforge.schema.DataError` naming it; other errors as :meth:`read_vectors`.
        """
        vectors = self.read_vectors(symbols, feature_version=feature_version, missing=missing)
        if features is not None and vectors.symbols:
            absent = [f for f in features if f not in vectors.names]
            if absent:
                raise DataError(f"feature store: the stored vectors lack feature(s) {absent}; the streamer's plan "
                                "(feature_store.bar_columns, multi_symbol, intraday, features.*) must cover the "
                                "model's features")
            position = {name: i for i, name in enumerate(vectors.names)}
            vectors = FeatureVectors(vectors.timestamps_ns, vectors.symbols, list(features),
                                     vectors.values[:, [position[f] for f in features]], vectors.feature_versions)
        return vectors.frame()

    def symbols(self) -> list[str]:
        """Every symbol with a stored vector (a SCAN: for tools and tests, not the request path)."""
        pattern = _escape_glob(self.key_prefix) + "*"
        keys = self._call("scan", lambda: list(self.client.scan_iter(match=pattern, count=1000)))
        out = []
        for key in keys:
            name = (key.decode() if isinstance(key, bytes) else key)[len(self.key_prefix):]
            if not name.startswith(_SCHEMA):
                out.append(name)
        return sorted(out)

    def ttl(self, symbol: str) -> int:
        """Seconds until the symbol's vector expires (-2: not stored)."""
        return int(self._call("read from", self.client.ttl, f"{self.key_prefix}{symbol}"))

    def clear(self) -> int:
        """Delete every key under the prefix (vectors and schemas); how many there were."""
        pattern = _escape_glob(self.key_prefix) + "*"
        keys = self._call("scan", lambda: list(self.client.scan_iter(match=pattern, count=1000)))
        return int(self._call("delete from", self.client.delete, *keys)) if keys else 0

