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
