"""The host's per-variant counters and their Prometheus text (what ``/metrics`` appends to BentoML's own)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alphaforge.serving.host import Slot


@dataclass
class VariantStats:
    """Cheap per-variant counters (updated under the host's lock, read by /metrics)."""

    requests: int = 0
    rows: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "rows": self.rows, "errors": self.errors,
                "mean_latency_ms": (self.latency_ms_sum / self.requests) if self.requests else 0.0}


def prometheus_text(stats: Mapping[str, VariantStats], *, bad_requests: int, model_faults: int,
                    slots: Iterable[Slot]) -> str:
    """Requests, rows and latency by variant, refused requests, model faults and each slot's fallback gauge."""
    lines = [
        "# HELP alphaforge_requests_total Predict requests answered, by variant.",
        "# TYPE alphaforge_requests_total counter",
        *[f'alphaforge_requests_total{{variant="{k}"}} {v.requests}' for k, v in stats.items()],
        "# HELP alphaforge_rows_total Rows predicted, by variant.",
        "# TYPE alphaforge_rows_total counter",
        *[f'alphaforge_rows_total{{variant="{k}"}} {v.rows}' for k, v in stats.items()],
        "# HELP alphaforge_latency_ms_sum Summed service time of predict requests (ms), by variant.",
        "# TYPE alphaforge_latency_ms_sum counter",
        *[f'alphaforge_latency_ms_sum{{variant="{k}"}} {v.latency_ms_sum:.3f}' for k, v in stats.items()],
        "# HELP alphaforge_bad_requests_total Requests refused for bad input (4xx).",
        "# TYPE alphaforge_bad_requests_total counter",
        f"alphaforge_bad_requests_total {bad_requests}",
        "# HELP alphaforge_model_faults_total Predict requests the serving model raised on (fallback or 5xx).",
        "# TYPE alphaforge_model_faults_total counter",
        f"alphaforge_model_faults_total {model_faults}",
        "# HELP alphaforge_model_fallback 1 when a model serves a fallback version because its alias failed to load.",
        "# TYPE alphaforge_model_fallback gauge",
    ]
    for slot in slots:
        version = slot.model.version if slot.model else "none"
        lines.append(f'alphaforge_model_fallback{{model="{slot.name}",alias="{slot.alias}",version="{version}"}} '
                     f"{1 if slot.fallback_reason else 0}")
    return "\n".join(lines) + "\n"
