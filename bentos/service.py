"""The alphaforge BentoML service: the champion ensemble over HTTP, with a gRPC twin in the same process.

Start it from the repository root with ``alphaforge serve start`` (or
``bentoml serve bentos.service:AlphaforgeService``); settings come from params.yaml's ``serving``
section and the environment (``MLFLOW_TRACKING_URI``, ``ALPHAFORGE_MODEL_NAME``, ``ALPHAFORGE_GRPC_PORT``,
...: see the README). All logic lives in :mod:`alphaforge.serving`; this file is the BentoML glue.

Endpoints (POST unless noted): ``/predict`` (feature rows, JSON), ``/predict_bars`` (raw recent bars: the
features are computed by the training code), ``/predict_symbols`` (latest stored features per symbol, from
the online feature store when one is configured), ``/model_info``, ``/admin/reload``; the fast routes
``/v1/predict_arrow`` (Arrow IPC body and answer, for large batches) and ``/v1/predict`` (the same JSON as
``/predict`` without BentoML's request model; with ``serving.batching`` on, concurrent requests are predicted
together, see :mod:`alphaforge.serving.batching`), answered in front of BentoML's middleware
(:mod:`alphaforge.serving.front`); BentoML's ``/livez``, ``/readyz`` (ready once the champion is loaded) and
``/metrics`` (with the service's own counters appended).

Lean on purpose: the fast routes skip BentoML's middleware altogether, OpenTelemetry spans skip the other predict
routes and the access log is off (together they cost more than the model); ``/metrics`` stays, with BentoML's
metrics of the other routes and the service's own counters of every predict route (cheap increments under a
lock).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.responses import Response

from alphaforge.serving import api
from alphaforge.serving.admin import (
    ADMIN_TOKEN_ENV,
    AdminTokenMissing,
    admin_token,
    authorised,
    listening_hosts,
    stop_the_server,
)
from alphaforge.serving.batching import MicroBatcher
from alphaforge.serving.front import FAST_ROUTES, FrontedService
from alphaforge.serving.host import ModelFault, ModelHost, NoModel
from alphaforge.serving.live import LiveFigures
from alphaforge.serving.model import BadRequest

log = logging.getLogger("alphaforge.serving")


class RequestRefused(BentoMLException):
    """A 4xx with the message that names what is wrong."""

    def __init__(self, message: str, status: int) -> None:
        from http import HTTPStatus

        super().__init__(message, error_code=HTTPStatus(status))


def _refuse(host: ModelHost, err: BadRequest) -> RequestRefused:
    host.count_bad_request()
    return RequestRefused(str(err), err.status)


def _unavailable(err: NoModel) -> BentoMLException:
    from bentoml.exceptions import ServiceUnavailable

    return ServiceUnavailable(str(err))


def _faulted(err: ModelFault) -> BentoMLException:
    from bentoml.exceptions import InternalServerError

    return InternalServerError(str(err))


def _encoded(answer: Any) -> Response:
    """An answer as the JSON body of its ``api.PredictResponse`` schema."""
    return Response(api.to_json(answer), media_type="application/json")


def _online_store(settings: Any) -> Any:
    """The online feature store of ``feature_store`` (``ALPHAFORGE_REDIS_URL`` / ``ALPHAFORGE_FEATURE_PREFIX`` override
    it, through alphaforge.config), or None when no Redis URL is configured: the service runs in several
    processes' worth of isolation from a streamer, so an in-process dictionary would never be filled."""
    from alphaforge.featurestore.online import OnlineStore

    if not settings.redis_url:
        return None
    return OnlineStore.from_params(settings, redis_url=settings.redis_url)


def _state_store(serving: Any, feature_store: Any) -> Any:
    """Where online Hedge weights persist: the feature store's Redis, else memory (the weights then restart from
    the seed with the service)."""
    if not serving.online_weights:
        return None
    from alphaforge.serving.online_weights import MemoryState, RedisState

    if not feature_store.redis_url:
        log.warning("serving: online weights without Redis (feature_store.redis_url): kept in memory only")
        return MemoryState()
    return RedisState(feature_store.redis_url)


def _settle_the_heap() -> None:
    """Keep the garbage collector's pauses out of the request latency.

    After start-up the process holds millions of long-lived objects (pandas, MLflow, the model); a full
    collection walks all of them and paused a request by several milliseconds (the p99). ``gc.freeze()``
    moves what exists now out of the collector's reach, and a higher first threshold makes the young
    collections that remain rarer; a request allocates few container objects, so memory is not at stake.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


_HOT_PATHS = ["/predict", "/predict_bars", "/predict_symbols", "/v1/predict", "/v1/predict_arrow", "/metrics", "/healthz", "/livez",
              "/readyz"]
_QUIET_URLS = ",".join(path.lstrip("/") for path in _HOT_PATHS)


@bentoml.service(
    name="alphaforge",
    service_class=FrontedService,  # /v1/predict and /v1/predict_arrow answered in front of BentoML's middleware
    workers=1,  # one process: the gRPC twin and the alias poller live beside it
    traffic={"timeout": 60},
    # /metrics stays on; BentoML's per-request metrics middleware skips the hot routes (the service counts them
    # itself, cheaply, see __metrics__), and the access log is off
    metrics={"enabled": True},
    logging={"access": {"enabled": False, "skip_paths": _HOT_PATHS}},
    tracing={"excluded_urls": _QUIET_URLS},
    # the GPU build (ALPHAFORGE_GPU=1 when running `alphaforge serve build`) asks for one GPU; torch members use it
    resources={"gpu": 1} if os.environ.get("ALPHAFORGE_GPU") == "1" else {"cpu": "1"},
)
class AlphaforgeService:
    """The champion (and challenger) ensemble, reloaded when its alias moves; see the module docstring."""

    def __init__(self) -> None:
        from alphaforge.config import load_params

        logging.getLogger("alphaforge").setLevel(logging.INFO)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # before anything loads: refuse to listen beyond loopback with the admin routes open
        try:
            self.admin_token = admin_token(listening_hosts(), os.environ)
        except AdminTokenMissing as err:
            stop_the_server(str(err))
            raise
        # the settings, read once: params.yaml (+ runtime.yaml) with the ALPHAFORGE_* overrides; a missing file is an
        # error (ALPHAFORGE_PARAMS names it), never a service running on defaults nobody chose
        settings = load_params(os.environ.get("ALPHAFORGE_PARAMS", "params.yaml"))
        self.params = settings.serving
        self.feature_params = settings.features
        self.store = _online_store(settings.feature_store)
        self.host = ModelHost(self.params, state_store=_state_store(self.params, settings.feature_store))
        self.live = LiveFigures(Path(settings.monitor.out_dir) / "live.json")  # alphaforge monitor --follow's
        self.ready = False
        try:
            self.host.start()
            self.ready = True
        except NoModel as err:  # stay up, not ready: /readyz says 503 and the poller keeps trying
            log.error("serving: %s", err)
            self.host.start_polling()
        self.batcher = MicroBatcher(self.host, self.params.batching) if self.params.batching.enabled else None
        FAST_ROUTES.host, FAST_ROUTES.batcher = self.host, self.batcher
        _settle_the_heap()
        self.grpc_server = None
        if self.params.grpc_port:
            from alphaforge.serving.grpc_server import start_grpc_server

            self.grpc_server, self.grpc_port = start_grpc_server(
                self.host, self.params.grpc_port, bind=os.environ.get("ALPHAFORGE_GRPC_BIND", "127.0.0.1"),
                batching=self.params.batching)

    def __is_ready__(self) -> bool:
        return self.host.ready()

    async def __metrics__(self, content: str) -> str:
        return content + self.host.prometheus()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2)
        self.host.close()

    # the schema is the answer's (api.PredictResponse); the method returns it already encoded, so BentoML does
    # not validate it again on every call
    @bentoml.api(route="/predict", output_spec=api.PredictResponse)
    async def predict(
        self,
        rows: list[api.FeatureRow],
        model: str | None = None,
        request_id: str | None = None,
        variant: api.Variant | None = None,
    ) -> Response:
        """Predict feature rows (each: symbol, timestamp, every feature by name); prediction, interval, version."""
        try:
            answer = api.predict_rows(self.host, api.PredictRequest.model_construct(
                rows=rows, model=model, request_id=request_id, variant=variant))
            return _encoded(answer)
        except BadRequest as err:
            raise _refuse(self.host, err) from None
        except NoModel as err:
            raise _unavailable(err) from None
        except ModelFault as err:
            raise _faulted(err) from None

    @bentoml.api(route="/predict_bars", output_spec=api.PredictResponse)
    def predict_bars(
        self,
        bars: list[api.Bar],
        model: str | None = None,
        request_id: str | None = None,
        last_only: bool = True,
    ) -> Response:
        """Predict from raw recent bars: the features are computed by the training code, then the model runs."""
        try:
            request = api.PredictBarsRequest(bars=bars, model=model, request_id=request_id, last_only=last_only)
            answer = api.predict_bars(self.host, request, self.feature_params)
            return _encoded(answer)
        except BadRequest as err:
            raise _refuse(self.host, err) from None
        except NoModel as err:
            raise _unavailable(err) from None
        except ModelFault as err:
            raise _faulted(err) from None

    @bentoml.api(route="/predict_symbols", output_spec=api.PredictResponse)
    def predict_symbols(
        self,
        symbols: list[str],
        model: str | None = None,
        request_id: str | None = None,
    ) -> Response:
        """Predict each symbol's latest bar from the online feature store (written by `alphaforge stream`)."""
        try:
            request = api.SymbolsRequest(symbols=symbols, model=model, request_id=request_id)
            answer = api.predict_symbols(self.host, request, self.store)
            return _encoded(answer)
        except BadRequest as err:
            raise _refuse(self.host, err) from None
        except NoModel as err:
            raise _unavailable(err) from None
        except ModelFault as err:
            raise _faulted(err) from None

    @bentoml.api(route="/model_info")
    async def model_info(self) -> dict[str, Any]:
        """The models served (version, alias, fallback), routing settings, per-variant counters, and the live figures
        (IC, hit rate, net P&L per variant) of a running `alphaforge monitor --follow`."""
        info = self.host.info()
        info["grpc_port"] = getattr(self, "grpc_port", None)
        info["batching"] = self.batcher.info() if self.batcher is not None else {"enabled": False}
        info["live"] = self.live.info()
        if self.host.ready():
            info["serving"] = self.host.model().info()
        return info

    def _refused_admin(self, ctx: bentoml.Context) -> dict[str, str] | None:
        """The 401 body for an admin request without the admin token (None: let it through). Set on the context,
        not raised: BentoML replaces a raised 401's message by a generic one."""
        if authorised(ctx.request.headers.get("authorization"), self.admin_token):
            return None
        ctx.response.status_code = 401
        ctx.response.headers["WWW-Authenticate"] = "Bearer"
        return {"error": f"admin route: send 'Authorization: Bearer <token>' with the token of {ADMIN_TOKEN_ENV}"}

    @bentoml.api(route="/admin/outcomes")
    def outcomes(self, rows: list[api.OutcomeRow], ctx: bentoml.Context, model: str | None = None) -> dict[str, Any]:
        """Realised returns of served rows (features + realised): one Hedge step per bar for the champion's online
        weights (serving.online_weights), saved in Redis. Same token rule as /admin/reload."""
        refused = self._refused_admin(ctx)
        if refused is not None:
            return refused
        try:
            return api.record_outcomes(self.host, api.OutcomesRequest.model_construct(rows=rows, model=model))
        except BadRequest as err:
            raise _refuse(self.host, err) from None
        except NoModel as err:
            raise _unavailable(err) from None

    @bentoml.api(route="/admin/reload")
    def reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Check the registry now (the nightly DAG calls this after a promotion); swaps only after loading.
        Needs ``Authorization: Bearer $ALPHAFORGE_ADMIN_TOKEN`` when the service listens beyond loopback."""
        refused = self._refused_admin(ctx)
        if refused is not None:
            return refused
        return {"changes": self.host.poll(), "serving_version": self.host.info()["serving_version"]}
