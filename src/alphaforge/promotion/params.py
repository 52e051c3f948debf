"""The gate's names (aliases, tags), settings (:class:`PromotionParams`), evidence, decision and outcome records, their
registry tags, and its errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alphaforge.schema import finite_or_none as _finite


CHAMPION = "champion"
CHALLENGER = "challenger"

TAG = "alphaforge."
WINDOW_START_TAG = f"{TAG}window.start"
WINDOW_END_TAG = f"{TAG}window.end"
METRIC_TAG_PREFIX = f"{TAG}metric."
MODEL_URI_TAG = f"{TAG}model_uri"
DECISION_TAG = f"{TAG}decision"
REASONS_TAG = f"{TAG}reasons"
COMPARED_WITH_TAG = f"{TAG}compared_with"
CHAMPION_SCORES_TAG = f"{TAG}champion_scores"
PREVIOUS_CHAMPION_TAG = f"{TAG}previous_champion"
PROMOTED_AT_TAG = f"{TAG}promoted_at"
ROLLED_BACK_AT_TAG = f"{TAG}rolled_back_at"
LAST_EVENT_TAG = f"{TAG}last_event"
NO_VERSION = "none"
MAX_TAG_CHARS = 5000

Metric = Literal["sharpe", "information_ratio", "rank_ic_mean", "ic_mean", "directional_accuracy"]
GateStrategy = Literal["auto", "long_short", "topk", "long_flat", "long_short_band"]


class PromotionParams(BaseModel):
    """The promotion rules (``promote:`` in params.yaml) and how patient the stage is with the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("alphaforge-signal", min_length=1, description="registered model in the MLflow registry")
    metric: Metric = Field("sharpe", description="the champion comparison, on the latest out-of-sample window; "
                           "higher is better")
    margin: float = Field(0.0, ge=0.0, description="the challenger must beat the champion by more than this")
    strategy: GateStrategy = Field("auto", description="the strategy the gate judges; auto: long_short across "
                                   "symbols, long_flat for a single series")
    min_ic_tstat: float = Field(2.0, description="least Newey-West t-stat of the candidate's rank IC")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance of the edge over each baseline, after "
                         "multiplying the p-value by the number of trials")
    max_pbo: float = Field(0.5, ge=0.0, le=1.0, description="largest probability of backtest overfitting")
    min_pbo_trials: int = Field(6, ge=2, description="tuning trials with complete out-of-sample returns needed for a "
                                "PBO worth gating on; fewer: the rule is skipped and says so")
    max_plausible_sharpe: float = Field(4.0, gt=0.0, description="net Sharpe above this (daily bars; scaled by "
                                        "sqrt(bars a year / 252)) is a bug until shown otherwise")
    max_illiquid_pnl_share: float = Field(0.5, gt=0.0, le=1.0, description="largest share of gross P&L from the "
                                          "least liquid fifth of names")
    max_stale_pnl_share: float = Field(0.25, gt=0.0, le=1.0, description="largest share of gross P&L earned over "
                                       "bars that did not trade")
    max_top_symbols_pnl_share: float = Field(0.6, gt=0.0, le=1.0, description="largest share of the positive "
                                             "P&L from the top max(3, 5%) symbols (10 symbols or more)")
    drift_blocks: tuple[str, ...] = Field(("performance",), description="drift rules that block the challenger")
    require_beat_baselines: bool = True
    require_validation: bool = True
    require_no_drift_alert: bool = True
    min_unseen_bars: int = Field(20, ge=1, description="bars of the window the champion must not have trained on "
                                 "before it can be rescored there")
    lock_wait_seconds: float = Field(60.0, gt=0, description="how long to wait for another promotion to finish")
    lock_stale_seconds: float = Field(600.0, gt=0, description="a lock older than this was left by a crash")
    http_max_retries: int = Field(1, ge=0, le=10, description="MLflow HTTP retries during the stage")
    http_timeout_seconds: int = Field(10, ge=1, description="MLflow HTTP timeout during the stage")

    @field_validator("model_name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        if "/" in name or ":" in name:
            raise ValueError(f"model_name {name!r}: MLflow registered model names cannot contain '/' or ':'")
        return name


class OOSWindow(BaseModel):
    """The out-of-sample period a score was computed on (ISO timestamps, inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(min_length=1)
    end: str = Field(min_length=1)

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


class Scorecard(BaseModel):
    """Metrics of one signal on one window; NaN and inf are stored as None (undefined)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: OOSWindow
    metrics: dict[str, float | None]

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_or_none(cls, metrics: Mapping[str, Any]) -> dict[str, float | None]:
        return {str(name): _finite(value) for name, value in dict(metrics).items()}

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)


class GateRule(BaseModel):
    """One rule of the gate with its figure, threshold and verdict (PASS, FAIL, SKIP, INFO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    verdict: Literal["PASS", "FAIL", "SKIP", "INFO"]
    figure: float | str | None = None
    threshold: float | str | None = None
    detail: str


class BaselineTest(BaseModel):
    """The candidate's per-bar net return minus one baseline's, tested with a HAC t-test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline_sharpe: float | None
    mean_difference: float | None
    annual_difference: float | None
    t_stat: float | None
    p_value: float | None
    adjusted_p_value: float | None
    n: int
    lags: int


class GateEvidence(BaseModel):
    """What the whole out-of-sample span says about the candidate (:func:`gate_evidence`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str
    strategy: str
    mode: str
    execution: str
    periods_per_year: float
    n_periods: int
    n_trials: int
    net_sharpe: float | None
    gross_sharpe: float | None
    rank_ic_mean: float | None
    rank_ic_tstat: float | None
    baselines: dict[str, BaselineTest]
    pbo: float | None = None
    pbo_trials: int = 0
    pbo_detail: str = "no tuning trials to measure it on"
    dsr: float | None = None
    illiquid_share: float | None = None
    stale_share: float | None = None
    top_symbols_share: float | None = None
    top_symbols: tuple[str, ...] = ()
    n_symbols: int = 0

    @field_validator("net_sharpe", "gross_sharpe", "rank_ic_mean", "rank_ic_tstat", "pbo", "dsr", "illiquid_share",
                     "stale_share", "top_symbols_share", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> float | None:
        return _finite(value)


class Decision(BaseModel):
    """What :func:`decide` concluded and why (one reason line and one structured rule per check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promote: bool
    reasons: tuple[str, ...]
    rules: tuple[GateRule, ...] = ()
    metric: str
    margin: float
    window: OOSWindow
    candidate_value: float | None
    champion_value: float | None
    diagnosis: str | None = None


class ChampionRef(BaseModel):
    """The serving champion as a rescorer sees it: load ``model_uri`` and score it on the window asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    model_uri: str
    stored: Scorecard | None


ChampionRescorer = Callable[[ChampionRef, OOSWindow], Mapping[str, float | None]]


class PromotionOutcome(BaseModel):
    """The result of one :func:`promote` call; ``status`` is promoted or refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    candidate_uri: str
    version: str
    status: Literal["promoted", "refused"]
    decision: Decision
    champion_before: str | None
    champion_after: str | None
    champion_scores: Literal["stored", "rescored", "none", "other_window"]
    tracking_uri: str
    decided_at: str


class RollbackOutcome(BaseModel):
    """What :func:`rollback` did: ``champion`` moved from ``from_version`` to ``to_version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    from_version: str
    to_version: str
    seconds: float


# ---------------------------------------------------------------------------------------------- tags


def _scorecard_tags(card: Scorecard) -> dict[str, str]:
    tags = {WINDOW_START_TAG: card.window.start, WINDOW_END_TAG: card.window.end}
    tags.update({f"{METRIC_TAG_PREFIX}{name}": "null" if v is None else repr(v) for name, v in card.metrics.items()})
    return tags


def _scorecard_from_tags(tags: Mapping[str, str]) -> Scorecard | None:
    if WINDOW_START_TAG not in tags or WINDOW_END_TAG not in tags:
        return None
    metrics = {key[len(METRIC_TAG_PREFIX):]: None if value == "null" else _finite(value)
               for key, value in tags.items() if key.startswith(METRIC_TAG_PREFIX)}
    return Scorecard(window=OOSWindow(start=tags[WINDOW_START_TAG], end=tags[WINDOW_END_TAG]), metrics=metrics)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version_label(version: str | None) -> str:
    return "none" if version is None else f"version {version}"
