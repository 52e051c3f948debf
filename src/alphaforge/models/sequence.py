"""Torch sequence models (LSTM, GRU, Transformer encoder, causal CNN/TCN) over a lookback window.

Each prediction for row ``t`` of a panel sorted by (symbol, timestamp) is made from the
window of the ``lookback`` bars of the same symbol that *end at* ``t`` (bar ``t`` included,
nothing after it), so a forecast uses only what a trader had at the close of ``t``.

Windows are strided views of the scaled feature matrix (:func:`sequence_windows`): no
``n_rows x lookback x n_features`` copy is ever made, only the mini-batch being fed to the
network is materialised. The scaled matrix itself is one ``n_rows x n_inputs`` float32 copy.

Training (:meth:`SequenceForecaster.fit`):

* a per-feature scaler (mean/std) fitted on the ``fit_mask`` rows only; NaN features
  (indicator warm-up) become 0 after scaling, plus a 0/1 missing-indicator input for every
  feature that had NaN in the fit frame (``missing_indicator=True``);
* an inner validation slice made of the *last* ``validation_fraction`` of the trainable fit rows
  by timestamp (time order respected; every row of a timestamp falls on one side), early
  stopping on its loss with the best weights restored;
* MSE on the target standardised by the inner-train mean/std (regression; undone on predict),
  BCE-with-logits for classification (predict returns P(up));
* AdamW, gradient-norm clipping, and on CUDA automatic mixed precision (bf16 where the GPU has
  it, else fp16 with a gradient scaler).

Repeatability: ``seed`` seeds the torch RNG (inside :func:`torch.random.fork_rng`, so the
caller's global RNG is untouched) and a local numpy generator for batch order and window
sampling; on CPU ``torch.use_deterministic_algorithms(True, warn_only=True)`` is switched on
for the duration of ``fit``/``predict`` and restored afterwards, so two CPU runs with the same
seed, data and thread count give identical weights. The number of intra-op threads is left to
torch's default (``torch.set_num_threads`` is the caller's business); results can differ in the
last bits between thread counts. CUDA runs are not bit-repeatable (cuDNN/atomics), by design.

Uncertainty: :meth:`SequenceForecaster.predict_with_uncertainty` runs Monte Carlo dropout
(dropout active, everything else in eval mode) and reports mean, std and an empirical interval.
The Transformer exposes its attention weights per layer and head
(:meth:`SequenceForecaster.attention_weights`), which :func:`plot_attention` draws as heatmaps.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from alphaforge.features import feature_columns
from alphaforge.models.base import KEY_COLUMNS, Task
from alphaforge.models.params import SequenceParams  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

SequenceFamily = Literal["lstm", "gru", "transformer", "cnn"]
SEQUENCE_FAMILIES: tuple[str, ...] = get_args(SequenceFamily)
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def sequence_windows(values: np.ndarray, symbol_codes: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Strided lookback windows over a panel's feature matrix, and the rows whose window is valid.

    ``values`` is the ``(n_rows, n_features)`` matrix of a panel sorted by (symbol, timestamp) and
    ``symbol_codes`` the symbol of each row (any integer codes). Returns ``(windows, valid_end_rows)``:

    * ``windows`` has shape ``(n_rows - lookback + 1, lookback, n_features)`` and is a read-only
      *view* of ``values`` (no copy): ``windows[r - (lookback - 1)]`` holds rows
      ``r - lookback + 1 .. r``, i.e. the window that *ends at* row ``r`` (bar ``r`` included,
      nothing after it). :func:`window_batch` gathers a batch of them by end row.
    * ``valid_end_rows`` (int64, ascending) are the rows ``r`` whose whole window belongs to the
      symbol of ``r``: windows never cross a symbol boundary, so the first ``lookback - 1`` rows of
      every symbol have none.
    """
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D (n_rows, n_features) matrix, got shape {values.shape}")
    if symbol_codes.shape != (values.shape[0],):
        raise ValueError(
            f"symbol_codes must have one code per row of values: shape {symbol_codes.shape} vs {values.shape[0]} rows"
        )
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    n_rows, n_features = values.shape
    if n_rows < lookback:
        empty = sliding_window_view(np.empty((lookback, n_features), dtype=values.dtype), (lookback, n_features))
        return empty[:0, 0], np.empty(0, dtype=np.int64)
    windows = sliding_window_view(values, (lookback, n_features))[:, 0]
    # A window is valid when no symbol change happens inside it: the running count of changes at
    # its first row equals the count at its last row.
    changes = np.concatenate(([0], np.cumsum(symbol_codes[1:] != symbol_codes[:-1])))
    end_rows = np.arange(lookback - 1, n_rows, dtype=np.int64)
    valid = changes[end_rows] == changes[end_rows - (lookback - 1)]
    return windows, end_rows[valid]


def window_batch(windows: np.ndarray, end_rows: np.ndarray, lookback: int) -> np.ndarray:
    """Materialise (copy) the windows ending at ``end_rows``: shape ``(len(end_rows), lookback, n_features)``."""
    return np.ascontiguousarray(windows[np.asarray(end_rows, dtype=np.int64) - (lookback - 1)])


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``'auto'`` -> the first CUDA GPU when one is available, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but torch sees no CUDA GPU")
    return resolved


# --------------------------------------------------------------------------------------------
# Networks: each maps (batch, lookback, n_inputs) -> (batch,) from the last step
# --------------------------------------------------------------------------------------------


class _RecurrentNet(nn.Module):
    """LSTM or GRU; the last step's hidden state (through dropout) feeds a linear head, plus a linear
    "highway" from the last bar's inputs (as in LSTNet, Lai et al. 2018).

    The tanh-bounded hidden state cannot follow the scale of its inputs (a volatility target, or an
    input far outside the training range, would be squashed); the highway gives the output a path
    whose scale follows the inputs, and its dropout lets MC-dropout intervals widen with them.
    """

    def __init__(self, cell: Literal["lstm", "gru"], n_inputs: int, params: SequenceParams) -> None:
        super().__init__()
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            n_inputs,
            params.hidden_size,
            num_layers=params.num_layers,
            batch_first=True,
            dropout=params.dropout if params.num_layers > 1 else 0.0,
        )
        self.head_dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.hidden_size, 1)
        self.highway_dropout = nn.Dropout(params.dropout)
        self.highway = nn.Linear(n_inputs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        recurrent = self.head(self.head_dropout(output[:, -1]))
        return (recurrent + self.highway(self.highway_dropout(x[:, -1]))).squeeze(-1)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The (length, width) sinusoidal positional encoding of Vaswani et al. (2017)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, width + 1, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    encoding = torch.zeros(length, width + 1)
    encoding[:, 0::2] = torch.sin(position * frequencies)
    encoding[:, 1::2] = torch.cos(position * frequencies[: encoding[:, 1::2].shape[1]])
    return encoding[:, :width]


class _EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer, written out so it can hand back its attention weights."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_width = width // n_heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.attention_dropout = nn.Dropout(dropout)
        self.residual_dropout = nn.Dropout(dropout)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (batch, steps, width) -> (new x, attention weights (batch, heads, steps, steps))."""
        batch, steps, width = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, steps, 3, self.n_heads, self.head_width)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, steps, head_width)
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_width)
        weights = scores.float().softmax(dim=-1)
        context = (self.attention_dropout(weights).to(value.dtype) @ value).transpose(1, 2).reshape(batch, steps, width)
        x = x + self.residual_dropout(self.attention_out(context))
        x = x + self.residual_dropout(self.feedforward(self.feedforward_norm(x)))
        return x, weights


class _TransformerNet(nn.Module):
    """Linear input projection + sinusoidal positions, encoder layers, the last step feeds a linear head.

    Attention is full within the window: the window already ends at the predicted bar, so no step
    can see past it. There is deliberately no final LayerNorm before the head: with one, the
    pre-norm network would be blind to the overall scale of its inputs (all features twice as large
    give the same forecast), which is wrong for volatility targets and hides inputs far outside the
    training range from MC dropout.
    """

    def __init__(self, n_inputs: int, params: SequenceParams) -> None:
        super().__init__()
        width = params.hidden_size
        self.input_projection = nn.Linear(n_inputs, width)
        self.register_buffer("positions", sinusoidal_positions(params.lookback, width), persistent=False)
        self.input_dropout = nn.Dropout(params.dropout)
        self.layers = nn.ModuleList(
            _EncoderLayer(width, params.n_heads, params.dropout) for _ in range(params.num_layers)
        )
        self.head_dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(width, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.input_dropout(self.input_projection(x) + self.positions[: x.shape[1]])
        all_weights = []
        for layer in self.layers:
            hidden, weights = layer(hidden)
            all_weights.append(weights)
        return hidden, all_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.encode(x)
        return self.head(self.head_dropout(hidden[:, -1])).squeeze(-1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights, shape (batch, layers, heads, steps, steps); each row sums to 1."""
        _, all_weights = self.encode(x)
        return torch.stack(all_weights, dim=1)


class _CausalConv1d(nn.Module):
    """A dilated 1-D convolution padded on the left only: output step s sees inputs <= s."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_padding = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (self.left_padding, 0)))


class _TemporalBlock(nn.Module):
    """Two causal convolutions with ReLU and dropout, plus a (1x1-projected) residual."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _CausalConv1d(in_channels, channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
            _CausalConv1d(channels, channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.residual = nn.Conv1d(in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.residual(x))


class _TemporalConvNet(nn.Module):
    """A TCN (Bai et al. 2018): residual blocks of causal convolutions with dilation 1, 2, 4, ...

    The receptive field is ``1 + 2 * (kernel_size - 1) * (2**num_layers - 1)`` bars; the last step's
    features (which see only the window, and only its last ``receptive_field`` bars) feed the head.
    """

    def __init__(self, n_inputs: int, params: SequenceParams) -> None:
        super().__init__()
        blocks = []
        for level in range(params.num_layers):
            in_channels = n_inputs if level == 0 else params.hidden_size
            blocks.append(_TemporalBlock(in_channels, params.hidden_size, params.kernel_size, 2**level, params.dropout))
        self.blocks = nn.Sequential(*blocks)
        self.head_dropout = nn.Dropout(params.dropout)
        self.head = nn.Linear(params.hidden_size, 1)
        self.receptive_field = 1 + 2 * (params.kernel_size - 1) * (2**params.num_layers - 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step features, (batch, steps, channels); step s depends on input steps <= s only."""
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.features(x)[:, -1])).squeeze(-1)


def build_network(family: str, n_inputs: int, params: SequenceParams) -> nn.Module:
    """The untrained network of ``family`` for ``n_inputs`` inputs per step."""
    if family in ("lstm", "gru"):
        return _RecurrentNet(family, n_inputs, params)  # type: ignore[arg-type]
    if family == "transformer":
        return _TransformerNet(n_inputs, params)
    if family == "cnn":
        return _TemporalConvNet(n_inputs, params)
    raise ValueError(f"unknown sequence family {family!r}; expected one of {SEQUENCE_FAMILIES}")


def _monte_carlo_mode(network: nn.Module) -> None:
    """Eval mode everywhere except dropout (and the RNNs' inter-layer dropout), which stays active."""
    network.eval()
    for module in network.modules():
        if isinstance(module, (nn.Dropout, nn.RNNBase)):
            module.train()


# --------------------------------------------------------------------------------------------
# Frame checks and preparation
# --------------------------------------------------------------------------------------------


def _row_mask(mask: np.ndarray | pd.Series | None, n_rows: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n_rows, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {array.dtype}")
    if array.shape != (n_rows,):
        raise ValueError(f"{name} must have one entry per frame row: shape {array.shape} vs {n_rows} rows")
    return array


def _timestamp_keys(frame: pd.DataFrame) -> np.ndarray:
    column = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(column):
        return pd.DatetimeIndex(column).asi8
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.int64)
    raise TypeError(f"column 'timestamp' must be datetime-like, got dtype {column.dtype}")


def _symbol_codes(frame: pd.DataFrame) -> np.ndarray:
    """Integer symbol codes, after checking the frame is sorted by (symbol, timestamp)."""
    missing = [column for column in KEY_COLUMNS if column not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the key column(s) {missing}; expected {list(KEY_COLUMNS)} + features")
    codes, uniques = pd.factorize(frame["symbol"], sort=False)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"column 'symbol' is missing at row {frame.index[row]!r}")
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    if len(starts) != len(uniques):
        seen: set[int] = set()
        for start in starts:
            if codes[start] in seen:
                raise ValueError(
                    f"frame must be sorted by (symbol, timestamp): symbol {uniques[codes[start]]!r} "
                    f"starts a second block at row {frame.index[start]!r}"
                )
            seen.add(int(codes[start]))
    timestamps = _timestamp_keys(frame)
    same_symbol = codes[1:] == codes[:-1]
    backwards = same_symbol & (timestamps[1:] <= timestamps[:-1])
    if backwards.any():
        row = int(np.flatnonzero(backwards)[0]) + 1
        raise ValueError(
            f"frame must be sorted by (symbol, timestamp) with unique timestamps per symbol: row {frame.index[row]!r} "
            f"(symbol {frame['symbol'].iloc[row]!r}) is not after the row before it"
        )
    return codes.astype(np.int64)


def _feature_matrix(frame: pd.DataFrame, feature_names: list[str]) -> np.ndarray:
    """The raw float64 feature matrix; non-numeric columns and infinities raise, naming column and row."""
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the feature column(s) {missing} the model was fitted on")
    for name in feature_names:
        dtype = frame[name].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise TypeError(f"feature column {name!r} must be numeric, got dtype {dtype}")
    values = frame[feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        row, column = (int(i) for i in np.argwhere(infinite)[0])
        raise ValueError(f"feature column {feature_names[column]!r} is infinite at row {frame.index[row]!r}")
    return values


# --------------------------------------------------------------------------------------------
# The forecaster
# --------------------------------------------------------------------------------------------


def timestamp_batches(rows: np.ndarray, timestamps: np.ndarray, batch_size: int, rng: np.random.Generator
                      ) -> list[np.ndarray]:
    """``rows`` grouped into batches of whole timestamps (in random order), about ``batch_size`` rows each: a
    per-timestamp loss needs every symbol of a timestamp in the same batch. A timestamp larger than
    ``batch_size`` is a batch of its own."""
    order = np.argsort(timestamps[rows], kind="stable")
    ordered = rows[order]
    keys = timestamps[ordered]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    groups = np.split(ordered, starts[1:])
    batches: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for index in rng.permutation(len(groups)):
        group = groups[index]
        if current and size + len(group) > batch_size:
            batches.append(np.concatenate(current))
            current, size = [], 0
        current.append(group)
        size += len(group)
    if current:
        batches.append(np.concatenate(current))
    return batches


def per_timestamp_ic(prediction: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The Pearson correlation of ``prediction`` and ``target`` among the rows of each group (``groups``: 0..G-1,
    one per timestamp), shape (G,): each group is centred and scaled with its own rows only. NaN for a group
    with fewer than two rows or a constant side."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    count = torch.zeros(n_groups, dtype=prediction.dtype, device=prediction.device).index_add_(
        0, groups, torch.ones_like(prediction))

    def centred(x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)
        return x - (total / count)[groups]

    def group_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)

    p, t = centred(prediction), centred(target.to(prediction.dtype))
    covariance, p_var, t_var = group_sum(p * t), group_sum(p * p), group_sum(t * t)
    ic = covariance / torch.sqrt((p_var * t_var).clamp_min(1e-24))  # clamped inside: no inf gradient at 0
    return torch.where((count >= 2) & (p_var > 0) & (t_var > 0), ic, torch.full_like(ic, float("nan")))


def ic_loss(prediction: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``objective: ic``: minus the mean per-timestamp IC of the groups where it exists (0, still differentiable,
    when none does)."""
    ic = per_timestamp_ic(prediction, target, groups)
    known = ~torch.isnan(ic)
    if not bool(known.any()):
        return prediction.sum() * 0.0
    return -ic[known].mean()


class SequenceForecaster:
    """A torch sequence model over the ``lookback`` bars ending at each predicted row.

    Implements :class:`alphaforge.models.base.Forecaster`. Pick the family with a subclass
    (:class:`LSTMForecaster`, :class:`GRUForecaster`, :class:`TransformerForecaster`,
    :class:`CNNForecaster`) or with ``SequenceForecaster(family=...)``; the keyword arguments are
    the fields of :class:`SequenceParams` (an unknown one raises).

    There is deliberately no ``feature_importance``: these networks have no split gain, and
    permutation importance is computed generically for every family by the caller.
    """

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

    def _split_validation(self, candidates: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner-train rows, validation rows): validation = the last share of candidates by timestamp."""
        fraction = self.params.validation_fraction
        if fraction == 0:
            return candidates, candidates[:0]
        candidate_times = timestamps[candidates]
        ordered = np.sort(candidate_times)
        cutoff = ordered[min(int(len(ordered) * (1 - fraction)), len(ordered) - 1)]
        in_validation = candidate_times >= cutoff
        if in_validation.all():
            raise ValueError(
                f"validation_fraction={fraction} leaves no training rows: the trainable fit rows span too few "
                "timestamps; give more rows or lower validation_fraction"
            )
        return candidates[~in_validation], candidates[in_validation]

    def _train(
        self,
        network: nn.Module,
        windows: np.ndarray,
        target: np.ndarray,
        train_rows: np.ndarray,
        validation_rows: np.ndarray,
        device: torch.device,
        timestamps: np.ndarray | None = None,
    ) -> tuple[list[dict[str, float]], int]:
        params = self.params
        by_timestamp = params.objective == "ic"
        if by_timestamp and timestamps is None:
            raise ValueError("objective 'ic' needs each row's timestamp")
        rng = np.random.default_rng(params.seed)
        amp_dtype = _amp_dtype(device)
        grad_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        loss_function = self._loss_function()
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state = math.inf, 0, None
        stale_epochs = 0
        for epoch in range(1, params.max_epochs + 1):
            started = time.perf_counter()
            rows = train_rows
            if params.max_train_windows is not None and len(rows) > params.max_train_windows:
                rows = rng.choice(rows, size=params.max_train_windows, replace=False)
            if by_timestamp:
                batches = timestamp_batches(rows, timestamps, params.batch_size, rng)
            else:
                rows = rng.permutation(rows)
                batches = [rows[start : start + params.batch_size] for start in range(0, len(rows), params.batch_size)]
            network.train()
            total, count = 0.0, 0
            for batch_rows in batches:
                x, y = self._batch(windows, target, batch_rows, device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    output = network(x).float()
                    if by_timestamp:
                        groups = torch.from_numpy(np.unique(timestamps[batch_rows], return_inverse=True)[1]).to(device)
                        loss = ic_loss(output, y, groups)
                    else:
                        loss = loss_function(output, y)
                optimizer.zero_grad(set_to_none=True)
                grad_scaler.scale(loss).backward()
                if params.grad_clip is not None:
                    grad_scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(network.parameters(), params.grad_clip)
                grad_scaler.step(optimizer)
                grad_scaler.update()
                total += float(loss.detach()) * len(batch_rows)
                count += len(batch_rows)
            train_loss = total / count
            if not len(validation_rows):
                validation_loss = math.nan
            elif by_timestamp:
                validation_loss = self._evaluate_ic_loss(network, windows, target, validation_rows, device, timestamps)
            else:
                validation_loss = self._evaluate_loss(network, windows, target, validation_rows, device, loss_function)
            seconds = time.perf_counter() - started
            history.append(
                {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss, "seconds": seconds}
            )
            log.info(
                "%s epoch %d/%d: train loss %.5f, validation loss %.5f, %.2fs",
                self.family, epoch, params.max_epochs, train_loss, validation_loss, seconds,
            )
            if not len(validation_rows):
                best_epoch = epoch
                continue
            if validation_loss < best_loss:
                best_loss, best_epoch, stale_epochs = validation_loss, epoch, 0
                best_state = copy.deepcopy(network.state_dict())
            else:
                stale_epochs += 1
                if stale_epochs >= params.patience:
                    log.info("%s: early stop after epoch %d, best epoch %d", self.family, epoch, best_epoch)
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        return history, best_epoch

    def _loss_function(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.task == "classification":
            return nn.functional.binary_cross_entropy_with_logits
        return nn.functional.mse_loss

    def _batch(
        self, windows: np.ndarray, target: np.ndarray | None, rows: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(window_batch(windows, rows, self.params.lookback)).to(device, non_blocking=True)
        y = torch.from_numpy(target[rows]).to(device, non_blocking=True) if target is not None else x.new_empty(0)
        return x, y

    @torch.no_grad()
    def _evaluate_loss(
        self,
        network: nn.Module,
        windows: np.ndarray,
        target: np.ndarray,
        rows: np.ndarray,
        device: torch.device,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        network.eval()
        amp_dtype = _amp_dtype(device)
        total = 0.0
        for start in range(0, len(rows), self._predict_batch_size):
            batch_rows = rows[start : start + self._predict_batch_size]
            x, y = self._batch(windows, target, batch_rows, device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                output = network(x).float()
            total += float(loss_function(output, y, reduction="sum"))  # type: ignore[call-arg]
        return total / len(rows)

    @torch.no_grad()
    def _evaluate_ic_loss(self, network: nn.Module, windows: np.ndarray, target: np.ndarray, rows: np.ndarray,
                          device: torch.device, timestamps: np.ndarray) -> float:
        """Minus the mean per-timestamp IC over the validation rows, all forecasts first (whole timestamps)."""
        network.eval()
        outputs = []
        for start in range(0, len(rows), self._predict_batch_size):
            x, _ = self._batch(windows, None, rows[start : start + self._predict_batch_size], device)
            outputs.append(network(x).float().cpu())
        groups = torch.from_numpy(np.unique(timestamps[rows], return_inverse=True)[1])
        return float(ic_loss(torch.cat(outputs), torch.from_numpy(target[rows]), groups))

    @property
    def _predict_batch_size(self) -> int:
        return max(self.params.batch_size, 4096)

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

    family: ClassVar[str] = "lstm"


class GRUForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a GRU."""

    family: ClassVar[str] = "gru"


class TransformerForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a pre-norm Transformer encoder and sinusoidal positions."""

    family: ClassVar[str] = "transformer"


class CNNForecaster(SequenceForecaster):
    """:class:`SequenceForecaster` with a causal dilated 1-D CNN (TCN)."""

    family: ClassVar[str] = "cnn"


FAMILY_CLASSES: dict[str, type[SequenceForecaster]] = {
    "lstm": LSTMForecaster,
    "gru": GRUForecaster,
    "transformer": TransformerForecaster,
    "cnn": CNNForecaster,
}


# --------------------------------------------------------------------------------------------
# Plots and helpers
# --------------------------------------------------------------------------------------------


def plot_attention(weights: np.ndarray, path: Path, *, title: str = "attention") -> Path:
    """Write a grid of attention heatmaps (one per layer and head) to the PNG ``path``.

    ``weights`` is one row's ``(n_layers, n_heads, lookback, lookback)`` from
    :meth:`SequenceForecaster.attention_weights`, or several rows' ``(n_rows, ...)`` which are
    averaged (ignoring NaN rows). Uses the Agg canvas directly, so no GUI and no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 5:
        with np.errstate(invalid="ignore"):
            array = np.nanmean(array, axis=0)
    if array.ndim != 4 or array.shape[-1] != array.shape[-2]:
        raise ValueError(
            "weights must be (n_layers, n_heads, lookback, lookback) or (n_rows, ...) of it, "
            f"got shape {np.shape(weights)}"
        )
    if np.isnan(array).all():
        raise ValueError("weights are all NaN (no row had a full window)")
    n_layers, n_heads, lookback, _ = array.shape
    figure = Figure(figsize=(3.2 * n_heads + 1, 3.0 * n_layers), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_layers, n_heads, squeeze=False)
    # Step labels count back from the predicted bar: t, t-1, ...
    labels = [f"t-{lookback - 1 - step}" if step < lookback - 1 else "t" for step in range(lookback)]
    tick_every = max(1, lookback // 8)
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            axis = axes[layer, head]
            image = axis.imshow(array[layer, head], cmap="viridis", vmin=0.0, vmax=float(np.nanmax(array)))
            axis.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=9)
            ticks = list(range(0, lookback, tick_every))
            axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
            axis.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
            axis.set_xlabel("key (attended bar)", fontsize=8)
            axis.set_ylabel("query bar", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="weight")
    figure.suptitle(title)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    return target


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype on CUDA (bf16 where supported, else fp16); None (full fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def _repeatable(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG (the caller's RNG state is restored on exit) and, on CPU,
    switch deterministic algorithms on for the duration."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=cuda_devices):
        if device.type == "cpu":  # the CPU generator only: torch.manual_seed also queues lazy seeding of every
            torch.random.default_generator.manual_seed(seed)  # accelerator, formatting a stack trace each (~0.4 ms)
        else:
            torch.manual_seed(seed)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
