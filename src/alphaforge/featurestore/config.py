"""The ``feature_store:`` section of params.yaml (read once by :func:`alphaforge.config.load_params`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alphaforge.featurestore.definitions import ALL_BAR_COLUMNS


class FeatureStoreParams(BaseModel):
    """Where the latest feature vectors live and what the streamed bars carry.

    ``redis_url`` unset (or empty) means an in-process dictionary: fine for tests and a single
    process, useless to a separate service. ``bar_columns``, ``multi_symbol`` and ``intraday`` fix
    the feature plan of the stream (the batch library infers them from the whole dataset; a
    stream cannot), so they must describe the data the served model was trained on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = None
    ttl_seconds: int = Field(7 * 86_400, ge=1)
    key_prefix: str = Field("alphaforge:features:", min_length=1)
    bar_columns: tuple[str, ...] = ("open", "high", "low", "close", "volume")
    multi_symbol: bool = True
    intraday: bool = False
    bar_log: Path = Path("data/stream/bars.sqlite")
    checkpoint_every: int = Field(100, ge=1, description="timestamps between saved engine states")

    @field_validator("bar_columns")
    @classmethod
    def _known_columns(cls, columns: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(columns) - ALL_BAR_COLUMNS)
        if unknown:
            raise ValueError(f"feature_store.bar_columns: unknown column(s) {unknown}; choose from "
                             f"{sorted(ALL_BAR_COLUMNS)}")
        if "close" not in columns:
            raise ValueError("feature_store.bar_columns must include 'close'")
        return columns
