"""Search spaces: one hyperparameter's range (:class:`SearchParam`) and each family's default space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    import optuna


CategoricalChoice = bool | int | float | str | None


# ------------------------------------------------------------------------------------------------ settings


class SearchParam(BaseModel):
    """One hyperparameter's range: ``int``/``float`` between ``low`` and ``high`` (``log`` scale), or ``choices``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: tuple[CategoricalChoice, ...] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes 'choices' only, not low/high/log")
            return self
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole-number bounds, got low={self.low}, high={self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask ``trial`` for a value of ``name`` from this range."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices or ()))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this range can produce."""
        if self.type == "categorical":
            return value in (self.choices or ())
        assert self.low is not None and self.high is not None
        if self.type == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            return False
        return isinstance(value, (int, float, np.number)) and self.low <= value <= self.high

    def example(self) -> Any:
        """A value inside the range (its lower end or first choice), to check the family accepts the name."""
        if self.type == "categorical":
            return (self.choices or (None,))[0]
        assert self.low is not None
        return int(self.low) if self.type == "int" else float(self.low)


def _space(**params: dict[str, Any]) -> dict[str, SearchParam]:
    return {name: SearchParam(**spec) for name, spec in params.items()}


def default_search_spaces() -> dict[str, dict[str, SearchParam]]:
    """Ranges around the regularised defaults of each family (noisy targets want small, shrunk models)."""
    trees = {"n_estimators": {"type": "int", "low": 50, "high": 400, "log": True},
             "subsample": {"type": "float", "low": 0.5, "high": 1.0},
             "colsample_bytree": {"type": "float", "low": 0.4, "high": 1.0},
             "learning_rate": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
             "reg_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}}
    forest = _space(n_estimators={"type": "int", "low": 50, "high": 300, "log": True},
                    min_samples_leaf={"type": "int", "low": 20, "high": 1000, "log": True},
                    max_features={"type": "float", "low": 0.1, "high": 1.0},
                    max_samples={"type": "float", "low": 0.2, "high": 1.0})
    recurrent = _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                       num_layers={"type": "int", "low": 1, "high": 2},
                       dropout={"type": "float", "low": 0.0, "high": 0.4},
                       learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                       lookback={"type": "categorical", "choices": [10, 20, 40]})
    return {
        "lightgbm": _space(**trees, num_leaves={"type": "int", "low": 4, "high": 64, "log": True},
                           min_child_samples={"type": "int", "low": 20, "high": 1000, "log": True}),
        "xgboost": _space(**trees, max_depth={"type": "int", "low": 2, "high": 8},
                          min_child_weight={"type": "float", "low": 1.0, "high": 500.0, "log": True}),
        "random_forest": forest,
        "extra_trees": forest,
        "ridge": _space(alpha={"type": "float", "low": 1e-2, "high": 1e4, "log": True}),
        "elastic_net": _space(alpha={"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                              l1_ratio={"type": "float", "low": 0.0, "high": 1.0}),
        "mlp": _space(alpha={"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                      learning_rate_init={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
        "lstm": recurrent,
        "gru": recurrent,
        "transformer": _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                              num_layers={"type": "int", "low": 1, "high": 3},
                              dropout={"type": "float", "low": 0.0, "high": 0.4},
                              learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
        "cnn": _space(hidden_size={"type": "categorical", "choices": [16, 32, 64]},
                      num_layers={"type": "int", "low": 1, "high": 4},
                      kernel_size={"type": "categorical", "choices": [2, 3, 5]},
                      dropout={"type": "float", "low": 0.0, "high": 0.4},
                      learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True}),
    }
