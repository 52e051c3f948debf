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

Layout: :mod:`.windows` (windows, frame checks, timestamp batches), :mod:`.nets` (the networks, device,
precision and RNG), :mod:`.training` (the fit loop and losses, the IC objective included),
:mod:`.forecaster` (the forecaster classes, save/load), :mod:`.attention` (attention heatmaps). Every name
is importable from ``alphaforge.models.sequence`` as before the split.
"""

from alphaforge.models.params import SequenceParams
from alphaforge.models.sequence.attention import plot_attention
from alphaforge.models.sequence.forecaster import (
    CONFIG_FILE,
    FAMILY_CLASSES,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CNNForecaster,
    GRUForecaster,
    LSTMForecaster,
    SequenceForecaster,
    TransformerForecaster,
)
from alphaforge.models.sequence.nets import (  # noqa: F401  (the private ones: still importable from the old path)
    SEQUENCE_FAMILIES,
    SequenceFamily,
    _amp_dtype,
    _CausalConv1d,
    _EncoderLayer,
    _monte_carlo_mode,
    _RecurrentNet,
    _repeatable,
    _TemporalBlock,
    _TemporalConvNet,
    _TransformerNet,
    build_network,
    resolve_device,
    sinusoidal_positions,
)
from alphaforge.models.sequence.training import ic_loss, per_timestamp_ic
from alphaforge.models.sequence.windows import (  # noqa: F401  (the private ones: still importable from the old path)
    _feature_matrix,
    _row_mask,
    _symbol_codes,
    _timestamp_keys,
    sequence_windows,
    timestamp_batches,
    window_batch,
)

__all__ = [
    "CONFIG_FILE",
    "FAMILY_CLASSES",
    "FORMAT_VERSION",
    "SEQUENCE_FAMILIES",
    "WEIGHTS_FILE",
    "CNNForecaster",
    "GRUForecaster",
    "LSTMForecaster",
    "SequenceFamily",
    "SequenceForecaster",
    "SequenceParams",
    "TransformerForecaster",
    "build_network",
    "ic_loss",
    "per_timestamp_ic",
    "plot_attention",
    "resolve_device",
    "sequence_windows",
    "sinusoidal_positions",
    "timestamp_batches",
    "window_batch",
]
