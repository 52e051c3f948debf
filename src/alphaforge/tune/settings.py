"""The tune stage's settings (:class:`TuneParams`), one worker's job (:class:`TuneJob`) and the constants the stage
shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alphaforge.evaluate import EvaluationParams
from alphaforge.features import LabelNormalise
from alphaforge.models.registry import FAMILIES
from alphaforge.splits import WalkForward, WalkForwardParams
from alphaforge.tune.spaces import SearchParam, default_search_spaces


STORAGE_ENV = "ALPHAFORGE_OPTUNA_STORAGE"
Metric = Literal["rank_ic", "sharpe", "directional_accuracy"]
# A worker with nothing to start (the rest of the budget is running elsewhere) looks again this often.
WAIT_POLL_SECONDS = 0.5
OVER_BUDGET_ATTR = "over_budget"
# A fold whose metric is undefined (constant predictions: no ranks, a flat book, no direction) scores as
# no skill, so that the sampler learns to avoid the region instead of seeing a failed trial.
NO_SKILL: dict[str, float] = {"rank_ic": 0.0, "sharpe": 0.0, "directional_accuracy": 0.5}

DEFAULT_DATASET_PATH = Path("data/features/dataset.parquet")
DEFAULT_BEST_PARAMS_PATH = Path("models/tuned/best_params.json")
DEFAULT_SUMMARY_PATH = Path("reports/tune/summary.json")


class TuneParams(BaseModel):
    """The ``tune`` section of params.yaml: which families, the objective, the budget, storage and pruning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: tuple[str, ...] = ("lightgbm",)
    storage: str | None = Field(None, description=f"Optuna RDB URL; None: sqlite:///<state dir>/optuna.db; "
                                                  f"${STORAGE_ENV} overrides both")
    study_prefix: str = Field("alphaforge", min_length=1)
    metric: Metric = "rank_ic"
    n_trials: int = Field(8, ge=1, description="finished (COMPLETE + PRUNED) trials per study, all workers together")
    timeout_seconds: float = Field(300.0, gt=0, description="wall clock per worker per study; a running trial ends")
    seed: int = 42
    pruner: Literal["median", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="random trials before TPE, and complete trials before pruning")
    heartbeat_seconds: int = Field(10, ge=1, description="how often a running trial proves its worker is alive")
    grace_period_seconds: int = Field(60, ge=1, description="silence after which a running trial is failed")
    max_retry: int = Field(1, ge=0, description="re-runs of a trial whose worker died")
    search_spaces: dict[str, dict[str, SearchParam]] = Field(
        default_factory=default_search_spaces,
        description="family -> hyperparameter -> range; a family given here replaces its default ranges whole")

    @field_validator("search_spaces", mode="before")
    @classmethod
    def _over_defaults(cls, given: Any) -> Any:
        """Families named in params.yaml replace their defaults; the other families keep theirs."""
        if not isinstance(given, Mapping):
            return given
        return {**default_search_spaces(), **given}

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        if not self.families:
            raise ValueError("families: name at least one model family to tune")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families: listed twice in {list(self.families)}")
        missing = [f for f in self.families if not self.search_spaces.get(f)]
        if missing:
            raise ValueError(f"search_spaces: no hyperparameter ranges for {missing}")
        if self.grace_period_seconds <= self.heartbeat_seconds:
            raise ValueError(f"grace_period_seconds={self.grace_period_seconds} must exceed "
                             f"heartbeat_seconds={self.heartbeat_seconds}, or live trials would be failed")
        return self


class TuneJob(BaseModel):
    """Everything a worker process needs, as one JSON file: where the data is and every setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_path: str = str(DEFAULT_DATASET_PATH)
    tune: TuneParams = TuneParams()
    walk_forward: WalkForwardParams = WalkForwardParams()
    purge: int = Field(5, ge=0, description="the label horizon in bars")
    target: str = "forward_return"
    label_normalise: LabelNormalise = Field("none", description="labels.normalise: the training label's per-timestamp "
                                            "transform (the metrics use the raw label)")
    feature_processing: str = Field("none", description="features.processing: a fitted kind (robust_zscore) puts each "
                                    "trial's model behind it, fitted per fold as in training")
    base_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="family -> fixed hyperparameters that sampled ones are laid over")
    evaluation: EvaluationParams = EvaluationParams()
    experiment: str | None = Field(None, description="MLflow experiment; None: no tracking")
    trials_dir: str | None = Field(
        None, description="where complete trials' OOF predictions go (<dir>/<study>/trial_N.parquet); None: kept nowhere")

    def splitter(self) -> WalkForward:
        return WalkForward(self.walk_forward, purge=self.purge)
