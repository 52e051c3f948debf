"""The torch networks of the sequence families, and the device, precision and RNG they run under.

Each network maps a ``(batch, lookback, n_inputs)`` window batch to ``(batch,)`` from the last step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import nn

from alphaforge.models.params import SequenceParams

SequenceFamily = Literal["lstm", "gru", "transformer", "cnn"]
SEQUENCE_FAMILIES: tuple[str, ...] = get_args(SequenceFamily)


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
