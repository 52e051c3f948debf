"""Each model family's hyperparameters as a pydantic model: what ``train.models.<family>`` (and ``risk.lightgbm``)
may hold. Light on purpose (pydantic only): :mod:`alphaforge.config` checks params.yaml against these at load,
so a typo fails before a nightly run starts, naming the key path, without importing LightGBM or torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alphaforge.models.base import Task


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LightGBMParams(_Params):
    """LightGBM hyperparameters (scikit-learn API names, as in ``params.yaml``)."""

    n_estimators: int = Field(200, ge=1)
    learning_rate: float = Field(0.03, gt=0.0)
    num_leaves: int = Field(15, ge=2)
    max_depth: int = Field(-1, description="-1: no limit")
    min_child_samples: int = Field(200, ge=1)
    subsample: float = Field(0.8, gt=0.0, le=1.0)
    subsample_freq: int = Field(1, ge=0)
    colsample_bytree: float = Field(0.8, gt=0.0, le=1.0)
    reg_alpha: float = Field(0.0, ge=0.0)
    reg_lambda: float = Field(1.0, ge=0.0)
    min_split_gain: float = Field(0.0, ge=0.0)
    max_bin: int = Field(63, ge=2)
    num_threads: int = Field(2, ge=1)
    seed: int = 42
    objective: Literal["regression", "regression_l1", "huber", "quantile", "lambdarank", "rank_xendcg"] | None = Field(
        None, description="regression loss, or a ranking objective over the symbols of each timestamp "
                          "(lambdarank, rank_xendcg); None: squared error (regression) or log-loss (classification)"
    )
    quantile_level: float = Field(0.5, gt=0.0, lt=1.0, description="the quantile fitted when objective='quantile'")
    rank_buckets: int = Field(5, ge=2, le=31, description="ranking objectives: the relevance of a row is the "
                              "per-timestamp quantile bucket 0..rank_buckets-1 of its target")


class XGBoostParams(_Params):
    """XGBoost hyperparameters (``tree_method`` is always ``"hist"``)."""

    n_estimators: int = Field(200, ge=1)
    learning_rate: float = Field(0.05, gt=0.0)
    max_depth: int = Field(4, ge=1)
    min_child_weight: float = Field(50.0, ge=0.0, description="hessian sum per leaf: rows for squared error")
    subsample: float = Field(0.8, gt=0.0, le=1.0)
    colsample_bytree: float = Field(0.8, gt=0.0, le=1.0)
    reg_alpha: float = Field(0.0, ge=0.0)
    reg_lambda: float = Field(1.0, ge=0.0)
    gamma: float = Field(0.0, ge=0.0)
    max_bin: int = Field(64, ge=2)
    n_jobs: int = Field(2, ge=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")


class ForestParams(_Params):
    """Random forest / extra trees hyperparameters; leaves are kept large because returns are noisy."""

    n_estimators: int = Field(64, ge=1)
    max_depth: int | None = Field(None, ge=1)
    min_samples_leaf: int = Field(200, ge=1)
    max_features: float = Field(0.33, gt=0.0, le=1.0, description="share of features tried per split")
    bootstrap: bool = True
    max_samples: float | None = Field(0.25, gt=0.0, le=1.0, description="share of rows per tree (bootstrap only)")
    n_jobs: int = Field(2, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _max_samples_needs_bootstrap(self) -> ForestParams:
        if self.max_samples is not None and not self.bootstrap:
            raise ValueError("max_samples needs bootstrap=true (set max_samples: null without bootstrap)")
        return self


class RidgeParams(_Params):
    """Ridge: ``alpha`` weighs the L2 penalty against the summed squared error on standardised data.

    Classification fits an L2 logistic regression with ``C = 1 / (2 * alpha)``, the same balance
    against the summed log-loss.
    """

    alpha: float = Field(1.0, gt=0.0)
    n_jobs: int = Field(2, ge=1)
    seed: int = 42


class ElasticNetParams(_Params):
    """Elastic net as in scikit-learn: ``alpha * (l1_ratio * |w|_1 + (1 - l1_ratio) / 2 * |w|_2^2)`` against the
    *mean* squared error / 2 on standardised data.

    Classification fits an elastic-net logistic regression (saga) with ``C = 1 / (alpha * n_rows)``,
    the same balance against the mean log-loss.
    """

    alpha: float = Field(1e-3, gt=0.0)
    l1_ratio: float = Field(0.5, ge=0.0, le=1.0)
    max_iter: int = Field(2000, ge=1)
    tol: float = Field(1e-4, gt=0.0)
    n_jobs: int = Field(2, ge=1)
    seed: int = 42


class MLPParams(_Params):
    """A small feed-forward network (scikit-learn's MLP, Adam, early stopping).

    Early stopping holds out ``validation_fraction`` of the fit rows chosen at random (scikit-learn
    does not take a time-ordered split); this is a baseline, the torch families are the serious networks.
    """

    hidden_layer_sizes: tuple[int, ...] = Field((32, 16), min_length=1)
    alpha: float = Field(1e-3, ge=0.0, description="L2 penalty")
    learning_rate_init: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(512, ge=1)
    max_iter: int = Field(50, ge=1, description="epochs")
    early_stopping: bool = True
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    n_iter_no_change: int = Field(5, ge=1)
    n_jobs: int = Field(2, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _positive_layers(self) -> MLPParams:
        if any(size < 1 for size in self.hidden_layer_sizes):
            raise ValueError(f"hidden_layer_sizes must all be >= 1, got {self.hidden_layer_sizes}")
        return self


class SequenceParams(BaseModel):
    """Hyper-parameters of a sequence forecaster (all families share them; unused ones are ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = "regression"
    lookback: int = Field(20, ge=1, description="bars per window, the predicted bar included")
    hidden_size: int = Field(32, ge=1, description="RNN hidden size / Transformer d_model / CNN channels")
    num_layers: int = Field(1, ge=1, description="RNN layers / encoder layers / TCN residual blocks")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    n_heads: int = Field(2, ge=1, description="attention heads (transformer); must divide hidden_size")
    kernel_size: int = Field(3, ge=2, description="causal convolution kernel (cnn)")
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(512, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1, description="epochs without a better validation loss before stopping")
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="last share of fit rows (by time) held out")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient L2 norm; None disables clipping")
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    max_train_windows: int | None = Field(None, ge=1, description="windows sampled per epoch; None = all")
    missing_indicator: bool = Field(True, description="add a 0/1 input per feature that has NaN in the fit frame")
    history_layout: Literal["rows", "alpha360"] = Field(
        "rows", description="rows: a window is the feature vectors of the last lookback rows of the symbol; "
        "alpha360: a window is each row's own Alpha360 columns (features.set: alpha360) read as 60 bars x fields, "
        "oldest first (lookback must be 60)")
    objective: Literal["regression", "ic"] = Field(
        "regression", description="regression: squared error; ic: minus the Pearson correlation of forecast and label "
        "among the symbols of each timestamp, averaged over the timestamps of a batch (batches then hold whole "
        "timestamps; regression task only)")

    @model_validator(mode="after")
    def _objective_fits_task(self) -> SequenceParams:
        if self.objective == "ic" and self.task != "regression":
            raise ValueError("objective 'ic' correlates forecasts with a real-valued label; use task: regression")
        if self.history_layout == "alpha360" and self.lookback != 60:
            raise ValueError(f"history_layout 'alpha360' reads 60 bars from each row; set lookback: 60 "
                             f"(got {self.lookback})")
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device in {"auto", "cpu", "cuda"} or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


#: family -> its hyperparameters' model (the forecaster classes take the same keyword arguments)
FAMILY_PARAMS: dict[str, type[BaseModel]] = {
    "lightgbm": LightGBMParams, "xgboost": XGBoostParams, "random_forest": ForestParams,
    "extra_trees": ForestParams, "ridge": RidgeParams, "elastic_net": ElasticNetParams, "mlp": MLPParams,
    "lstm": SequenceParams, "gru": SequenceParams, "transformer": SequenceParams, "cnn": SequenceParams,
}


def check_hyperparameters(family: str, values: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming ``where.<key>`` when ``values`` is not a valid set of ``family``'s
    hyperparameters (unknown key, wrong type, out of range)."""
    if family not in FAMILY_PARAMS:
        raise ValueError(f"{where}: unknown model family {family!r}; choose from {sorted(FAMILY_PARAMS)}")
    try:
        FAMILY_PARAMS[family].model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc']) or '<all>'}: {e['msg']}"
                             for e in err.errors())
        raise ValueError(problems) from None
