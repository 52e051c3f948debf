"""The models a service hosts: loaded from the MLflow registry by alias, kept fresh, routed, counted, logged.

:class:`ModelHost` is what the BentoML service and the gRPC server share (one per service process):

* **Loading.** ``models:/NAME@champion`` is resolved to a version, its folder downloaded once into
  ``serving.cache_dir/NAME/VERSION`` (a download goes to a temporary folder renamed into place, so a
  crash never leaves half a model) and loaded as a :class:`ServedModel`, warmed by one prediction.
* **Fallback.** If the champion's version fails to load, the host serves the version that champion
  replaced (the ``alphaforge.previous_champion`` tag the promote stage writes), or keeps serving what
  it already had; ``model_info`` and the metrics say so (``fallback`` with the reason).
* **Per-request fallback.** With ``serving.request_fallback`` each champion slot keeps a *standby*: the
  model it served before the alias moved (the last good model), else the previous champion by tag. When
  the serving model raises on a request (a model fault, not bad input), the standby answers it: the
  answer's variant is ``fallback`` with a ``fallback_reason``, counted (``fallback`` variant, ``model_faults``)
  in ``/metrics`` and ``model_info``. A challenger that raises is answered by the champion the same way.
  With no standby loaded the fault propagates (a 5xx, as before).
* **Alias moves.** A background thread polls the registry every ``serving.poll_seconds`` (and
  ``POST /admin/reload`` polls at once). A new version is loaded and warmed *beside* the one serving;
  only then is the reference swapped (one assignment), so no request sees a half-loaded model.
* **Several models.** Models other than ``serving.model_name`` are loaded on first request by name,
  kept in an LRU bounded by ``serving.max_models`` and ``serving.max_cache_mb`` (folder size on disk
  as the estimate of what a model costs).
* **A/B and shadow.** ``serving.challenger_share`` of requests (by a hash of the request id, so a
  retried request lands on the same side) are answered by the ``challenger`` alias; with
  ``serving.shadow`` the challenger also predicts every champion request off the hot path. Every answer
  names its variant; per-variant counts and latencies are kept for ``/metrics`` and ``model_info``.
* **Request log.** Predicted rows are queued and shipped in batches to a writer *process*
  (:mod:`alphaforge.serving.request_log_writer`) that appends them to :class:`alphaforge.monitor.RequestLog`
  (what ``alphaforge monitor`` reads), so logging never holds this process's GIL; a request of more than
  ``serving.request_log_max_rows`` rows logs an evenly spaced sample of that many (logging costs ~30 µs a row).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.runtime import BatchingParams, ServingParams  # noqa: F401  (re-exported)
from alphaforge.serving.model import BadRequest, Prediction, ServedModel, load_served_model
from alphaforge.serving.request_log_writer import RequestLogWriter
from alphaforge.serving.stats import VariantStats, prometheus_text

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, FALLBACK = "champion", "challenger", "fallback"
PREVIOUS_CHAMPION_TAG = "alphaforge.previous_champion"


_REQUEST_COUNTER = itertools.count()


def new_request_id() -> str:
    """A unique request id, cheaply: process id, start time and a counter (``uuid4`` reads the OS entropy pool,
    which took milliseconds per call on a loaded virtual machine; even ``getpid`` is a system call)."""
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_COUNTER):x}"


def _new_request_id_prefix() -> None:
    global _REQUEST_ID_PREFIX
    _REQUEST_ID_PREFIX = f"{os.getpid():x}-{time.time_ns():x}-"


_REQUEST_ID_PREFIX = ""
_new_request_id_prefix()
os.register_at_fork(after_in_child=_new_request_id_prefix)  # a forked worker is another process: its own ids


class ModelFault(RuntimeError):
    """The serving model raised on a request and no fallback could answer it (the transport's 5xx)."""


class NoModel(RuntimeError):
    """No version of a requested model can be served (not registered, no alias, nothing loadable)."""


@dataclass
class Slot:
    """What one (model name, alias) serves now, and why."""

    name: str
    alias: str
    model: ServedModel | None = None
    wanted_version: str | None = None
    fallback_reason: str | None = None
    last_error: str | None = None
    last_checked: float = 0.0
    swaps: int = 0
    standby: ServedModel | None = None  # answers a request the serving model raises on
    standby_origin: str | None = None  # "last good" (served before the alias moved) or "previous champion"

    def info(self) -> dict[str, Any]:
        return {"alias": self.alias, "serving_version": self.model.version if self.model else None,
                "alias_version": self.wanted_version, "fallback": self.fallback_reason is not None,
                "fallback_reason": self.fallback_reason, "last_error": self.last_error, "swaps": self.swaps,
                "standby_version": self.standby.version if self.standby else None,
                "standby_origin": self.standby_origin}


class Registry:
    """The registry reads the host needs (a seam for the tests of the routing logic, real MLflow otherwise)."""

    def aliases(self, name: str) -> dict[str, str]:
        from alphaforge import tracking

        with tracking.fail_fast_http(1, 10):
            return tracking.get_model_aliases(name)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        from alphaforge import tracking

        with tracking.fail_fast_http(1, 10):
            return tracking.get_model_version(name, version).tags

    def download(self, name: str, version: str, destination: Path) -> Path:
        from alphaforge import tracking

        with tracking.fail_fast_http(1, 30):
            return tracking.download_model_version(name, version, destination)


class ModelHost:
    """Loads, refreshes, routes and counts the served models (see the module docstring)."""

    def __init__(self, params: ServingParams, *, registry: Registry | None = None,
                 clock: Callable[[], float] = time.time, state_store: Any = None) -> None:
        self.params = params
        self.state_store = state_store  # where online weights live (serving/online_weights.py); None: in memory
        self.registry = registry or Registry()
        self.clock = clock
        self.cache_dir = Path(params.cache_dir).resolve()
        self._lock = threading.RLock()
        self._slots: OrderedDict[tuple[str, str], Slot] = OrderedDict()
        self.stats: dict[str, VariantStats] = {CHAMPION: VariantStats(), CHALLENGER: VariantStats(),
                                               FALLBACK: VariantStats()}
        self.bad_requests = 0
        self.model_faults = 0  # requests the serving model raised on (answered by a fallback or not)
        self.last_fault: dict[str, Any] | None = None
        self.shadow_errors = 0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow") if params.shadow else None
        self.request_log = (RequestLogWriter(params.request_log_dir, params.request_log_flush_seconds)
                            if params.request_log else None)
        self.started_at = clock()

    # ----------------------------------------------------------------------------------- loading

    def _local_folder(self, name: str, version: str) -> Path:
        folder = self.cache_dir / name / str(version)
        if (folder / "MLmodel").is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder.parent))
        try:
            downloaded = self.registry.download(name, version, staging)
            if not (Path(downloaded) / "MLmodel").is_file():
                raise FileNotFoundError(f"{name} v{version}: the downloaded folder holds no MLmodel file")
            if folder.exists():
                shutil.rmtree(folder)
            Path(downloaded).rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _load_version(self, name: str, version: str) -> ServedModel:
        model = load_served_model(self._local_folder(name, version), name=name, version=version,
                                  torch_threads=self.params.torch_threads)
        if self.params.online_weights:
            self._attach_online_weights(model)
        return model

    def _attach_online_weights(self, model: ServedModel) -> None:
        """Hedge weights from the model's ``hedge_seed`` (or the state saved for this version); none, with a log
        line, for a model without a seed or without the row path."""
        import json

        from alphaforge.pyfunc import HEDGE_ARTIFACT
        from alphaforge.serving.model import model_artifacts
        from alphaforge.serving.online_weights import MemoryState, OnlineWeights

        seed_path = model_artifacts(model.source_dir).get(HEDGE_ARTIFACT)
        if seed_path is None or not model.row_wise:
            log.warning("serving: %s v%s keeps its combiner: %s", model.name, model.version,
                        "no hedge_seed artifact" if seed_path is None else "online weights need the row path")
            return
        seed = json.loads(Path(seed_path).read_text())
        if list(seed["families"]) != model.families:
            raise ValueError(f"{model.name} v{model.version}: hedge_seed is over {seed['families']}, the ensemble "
                             f"over {model.families}")
        if self.state_store is None:
            self.state_store = MemoryState()
        model.online = OnlineWeights.open(seed, store=self.state_store,
                                          key=f"{self.params.online_weights_prefix}{model.name}:{model.version}")
        log.info("serving: %s v%s online weights %s (from the %s)", model.name, model.version,
                 model.online.info()["weights"], model.online.source)

    def record_outcomes(self, name: str | None, x_of: Callable[[ServedModel], np.ndarray],
                        timestamps: Sequence[Any], realised: np.ndarray) -> dict[str, Any]:
        """Move the champion's online weights by realised returns (one Hedge step per bar timestamp)."""
        model = self.model(name)
        if model.online is None:
            raise BadRequest(f"model {model.name} v{model.version} has no online weights (serving.online_weights "
                             "off, or no hedge_seed)", status=409)
        applied = model.online.update(pd.DatetimeIndex(timestamps), model.family_predictions(x_of(model)), realised)
        return {"model_name": model.name, "model_version": model.version, "applied_steps": applied,
                **model.online.info()}

    def _refresh(self, slot: Slot) -> None:
        """Bring ``slot`` to the version its alias points at, loading beside the current model, then swapping."""
        slot.last_checked = self.clock()
        try:
            aliases = self.registry.aliases(slot.name)
        except Exception as err:  # registry unreachable: keep serving what we have
            slot.last_error = f"registry unreachable: {err}"
            if slot.model is None:
                raise NoModel(f"model {slot.name!r}: the registry is unreachable and nothing is loaded yet "
                              f"({err})") from err
            return
        wanted = aliases.get(slot.alias)
        slot.wanted_version = wanted
        if wanted is None:
            if slot.model is None:
                raise NoModel(f"model {slot.name!r} has no {slot.alias!r} alias (aliases: {aliases or 'none'}); "
                              "run the promote stage or set the alias")
            return
        if slot.model is not None and slot.model.version == wanted and slot.fallback_reason is None:
            return
        try:
            loaded = self._load_version(slot.name, wanted)
        except Exception as err:
            reason = f"version {wanted} (alias {slot.alias}) failed to load: {type(err).__name__}: {err}"
            log.error("serving: %s", reason)
            slot.last_error = reason
            if slot.model is not None and slot.fallback_reason is not None:
                return  # already on a fallback; keep it
            if slot.model is not None:
                slot.fallback_reason = reason + f"; still serving v{slot.model.version}"
                return
            previous = self._previous_champion(slot.name, wanted)
            if previous is None:
                raise NoModel(f"model {slot.name!r}: {reason}; no previous champion to fall back to") from err
            try:
                fallback = self._load_version(slot.name, previous)
            except Exception as second:
                raise NoModel(f"model {slot.name!r}: {reason}; the previous champion v{previous} failed too: "
                              f"{second}") from second
            slot.model, slot.fallback_reason = fallback, reason + f"; serving the previous champion v{previous}"
            slot.standby, slot.standby_origin = None, None  # nothing better than the previous champion is known
            slot.swaps += 1
            return
        standby, origin = self._standby_for(slot, loaded)
        with self._lock:
            old = slot.model
            slot.model, slot.fallback_reason, slot.last_error = loaded, None, None
            slot.standby, slot.standby_origin = standby, origin
            slot.swaps += 1
        log.info("serving: %s@%s now v%s (was %s; standby %s)", slot.name, slot.alias, wanted,
                 f"v{old.version}" if old else "nothing", f"v{standby.version}" if standby else "none")

    def _standby_for(self, slot: Slot, loaded: ServedModel) -> tuple[ServedModel | None, str | None]:
        """What answers for ``loaded`` when it raises: the model it replaces (the last good one), else the
        version it replaced as champion (``alphaforge.previous_champion``), else what stood by already."""
        if not self.params.request_fallback or slot.alias == CHALLENGER:
            return None, None
        old = slot.model
        if old is not None and old.version != loaded.version and slot.fallback_reason is None:
            return old, "last good"
        if slot.standby is not None and slot.standby.version != loaded.version:
            return slot.standby, slot.standby_origin
        previous = self._previous_champion(slot.name, loaded.version)
        if previous is None or previous == loaded.version:
            return None, None
        try:
            return self._load_version(slot.name, previous), "previous champion"
        except Exception as err:
            log.warning("serving: %s v%s (the previous champion) cannot stand by: %s", slot.name, previous, err)
            return None, None

    def _previous_champion(self, name: str, version: str) -> str | None:
        try:
            previous = self.registry.version_tags(name, version).get(PREVIOUS_CHAMPION_TAG)
        except Exception:
            return None
        return previous if previous and previous not in ("none", "-") else None

    def slot(self, name: str | None = None, alias: str | None = None) -> Slot:
        """The slot of ``name@alias`` (loaded on first use; LRU-evicting other extra models when over budget)."""
        key = (name or self.params.model_name, alias or self.params.alias)
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot.model is not None:
                self._slots.move_to_end(key)
                return slot
            if slot is None:
                slot = Slot(name=key[0], alias=key[1])
        self._refresh(slot)  # may raise NoModel; outside the lock: loading takes a while
        with self._lock:
            self._slots[key] = slot
            self._slots.move_to_end(key)
            self._evict()
        return slot

    def _evict(self) -> None:
        """Drop least-recently-used slots beyond the count or memory budget (never the main champion)."""
        main = (self.params.model_name, self.params.alias)
        budget = self.params.max_cache_mb * 1024 * 1024

        def over() -> bool:
            size = sum(s.model.size_bytes for s in self._slots.values() if s.model is not None)
            return len(self._slots) > self.params.max_models or size > budget

        for key in list(self._slots):
            if not over():
                break
            if key != main and len(self._slots) > 1:
                log.info("serving: evicting %s@%s from the model cache", *key)
                del self._slots[key]

    def loaded(self) -> list[Slot]:
        with self._lock:
            return list(self._slots.values())

    def start(self) -> None:
        """Load the main champion now (raising :class:`NoModel` if impossible) and start polling."""
        self.slot()
        self.start_polling()

    def start_polling(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="registry-poll", daemon=True)
            self._poller.start()

    def ready(self) -> bool:
        """Whether the main model has a version loaded."""
        with self._lock:
            slot = self._slots.get((self.params.model_name, self.params.alias))
            return slot is not None and slot.model is not None

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.params.poll_seconds):
            self.poll()

    def poll(self) -> dict[str, Any]:
        """Check every loaded alias against the registry now; what changed."""
        changes: dict[str, Any] = {}
        if not self.ready():
            try:
                self.slot()
            except NoModel as err:
                changes[f"{self.params.model_name}@{self.params.alias}"] = {"before": None, "after": None,
                                                                            "error": str(err)}
                return changes
        for slot in self.loaded():
            before = slot.model.version if slot.model else None
            try:
                self._refresh(slot)
            except NoModel as err:
                slot.last_error = str(err)
            after = slot.model.version if slot.model else None
            changes[f"{slot.name}@{slot.alias}"] = {"before": before, "after": after, "error": slot.last_error}
        if self.params.challenger_share > 0 or self.params.shadow:
            try:
                self.slot(alias=CHALLENGER)
            except NoModel:
                pass
        return changes

    def close(self) -> None:
        self._stop.set()
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=True)
        if self.request_log is not None:
            self.request_log.close()

    # ----------------------------------------------------------------------------------- routing

    def choose_variant(self, request_id: str, name: str | None) -> str:
        """``challenger`` for ``challenger_share`` of request ids (stable per id), else ``champion``."""
        share = self.params.challenger_share
        if share <= 0 or (name not in (None, self.params.model_name)):
            return CHAMPION
        bucket = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") / 2 ** 64
        return CHALLENGER if bucket < share else CHAMPION

    def _model_for(self, name: str | None, variant: str) -> tuple[ServedModel, str]:
        """The model answering ``variant`` and the variant it really is (the champion when no challenger loads)."""
        if variant == CHALLENGER:
            try:
                slot = self.slot(name, CHALLENGER)
                if slot.model is not None:
                    return slot.model, CHALLENGER
            except NoModel:
                pass
        slot = self.slot(name, self.params.alias)
        if slot.model is None:
            raise NoModel(f"model {slot.name!r}: nothing loaded ({slot.last_error})")
        return slot.model, CHAMPION

    def model(self, name: str | None = None) -> ServedModel:
        """The champion (or configured alias) of ``name``; :class:`BadRequest` 404 for an unknown model."""
        try:
            return self._model_for(name, CHAMPION)[0]
        except NoModel as err:
            if name not in (None, self.params.model_name):
                raise BadRequest(f"unknown model {name!r}: {err}", status=404) from err
            raise

    def predict(self, *, name: str | None, build: Callable[[ServedModel], tuple[np.ndarray, Sequence[str], Any]],
                request_id: str | None = None, variant: str | None = None) -> tuple[Prediction, ServedModel]:
        """Route, validate (``build`` turns the request into the model's matrix, symbols, timestamps), predict, count.

        ``build`` raises :class:`BadRequest` for bad input; the transport answers it and calls
        :meth:`count_bad_request`.
        """
        started = time.perf_counter()
        request_id = request_id or new_request_id()
        model, served_variant = self.route(name, variant or self.choose_variant(request_id, name))
        x, symbols, timestamps = build(model)
        fallback_reason = None
        try:
            prediction, lower, upper = model.predict(x, symbols, timestamps)
        except BadRequest:
            raise
        except Exception as fault:
            model, x, symbols, timestamps, fallback_reason, (prediction, lower, upper) = self._fall_back(
                name, model, served_variant, fault, build)
            served_variant = FALLBACK
        latency_ms = (time.perf_counter() - started) * 1000.0
        answer = Prediction(prediction, lower, upper, model.name, model.version, served_variant, fallback_reason)
        self.record(name, request_id, model, served_variant, x, symbols, timestamps, prediction, latency_ms)
        return answer, model

    def route(self, name: str | None, chosen: str) -> tuple[ServedModel, str]:
        """The model answering a request routed to ``chosen`` (champion or challenger) and the variant it really
        is (the champion when no challenger loads); :class:`BadRequest` 404 for an unknown model."""
        if chosen == CHALLENGER:
            return self._model_for(name, CHALLENGER)
        return self.model(name), CHAMPION

    def record(self, name: str | None, request_id: str, model: ServedModel, variant: str, x: np.ndarray,
               symbols: Sequence[str], timestamps: Any, prediction: np.ndarray, latency_ms: float) -> None:
        """Count, log and shadow one answered request (:meth:`predict`, and the micro-batcher for each request
        of a batch it predicted in one call)."""
        self._count(variant, len(prediction), latency_ms)
        self._log(request_id, model, variant, x, symbols, timestamps, prediction, latency_ms)
        if self._shadow_pool is not None and variant == CHAMPION:
            self._shadow_pool.submit(self._shadow, name, request_id, x, symbols, timestamps)

    def record_batch(self, name: str | None, model: ServedModel, variant: str, request_ids: Sequence[str],
                     row_counts: Sequence[int], x: np.ndarray, symbols: Sequence[str], timestamps: Sequence[Any],
                     prediction: np.ndarray, latency_ms: float) -> None:
        """:meth:`record` for the requests of a micro-batch predicted in one call (their rows consecutive in ``x``,
        ``row_counts`` rows each, ``latency_ms`` each): counted under one lock, logged as one block of the request
        log (each row under its own request id), shadowed request by request."""
        with self._lock:
            stats = self.stats[variant]
            stats.requests += len(request_ids)
            stats.rows += len(prediction)
            stats.latency_ms_sum += latency_ms * len(request_ids)
        if self.request_log is not None:
            self.request_log.log_requests(request_ids, row_counts, model.name, model.version, model.features, variant,
                                          x, symbols, timestamps, prediction, latency_ms,
                                          max_rows=self.params.request_log_max_rows)
        if self._shadow_pool is not None and variant == CHAMPION:
            bounds = np.cumsum([0, *row_counts]).tolist()
            for i, request_id in enumerate(request_ids):
                rows = slice(bounds[i], bounds[i + 1])
                self._shadow_pool.submit(self._shadow, name, request_id, x[rows], symbols[rows], timestamps[rows])

    def _fall_back(self, name: str | None, failed: ServedModel, variant: str, fault: Exception,
                   build: Callable[[ServedModel], tuple[np.ndarray, Sequence[str], Any]]) -> tuple[Any, ...]:
        """The standby's answer to a request ``failed`` raised on: (model, x, symbols, timestamps, reason,
        outputs); :class:`ModelFault` when none stands by or it fails too."""
        what = f"{type(fault).__name__}: {fault}"
        reason = f"{failed.name} v{failed.version} ({variant}) raised {what}"
        with self._lock:
            self.model_faults += 1
            self.stats[variant].errors += 1
            slot = self._slots.get((name or self.params.model_name, self.params.alias))
        if variant == CHALLENGER:
            standby = slot.model if slot is not None else None
            origin = "champion"
        else:
            standby = slot.standby if slot is not None and slot.model is failed else None
            origin = slot.standby_origin if standby is not None else None
        log.error("serving: %s; %s", reason, f"answered by v{standby.version} ({origin})" if standby
                  else "no fallback loaded")
        if standby is None:
            self._note_fault(reason, None)
            raise ModelFault(f"{reason}; no fallback model is loaded") from fault
        reason += f"; answered by {standby.name} v{standby.version} ({origin})"
        self._note_fault(reason, standby.version)
        try:
            x, symbols, timestamps = build(standby)
            outputs = standby.predict(x, symbols, timestamps)
        except Exception as second:
            raise ModelFault(f"{reason}, which failed too: {type(second).__name__}: {second}") from fault
        return standby, x, symbols, timestamps, reason, outputs

    def _note_fault(self, reason: str, fallback_version: str | None) -> None:
        with self._lock:
            self.last_fault = {"at": datetime.now(UTC).isoformat(), "reason": reason,
                               "fallback_version": fallback_version}

    def _count(self, variant: str, rows: int, latency_ms: float) -> None:
        with self._lock:
            stats = self.stats[variant]
            stats.requests += 1
            stats.rows += rows
            stats.latency_ms_sum += latency_ms

    def _champion_model(self, name: str | None) -> ServedModel | None:
        with self._lock:
            slot = self._slots.get((name or self.params.model_name, self.params.alias))
            return slot.model if slot else None

    def _shadow(self, name: str | None, request_id: str, x: np.ndarray, symbols: Sequence[str],
                timestamps: Any) -> None:
        started = time.perf_counter()
        try:
            slot = self.slot(name, CHALLENGER)
            model = slot.model
            if model is None or list(model.features) != list(self._champion_model(name).features):  # type: ignore[union-attr]
                return
            prediction, _, _ = model.predict(x, symbols, timestamps)
        except Exception:
            with self._lock:
                self.shadow_errors += 1
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._count(CHALLENGER, len(prediction), latency_ms)
        self._log(request_id, model, CHALLENGER, x, symbols, timestamps, prediction, latency_ms)

    def _log(self, request_id: str, model: ServedModel, variant: str, x: np.ndarray, symbols: Sequence[str],
             timestamps: Any, prediction: np.ndarray, latency_ms: float) -> None:
        if self.request_log is not None:
            self.request_log.log_requests([request_id], [len(symbols)], model.name, model.version, model.features,
                                          variant, x, symbols, timestamps, prediction, latency_ms,
                                          max_rows=self.params.request_log_max_rows)

    def count_bad_request(self) -> None:
        with self._lock:
            self.bad_requests += 1

    def count_error(self, variant: str = CHAMPION) -> None:
        with self._lock:
            self.stats[variant].errors += 1

    # ----------------------------------------------------------------------------------- reporting

    def info(self) -> dict[str, Any]:
        """What ``/model_info`` answers: every loaded slot, the routing settings and the counters."""
        slots = []
        for slot in self.loaded():
            entry = slot.info()
            entry["name"] = slot.name
            if slot.model is not None:
                entry["model"] = slot.model.info()
            slots.append(entry)
        main = self._slots.get((self.params.model_name, self.params.alias))
        return {
            "model_name": self.params.model_name, "alias": self.params.alias,
            "serving_version": main.model.version if main and main.model else None,
            "fallback": bool(main and main.fallback_reason), "fallback_reason": main.fallback_reason if main else None,
            "challenger_share": self.params.challenger_share, "shadow": self.params.shadow,
            "models": slots, "variants": {k: v.as_dict() for k, v in self.stats.items()},
            "bad_requests": self.bad_requests, "shadow_errors": self.shadow_errors,
            "request_fallback": {"enabled": self.params.request_fallback,
                                 "standby_version": main.standby.version if main and main.standby else None,
                                 "standby_origin": main.standby_origin if main else None,
                                 "model_faults": self.model_faults, "answered": self.stats[FALLBACK].requests,
                                 "last_fault": self.last_fault},
            "request_log": None if self.request_log is None else {
                "directory": str(self.request_log.directory), "written_rows": self.request_log.written,
                "failed_rows": self.request_log.failed, "writer_restarts": self.request_log.restarts},
            "uptime_seconds": round(self.clock() - self.started_at, 1),
        }

    def prometheus(self) -> str:
        """The host's own counters in Prometheus text format (appended to BentoML's ``/metrics``)."""
        return prometheus_text(self.stats, bad_requests=self.bad_requests, model_faults=self.model_faults,
                               slots=self.loaded())
