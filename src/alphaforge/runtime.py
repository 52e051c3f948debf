"""The params classes of the runtime settings: how the services and the DAGs run, read by no DVC stage.

They live apart from the modules that use them so that :mod:`alphaforge.config` loads them without importing
the serving host or the Airflow helpers (which themselves load params): no import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AirflowParams(BaseModel):
    """How the DAGs run the pipeline (``airflow:`` in params.yaml); exported to JSON for the DAG files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str = Field("alphaforge", min_length=1)
    schedule: str | None = Field("0 2 * * *", description="nightly_retrain, cron in UTC; null: manual runs only")
    monitor_schedule: str | None = Field("0 6 * * *", description="drift_monitor, cron in UTC; null: manual only")
    start_date: str = Field("2026-01-01", description="first data interval (ISO date); no catch-up before now")
    retries: int = Field(2, ge=2, description="per task, with exponential back-off")
    retry_delay_seconds: float = Field(60.0, gt=0)
    max_retry_delay_seconds: float = Field(900.0, gt=0)
    stage_timeout_minutes: float = Field(60.0, gt=0, description="execution timeout of a stage task")
    stage_timeouts_minutes: dict[str, float] = Field(
        default_factory=lambda: {"tune": 180.0, "train": 180.0}, description="per-stage exceptions")
    dagrun_timeout_hours: float = Field(8.0, gt=0)
    service_url: str | None = Field(None, description="the BentoML service; ALPHAFORGE_SERVICE_URL wins; null: "
                                                      "the reload task logs that it skipped")
    reload_timeout_seconds: float = Field(30.0, gt=0)
    bento_build_command: str = Field("alphaforge serve build", min_length=1,
                                     description="run in the project's environment when the gate passed")
    monitor_hours: float | None = Field(None, gt=0, description="drift_monitor's look-back; null: monitor.lookback_hours")


class BatchingParams(BaseModel):
    """``serving.batching``: concurrent row requests (``/v1/predict``, ``/predict``, the gRPC stream) predicted
    together, one model call per batch. A lone request never waits: a batch is flushed as soon as the event loop
    has taken in what already arrived, and waits up to ``max_latency_ms`` for more only while requests queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_batch_size: int = Field(256, ge=1)  # requests per model call; a full batch is flushed at once
    max_latency_ms: float = Field(1.0, ge=0.0)  # the longest a request waits for others (only under load)
    # the same for the messages of a gRPC row stream: its client keeps many in flight, so a longer gather costs
    # its latency little, while every batch saves gRPC and model-call overhead (1 ms: ~8 rows a batch here)
    stream_max_latency_ms: float = Field(4.0, ge=0.0)


class ServingParams(BaseModel):
    """The ``serving`` section (runtime.yaml); ``ALPHAFORGE_*`` variables override some (alphaforge.config.ENV_OVERRIDES)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = "alphaforge-signal"
    alias: str = "champion"
    poll_seconds: float = Field(15.0, gt=0)
    cache_dir: str = ".alphaforge/serving/models"
    max_models: int = Field(4, ge=1)
    max_cache_mb: float = Field(2048.0, gt=0)
    max_batch_rows: int = Field(10_000, ge=1)
    max_bars_per_request: int = Field(50_000, ge=1)
    challenger_share: float = Field(0.0, ge=0.0, le=1.0)
    shadow: bool = False
    request_log: bool = True
    request_log_dir: str = "logs/requests"
    request_log_flush_seconds: float = Field(0.5, gt=0)
    request_log_max_rows: int = Field(500, ge=1)  # per request; a bigger batch logs an evenly spaced sample
    torch_threads: int = Field(1, ge=0)  # intra-op threads for torch members; 0: torch's default (all cores)
    grpc_port: int = Field(50051, ge=0, le=65535)  # 0: no gRPC server
    http_port: int = Field(3000, ge=1, le=65535)
    request_fallback: bool = True  # keep a standby model; it answers a request the serving model raises on
    online_weights: bool = False  # Hedge weights over the families (seeded from hedge_seed), moved by outcomes
    online_weights_prefix: str = "alphaforge:hedge:"  # Redis key prefix of their state ({prefix}{name}:{version})
    batching: BatchingParams = BatchingParams()  # micro-batching of concurrent row requests (serving/batching.py)
