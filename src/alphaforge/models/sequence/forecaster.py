"""The sequence forecaster (:class:`SequenceForecaster`) and its family subclasses: fit, predict, Monte Carlo
dropout intervals, attention weights, save and load (``model.pt`` + ``config.json``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from alphaforge.features import feature_columns
from alphaforge.models.base import Task
from alphaforge.models.params import SequenceParams
from alphaforge.models.sequence.nets import (
    SEQUENCE_FAMILIES,
    SequenceFamily,
    _amp_dtype,
    _monte_carlo_mode,
    _repeatable,
    _TemporalConvNet,
    _TransformerNet,
    build_network,
    resolve_device,
)
from alphaforge.models.sequence.training import _TrainingLoop
from alphaforge.models.sequence.windows import (
    _feature_matrix,
    _row_mask,
    _symbol_codes,
    _timestamp_keys,
    sequence_windows,
)

# The public classes say they live in alphaforge.models.sequence, their public path: wrappers that save a base
# model (normalise, uncertainty) record its class by module and name, so a file saved after the split names
# the same path as one saved before it, and loads with either version of the code.
PUBLIC_MODULE = "alphaforge.models.sequence"

log = logging.getLogger("alphaforge.models.sequence")  # the logger name from before the split

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class SequenceForecaster(_TrainingLoop):
    """A torch sequence model over the ``lookback`` bars ending at each predicted row.

    Implements :class:`alphaforge.models.base.Forecaster`. Pick the family with a subclass
    (:class:`LSTMForecaster`, :class:`GRUForecaster`, :class:`TransformerForecaster`,
    :class:`CNNForecaster`) or with ``SequenceForecaster(family=...)``; the keyword arguments are
    the fields of :class:`SequenceParams` (an unknown one raises).

    There is deliberately no ``feature_importance``: these networks have no split gain, and
    permutation importance is computed generically for every family by the caller.
    """

    __module__ = PUBLIC_MODULE

    family: ClassVar[str]

    def __init__(self, family: SequenceFamily | None = None, **params: Any) -> None:
        class_family = getattr(type(self), "family", None)
        if family is None and class_family is None:
            raise TypeError(f"SequenceForecaster needs family=, one of {SEQUENCE_FAMILIES}")
        if family is not None and class_family is not None and family != class_family:
            raise ValueError(f"{type(self).__name__} is the {class_family!r} family, got family={family!r}")
        resolved = family if family is not None else class_family
        if resolved not in SEQUENCE_FAMILIES:
            raise ValueError(f"unknown sequence family {resolved!r}; expected one of {SEQUENCE_FAMILIES}")
        if class_family is None:
            self.family = resolved  # type: ignore[misc]  # instance-level family for the generic class
        self.params = SequenceParams(**params)
        if resolved == "transformer" and self.params.hidden_size % self.params.n_heads:
            raise ValueError(
                f"transformer: hidden_size ({self.params.hidden_size}) must be a multiple of n_heads "
                f"({self.params.n_heads})"
            )
        self.task: Task = self.params.task

    def __repr__(self) -> str:
        changed = self.params.model_dump(exclude_defaults=True)
        arguments = ", ".join(f"{key}={value!r}" for key, value in changed.items())
        return f"{type(self).__name__}(family={self.family!r}{', ' if arguments else ''}{arguments})"

    def get_params(self) -> dict[str, Any]:
        """The family and every hyper-parameter (what ``__init__`` accepts)."""
        return {"family": self.family, **self.params.model_dump()}

    # ---------------------------------------------------------------------------- fitting

    def fit(
        self, frame: pd.DataFrame, target: pd.Series, *, fit_mask: np.ndarray | None = None
    ) -> SequenceForecaster:
        """Train on the rows where ``fit_mask`` is true whose window is valid and target known.

        Rows outside the mask are history the windows may look back into. The inner validation
        slice is the last ``validation_fraction`` of those rows by timestamp.
        """
        params = self.params
        if len(target) != len(frame):
            raise ValueError(f"target has {len(target)} rows, frame has {len(frame)}")
        if isinstance(target, pd.Series) and not target.index.equals(frame.index):
            raise ValueError("target must be aligned with frame (same index, same order)")
        fit_rows = _row_mask(fit_mask, len(frame), "fit_mask")
        codes = _symbol_codes(frame)
        # the features stage's rule: never the keys, the raw bar columns or a label (the walk-forward trainer hands
        # the whole dataset, labels included: taking every column would feed the model its own target)
        self.feature_names_ = feature_columns(frame)
        if not self.feature_names_:
            raise ValueError("frame has no feature columns besides the keys, raw bar columns and labels")
        raw = _feature_matrix(frame, self.feature_names_)
        if not fit_rows.any():
            raise ValueError("fit_mask selects no rows")

        fit_values = raw[fit_rows]
        known = ~np.isnan(fit_values)
        empty = [name for name, count in zip(self.feature_names_, known.sum(axis=0), strict=True) if count == 0]
        if empty:
            raise ValueError(f"feature column(s) {empty} are entirely NaN on the fit rows; drop them")
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(fit_values, axis=0)
            std = np.nanstd(fit_values, axis=0)
        self.feature_mean_ = mean
        self.feature_std_ = np.where(std > 0, std, 1.0)
        self.missing_indicator_features_ = (
            [name for name, has_nan in zip(self.feature_names_, np.isnan(raw).any(axis=0), strict=True) if has_nan]
            if params.missing_indicator
            else []
        )

        target_values = pd.to_numeric(pd.Series(np.asarray(target)), errors="raise").to_numpy(dtype=np.float64)
        if np.isinf(target_values).any():
            row = int(np.flatnonzero(np.isinf(target_values))[0])
            raise ValueError(f"target is infinite at row {frame.index[row]!r}")
        if params.task == "classification":
            labelled = ~np.isnan(target_values)
            bad = labelled & ~np.isin(target_values, (0.0, 1.0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"classification target must be 0/1, got {target_values[row]!r} at row {frame.index[row]!r}"
                )

        inputs = self._scaled_inputs(raw)
        windows, valid_end_rows = self._windows(inputs, codes)
        trainable = np.zeros(len(frame), dtype=bool)
        trainable[valid_end_rows] = True
        trainable &= fit_rows & ~np.isnan(target_values)
        candidates = np.flatnonzero(trainable)
        if len(candidates) == 0:
            raise ValueError(
                f"no fit row has both a full {params.lookback}-bar window of its symbol and a known target"
            )
        timestamps = _timestamp_keys(frame)
        train_rows, validation_rows = self._split_validation(candidates, timestamps)
        # The first timestamp of the inner validation slice (None without one): a fit-time diagnostic.
        self.validation_start_ = (
            frame["timestamp"].iloc[validation_rows[np.argmin(timestamps[validation_rows])]]
            if len(validation_rows)
            else None
        )

        if params.task == "regression":
            self.target_mean_ = float(target_values[train_rows].mean())
            target_std = float(target_values[train_rows].std())
            self.target_std_ = target_std if target_std > 0 else 1.0
        else:
            classes = np.unique(target_values[train_rows])
            if len(classes) < 2:
                raise ValueError(f"classification target has a single class ({classes}) on the training rows")
            self.target_mean_, self.target_std_ = 0.0, 1.0
        scaled_target = ((target_values - self.target_mean_) / self.target_std_).astype(np.float32)

        self.n_inputs_ = windows.shape[2]
        device = resolve_device(params.device)
        with _repeatable(params.seed, device):
            network = build_network(self.family, self.n_inputs_, params).to(device)
            if isinstance(network, _TemporalConvNet):
                log.info("cnn: receptive field %d bars of a %d-bar window", network.receptive_field, params.lookback)
            self.history_, self.best_epoch_ = self._train(
                network, windows, scaled_target, train_rows, validation_rows, device, timestamps
            )
        self.network_ = network.eval()
        self.device_ = device
        self.n_train_windows_ = len(train_rows)
        self.n_validation_windows_ = len(validation_rows)
        return self

    def _windows(self, inputs: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(windows, rows whose window is valid), indexed as :func:`window_batch` reads them.

        ``history_layout: alpha360``: every row's window is its own Alpha360 columns as (60 bars, fields),
        oldest bar first (a copy, rows x 60 x fields, rotated so that ``window_batch`` finds row ``r``'s at
        ``r - (lookback - 1)``, negative for the first rows); every row has one.
        """
        if self.params.history_layout == "rows":
            return sequence_windows(inputs, codes, self.params.lookback)
        from alphaforge.alpha360 import LOOKBACK, history_columns

        order, n_fields = history_columns(self.feature_names_)
        history = np.ascontiguousarray(inputs[:, order]).reshape(len(inputs), LOOKBACK, n_fields)
        shift = self.params.lookback - 1
        padded = np.concatenate([history, np.zeros((shift, LOOKBACK, n_fields), dtype=history.dtype)])
        return np.roll(padded, -shift, axis=0), np.arange(len(inputs), dtype=np.int64)

    def _scaled_inputs(self, raw: np.ndarray) -> np.ndarray:
        """Standardise with the fit-row scaler, NaN -> 0, and append the missing indicators (float32)."""
        scaled = ((raw - self.feature_mean_) / self.feature_std_).astype(np.float32)
        missing = np.isnan(scaled)
        scaled[missing] = 0.0
        if self.missing_indicator_features_:
            indicator_columns = [self.feature_names_.index(name) for name in self.missing_indicator_features_]
            scaled = np.concatenate([scaled, missing[:, indicator_columns].astype(np.float32)], axis=1)
        return np.ascontiguousarray(scaled)

    # ---------------------------------------------------------------------------- predicting

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    def _prediction_inputs(
        self, frame: pd.DataFrame, predict_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(windows, rows to predict that have a valid window, their positions among the masked rows)."""
        self._check_fitted()
        rows = np.flatnonzero(_row_mask(predict_mask, len(frame), "predict_mask"))
        codes = _symbol_codes(frame)
        inputs = self._scaled_inputs(_feature_matrix(frame, self.feature_names_))
        windows, valid_end_rows = self._windows(inputs, codes)
        has_window = np.isin(rows, valid_end_rows, assume_unique=True)
        return windows, rows[has_window], np.flatnonzero(has_window)

    def _outputs(self, network_output: torch.Tensor) -> np.ndarray:
        """Network outputs -> forecasts on the target's scale, or P(up) for classification."""
        output = network_output.float()
        if self.task == "classification":
            return torch.sigmoid(output).cpu().numpy().astype(np.float64)
        return output.cpu().numpy().astype(np.float64) * self.target_std_ + self.target_mean_

    def _forward_batches(
        self, windows: np.ndarray, rows: np.ndarray, forward: Callable[[torch.Tensor], torch.Tensor]
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        amp_dtype = _amp_dtype(self.device_)
        for start in range(0, len(rows), self._predict_batch_size):
            batch = slice(start, start + self._predict_batch_size)
            x, _ = self._batch(windows, None, rows[batch], self.device_)
            with torch.autocast(self.device_.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                yield batch, forward(x)

    def predict(self, frame: pd.DataFrame, *, predict_mask: np.ndarray | None = None) -> np.ndarray:
        """One value per masked row: the forecast, or P(up) for classification; NaN where the row has
        no full window of its symbol (its first ``lookback - 1`` bars)."""
        windows, rows, positions = self._prediction_inputs(frame, predict_mask)
        n_masked = len(frame) if predict_mask is None else int(np.asarray(predict_mask).sum())
        predictions = np.full(n_masked, np.nan)
        self.network_.eval()
        with _repeatable(self.params.seed, self.device_), torch.inference_mode():
            for batch, output in self._forward_batches(windows, rows, self.network_):
                predictions[positions[batch]] = self._outputs(output)
        return predictions

    def predict_with_uncertainty(
        self,
        frame: pd.DataFrame,
        *,
        predict_mask: np.ndarray | None = None,
        n_samples: int = 30,
        alpha: float = 0.1,
    ) -> pd.DataFrame:
        """Monte Carlo dropout: ``n_samples`` stochastic forward passes per masked row.

        Returns a frame indexed like the masked rows of ``frame`` with columns ``mean``, ``std``,
        ``lower`` and ``upper`` (the empirical ``alpha/2`` and ``1 - alpha/2`` quantiles of the samples),
        on the target's scale (P(up) for classification); NaN where the row has no full window.
        Repeatable: the dropout masks are drawn from ``seed``.
        """
        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {n_samples}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if self.params.dropout == 0:
            raise ValueError("MC dropout needs dropout > 0; this model was built with dropout=0")
        windows, rows, positions = self._prediction_inputs(frame, predict_mask)
        mask = _row_mask(predict_mask, len(frame), "predict_mask")
        mean, std, lower, upper = self._monte_carlo(windows, rows, positions, int(mask.sum()), n_samples, alpha)
        return pd.DataFrame({"mean": mean, "std": std, "lower": lower, "upper": upper}, index=frame.index[mask])

    def predict_arrays_with_uncertainty(
        self, values: np.ndarray, symbol_codes: np.ndarray, *, n_samples: int = 30, alpha: float = 0.1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_with_uncertainty` (mean, lower, upper) for every row of a raw feature matrix in
        :attr:`feature_names_` order, rows sorted by symbol then time, ``symbol_codes`` one integer per symbol run.

        The same windows, batches and seeded dropout masks as the frame method, so the same numbers, without
        building data frames (the service's panel path: a pandas round trip cost more than the network).
        """
        self._check_fitted()
        if values.ndim != 2 or values.shape[1] != len(self.feature_names_) or len(symbol_codes) != len(values):
            raise ValueError(f"expected rows x {len(self.feature_names_)} features and one symbol code per row, "
                             f"got {values.shape} and {len(symbol_codes)} codes")
        if not 0 < alpha < 1 or n_samples < 2 or self.params.dropout == 0:
            raise ValueError("MC dropout needs n_samples >= 2, 0 < alpha < 1 and dropout > 0")
        inputs = self._scaled_inputs(np.asarray(values, dtype=np.float64))
        windows, valid_end_rows = self._windows(inputs, np.asarray(symbol_codes))
        rows = np.asarray(valid_end_rows, dtype=np.int64)
        mean, _, lower, upper = self._monte_carlo(windows, rows, rows, len(values), n_samples, alpha)
        return mean, lower, upper

    def _monte_carlo(self, windows: np.ndarray, rows: np.ndarray, positions: np.ndarray, n_out: int, n_samples: int,
                     alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, std, lower and upper of ``n_samples`` seeded dropout passes over the windows ending at ``rows``
        (written at ``positions`` of ``n_out`` outputs; NaN elsewhere)."""
        samples = np.full((n_samples, n_out), np.nan)

        def sample(x: torch.Tensor) -> torch.Tensor:
            if len(x) * n_samples <= self._predict_batch_size:
                # small batches (serving): every sample in one forward pass of the batch repeated n_samples
                # times; each copy draws its own dropout masks, so the samples are as independent as in a loop,
                # and a recurrent network pays its per-step cost once instead of n_samples times
                return self.network_(x.repeat(n_samples, *([1] * (x.dim() - 1)))).reshape(n_samples, len(x))
            return torch.stack([self.network_(x) for _ in range(n_samples)])

        _monte_carlo_mode(self.network_)
        try:
            with _repeatable(self.params.seed, self.device_), torch.inference_mode():
                for batch, output in self._forward_batches(windows, rows, sample):
                    samples[:, positions[batch]] = self._outputs(output)
        finally:
            self.network_.eval()
        has_window = ~np.isnan(samples[0])
        lower = np.full(samples.shape[1], np.nan)
        upper = np.full(samples.shape[1], np.nan)
        lower[has_window], upper[has_window] = np.quantile(samples[:, has_window], [alpha / 2, 1 - alpha / 2], axis=0)
        return samples.mean(axis=0), samples.std(axis=0, ddof=1), lower, upper

    def attention_weights(
        self, frame: pd.DataFrame, predict_mask: np.ndarray | None = None, *, last_query_only: bool = False
    ) -> np.ndarray:
        """Transformer attention weights per masked row, layer and head (eval mode, no dropout).

        Shape ``(n_rows, n_layers, n_heads, lookback, lookback)``: ``[i, l, h, q, k]`` is how much
        query step ``q`` attends to key step ``k`` (step ``lookback - 1`` is the predicted bar); each
        ``[..., q, :]`` sums to 1. With ``last_query_only`` only the last query (the step that feeds the
        forecast): ``(n_rows, n_layers, n_heads, lookback)``. NaN for rows without a full window.
        Memory grows as ``n_rows * lookback**2``: pass a mask for large frames.
        """
        if self.family != "transformer":
            raise TypeError(f"attention weights exist for the transformer family only, not {self.family!r}")
        windows, rows, positions = self._prediction_inputs(frame, predict_mask)
        network = self.network_
        assert isinstance(network, _TransformerNet)
        n_masked = len(frame) if predict_mask is None else int(np.asarray(predict_mask).sum())
        lookback, heads = self.params.lookback, self.params.n_heads
        shape = (n_masked, self.params.num_layers, heads, lookback) + (() if last_query_only else (lookback,))
        weights = np.full(shape, np.nan, dtype=np.float32)
        network.eval()
        with torch.inference_mode():
            for batch, output in self._forward_batches(windows, rows, network.attention):
                chosen = output[..., -1, :] if last_query_only else output
                weights[positions[batch]] = chosen.float().cpu().numpy()
        return weights

    # ---------------------------------------------------------------------------- persistence

    def save(self, path: Path) -> None:
        """Write ``model.pt`` (the state dict) and ``config.json`` (family, parameters, feature names,
        scaler, target scaling, training history) into the folder ``path`` (created if needed)."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu() for name, tensor in self.network_.state_dict().items()}
        torch.save(state, folder / WEIGHTS_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "params": self.params.model_dump(),
            "feature_names_": self.feature_names_,
            "missing_indicator_features_": self.missing_indicator_features_,
            "n_inputs_": self.n_inputs_,
            "scaler": {"mean": self.feature_mean_.tolist(), "std": self.feature_std_.tolist()},
            "target_scaling": {"mean": self.target_mean_, "std": self.target_std_},
            "best_epoch_": self.best_epoch_,
            "history_": self.history_,
            "n_train_windows_": self.n_train_windows_,
            "n_validation_windows_": self.n_validation_windows_,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> SequenceForecaster:
        """The forecaster saved in ``path``, on ``device`` as resolved here and now, in eval mode."""
        folder = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a saved sequence forecaster")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / CONFIG_FILE}: format_version {config.get('format_version')!r} is not {FORMAT_VERSION}"
            )
        family = config["family"]
        target_class = FAMILY_CLASSES.get(family)
        if target_class is None:
            raise ValueError(f"{folder / CONFIG_FILE}: unknown family {family!r}")
        if cls is not SequenceForecaster and cls is not target_class:
            raise TypeError(f"{folder} holds a {family!r} model, which {cls.__name__}.load cannot return")
        model = target_class(**config["params"])
        model.feature_names_ = list(config["feature_names_"])
        model.missing_indicator_features_ = list(config["missing_indicator_features_"])
        model.n_inputs_ = int(config["n_inputs_"])
        model.feature_mean_ = np.asarray(config["scaler"]["mean"], dtype=np.float64)
        model.feature_std_ = np.asarray(config["scaler"]["std"], dtype=np.float64)
        model.target_mean_ = float(config["target_scaling"]["mean"])
        model.target_std_ = float(config["target_scaling"]["std"])
        model.best_epoch_ = int(config["best_epoch_"])
        model.history_ = list(config["history_"])
        model.n_train_windows_ = int(config["n_train_windows_"])
        model.n_validation_windows_ = int(config["n_validation_windows_"])
        model.device_ = resolve_device(model.params.device)
        network = build_network(family, model.n_inputs_, model.params)
        network.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        model.network_ = network.to(model.device_).eval()
        return model


class LSTMForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with an LSTM."""

    __module__ = PUBLIC_MODULE

    family: ClassVar[str] = "lstm"


class GRUForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a GRU."""

    __module__ = PUBLIC_MODULE

    family: ClassVar[str] = "gru"


class TransformerForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a pre-norm Transformer encoder and sinusoidal positions."""

    __module__ = PUBLIC_MODULE

    family: ClassVar[str] = "transformer"


class CNNForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a causal dilated 1-D CNN (TCN)."""

    __module__ = PUBLIC_MODULE

    family: ClassVar[str] = "cnn"


FAMILY_CLASSES: dict[str, type[SequenceForecaster]] = {
    "lstm": LSTMForecaster,
    "gru": GRUForecaster,
    "transformer": TransformerForecaster,
    "cnn": CNNForecaster,
}
