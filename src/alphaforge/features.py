"""Technical features and forward-looking labels, vectorised across all symbols at once.

Everything is counted in bars of each symbol (not calendar time). The bars (canonical
long schema, sorted by symbol then timestamp) are laid out as a symbols x bars panel
(NaN past each symbol's last bar), and every indicator is a whole-panel NumPy/SciPy
operation along the time axis: shifts, block-wise cumulative sums, IIR filters for
the exponential averages, and running max/min filters. No Python loop over symbols,
no pandas groupby-rolling (the plain pandas reference lives in
``benchmarks/feature_reference.py``; the tests hold the two to 1e-9).

**Causality.** The features of bar ``t`` depend only on that symbol's bars ``<= t``;
the cross-sectional ranks use only the rows at timestamp ``t``. Each panel row is
computed from its own past only, so results do not even change in the last bit when
later bars are cut off (the tests check this for every feature).

Definitions (``p`` is a bar's position within its symbol; a window that is not yet
full gives NaN):

* ``log_return_{h}`` = log(close[p] / close[p-h]).
* ``sma_ratio_{w}`` = close / SMA_w(close) - 1; ``ema_ratio_{w}`` = close / EMA_w(close) - 1,
  where EMA_w is pandas' ``ewm(span=w, adjust=False)`` (starts at the first close,
  NaN for the first w-1 bars).
* ``rsi`` (0..100, Wilder): average gain and loss start at bar ``n`` as the simple mean of
  the first ``n`` one-bar changes, then ``avg += (x - avg) / n``;
  ``rsi = 100 * gain / (gain + loss)``, and **50 when there was no movement** (0/0).
* ``macd`` = (EMA_fast - EMA_slow) / close; ``macd_signal`` = EMA_signal of the raw MACD line
  (started at its first value) / close; ``macd_hist`` = macd - macd_signal.
* ``bollinger_position`` = (close - SMA_w) / (k * std_w) with the population std (ddof=0);
  **0 on a flat window** (std 0).
* ``volatility_{w}``: sample std (ddof=1) of the last ``w`` one-bar log returns (0 when
  they are all equal, e.g. a symbol that did not trade).
* ``atr_ratio`` = ATR / close; true range needs the previous close (NaN on a symbol's
  first bar); ATR is Wilder-smoothed like the RSI averages. Needs high, low.
* ``stochastic_k`` = (close - lowest low) / (highest high - lowest low) over ``n`` bars,
  in 0..1, **0.5 when highest high == lowest low**; ``stochastic_d`` = its ``smooth``-bar
  mean. Needs high, low.
* ``volume_ratio`` = volume / mean volume over ``w`` bars; ``log_dollar_volume`` =
  log(mean of close * volume over ``w`` bars). Both **NaN when the window has no volume**.
* ``spread`` = (ask - bid) / mid (NaN when mid is 0); ``order_imbalance`` =
  (bid_size - ask_size) / (bid_size + ask_size), **0 when both sizes are 0**.
* ``day_of_week`` (Monday 0), ``month`` (1..12) in UTC; ``hour`` (UTC) only for intraday
  data (more than half the gaps between a symbol's consecutive bars under one day).
* ``{name}_cs_rank``: percentile rank (ties averaged, pandas ``rank(pct=True)``) of a feature
  among the symbols at the same timestamp; only when the data has more than one symbol.
* ``regime_prob_{k}`` (``features.regimes``, with a fitted regime model): the forward-filtered probability
  P(regime k | market bars up to t) of :mod:`alphaforge.regimes` (regime 0 the calmest); one market-wide
  value per timestamp, the same for every symbol; NaN until the model's volatility window is full.

**Feature sets and processing.** ``features.set: alpha158`` replaces the per-symbol indicators above with
Qlib's Alpha158 factors (:mod:`alphaforge.alpha158`, one window kernel shared with the incremental engine);
the calendar, rank, exogenous, sentiment and regime columns follow either set. ``features.processing``
(``cs_rank``/``cs_zscore``, :func:`process_rows`) then transforms each per-symbol feature among the symbols
of its timestamp and fills NaN with 0: no fitted state, one timestamp at a time, so it stays causal and the
same in training and serving. ``labels.normalise`` (:func:`normalised_label`) is the training label's analogue.

Features whose input columns the bars lack are skipped, with one INFO log line naming
the feature and the missing column (skfolio's data, for one, has closes only).
Inputs are checked first: bars sorted by (symbol, timestamp), close/high/low finite
and > 0, volume finite and >= 0; anything else raises :class:`DataError` naming the
column, row and rule. Bump :data:`FEATURE_VERSION` whenever a definition changes.

Rolling sums are cumulative sums restarted every block of bars and taken relative to
the block's first value, so they neither drift with a series' length nor cancel
catastrophically in the variance (see :class:`_Rolling`); they match a two-pass
computation to ~1e-14.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import lfilter

from alphaforge import alpha158, alpha360
from alphaforge.featurestore.exogenous import ExogenousParams, load_exogenous
from alphaforge.featurestore.sentiment import SentimentParams, load_headlines
from alphaforge.schema import KEY_COLUMNS, NUMERIC_COLUMNS, DataError

if TYPE_CHECKING:
    from alphaforge.regimes import RegimeModel

log = logging.getLogger(__name__)

FEATURE_VERSION: str = "1"
LABEL_COLUMNS: tuple[str, ...] = ("forward_return", "forward_direction", "forward_volatility", "forward_return_1")
#: The factor families of ``features.set`` beyond the basic indicators: module with plan, all_names, inputs_of,
#: window_of and describe.
FACTOR_SETS = {"alpha158": alpha158, "alpha360": alpha360}


def factor_values(feature_set: str, panels: dict[str, np.ndarray], names: list[str], *, last_only: bool
                  ) -> dict[str, np.ndarray]:
    """The factor family ``feature_set``'s columns ``names`` of (rows, bars) panels; shared by the batch library
    and the incremental engine (``last_only``: the value at each row's last bar)."""
    if feature_set == "alpha360":
        return alpha360.alpha360_values(panels, names, last_only=last_only)
    return alpha158.alpha158_values(panels, names, last_only=last_only)

# Panel cells (symbols x bars) computed at once; bounds memory, not results.
_PANEL_CELL_BUDGET: int = 1 << 17
# Rolling sums restart every _MIN_BLOCK bars (or the largest window, if longer).
_MIN_BLOCK: int = 128
# Alpha158 works on (symbols, bars, window) views: smaller panels keep its temporaries (x 60 bars) small.
_ALPHA158_CELL_BUDGET: int = 1 << 16
_NANOS_PER_DAY: int = 86_400_000_000_000
_NANOS_PER_HOUR: int = 3_600_000_000_000


class FeatureParams(BaseModel):
    """Windows (in bars) and switches of the feature set; the defaults are the usual textbook ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Which per-symbol feature family: "basic" (the indicators below, the default) or "alpha158" (Qlib's
    # Alpha158 factors, alphaforge.alpha158; the basic windows are then unused). Calendar, cross-sectional
    # ranks, exogenous, sentiment and regime columns follow either set.
    # "alpha360": Qlib's Alpha360, the last 60 bars of open/high/low/close over the current close and of the volume
    # over the current volume (alphaforge.alpha360), for the sequence models or tabular ones.
    set: Literal["basic", "alpha158", "alpha360"] = "basic"
    # Per-timestamp cross-sectional processing of the per-symbol features, after they are computed (no fitted
    # state: each timestamp sees only its own rows): "cs_rank" = (percentile rank - 0.5) * 3.46 (Qlib's
    # CSRankNorm), "cs_zscore" = (x - mean) / std (ddof 1, Qlib's CSZScoreNorm); both then fill NaN with 0
    # (Qlib's Fillna). Calendar, exogenous, regime and *_cs_rank columns are left as they are.
    # "robust_zscore" (Qlib's RobustZScoreNorm: (x - median) / (1.4826 MAD), clipped to [-3, 3]) and
    # "robust_zscore_fillna" (the same, then NaN -> 0; also written [robust_zscore, fillna]) are fitted on the
    # TRAINING rows, so they are not applied here: the model carries them (alphaforge.models.normalise).
    processing: Literal["none", "cs_rank", "cs_zscore", "robust_zscore", "robust_zscore_fillna"] = "none"
    return_horizons: tuple[int, ...] = Field((1, 5, 10, 20), min_length=1)
    ma_windows: tuple[int, ...] = (5, 10, 20, 50)
    rsi_window: int = Field(14, ge=1)
    macd_fast: int = Field(12, ge=1)
    macd_slow: int = Field(26, ge=2)
    macd_signal: int = Field(9, ge=1)
    bollinger_window: int = Field(20, ge=2)
    bollinger_k: float = Field(2.0, gt=0.0)
    atr_window: int = Field(14, ge=1)
    stochastic_window: int = Field(14, ge=1)
    stochastic_smooth: int = Field(3, ge=1)
    volatility_windows: tuple[int, ...] = (5, 20)
    volume_window: int = Field(20, ge=1)
    calendar: bool = True
    cross_sectional_ranks: tuple[str, ...] = ("log_return_5", "log_return_20", "volatility_20")
    # Optional groups (off by default: the default feature set, and what FEATURE_VERSION means, stay as they were).
    exogenous: ExogenousParams = ExogenousParams()
    sentiment: SentimentParams = SentimentParams()
    # Market regime probabilities regime_prob_0..k-1 from a fitted regime model (alphaforge.regimes; the regimes
    # stage fits it on the first training window). On by default; they exist only when a model is handed to
    # compute_features (the features stage and the service do), so FEATURE_VERSION is unchanged: no definition moved.
    regimes: bool = True

    @field_validator("processing", mode="before")
    @classmethod
    def _processing_steps(cls, value: object) -> object:
        """``[robust_zscore, fillna]`` -> ``robust_zscore_fillna``; ``[x]`` -> ``x``."""
        if isinstance(value, (list, tuple)):
            steps = [str(step) for step in value]
            if steps == ["robust_zscore", "fillna"]:
                return "robust_zscore_fillna"
            if len(steps) == 1:
                return steps[0]
            raise ValueError(f"features.processing: the steps {steps} are not a known pipeline; use one of none, "
                             "cs_rank, cs_zscore, robust_zscore or [robust_zscore, fillna]")
        return value

    @property
    def per_timestamp_processing(self) -> str:
        """The processing applied where the features are computed: the per-timestamp kinds, else none (the
        fitted kinds travel with the model)."""
        return self.processing if self.processing in ("cs_rank", "cs_zscore") else "none"

    @model_validator(mode="after")
    def _check(self) -> FeatureParams:
        for name, windows, least in (
            ("return_horizons", self.return_horizons, 1),
            ("ma_windows", self.ma_windows, 1),
            ("volatility_windows", self.volatility_windows, 2),
        ):
            if any(w < least for w in windows):
                raise ValueError(f"features.{name}: every window must be >= {least} bars, got {windows}")
            if len(set(windows)) != len(windows):
                raise ValueError(f"features.{name}: windows must be distinct, got {windows}")
        if self.macd_fast >= self.macd_slow:
            raise ValueError(f"features.macd_fast ({self.macd_fast}) must be < macd_slow ({self.macd_slow})")
        possible = set(_plan(self, all_columns=True, multi_symbol=False, intraday=True)[0])
        unknown = [name for name in self.cross_sectional_ranks if name not in possible]
        if unknown:
            raise ValueError(
                f"features.cross_sectional_ranks: {unknown} are not features of this configuration; "
                f"choose from {sorted(possible)}"
            )
        return self


# --------------------------------------------------------------------------------------------
# Which features exist for which data
# --------------------------------------------------------------------------------------------

_NEEDS: dict[str, tuple[str, ...]] = {
    "atr": ("high", "low"),
    "stochastic": ("high", "low"),
    "volume": ("volume",),
    "spread": ("bid", "ask"),
    "order_imbalance": ("bid_size", "ask_size"),
}


_GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "atr": ("atr_ratio",),
    "stochastic": ("stochastic_k", "stochastic_d"),
    "volume": ("volume_ratio", "log_dollar_volume"),
    "spread": ("spread",),
    "order_imbalance": ("order_imbalance",),
}


def _plan(
    params: FeatureParams, *, columns: set[str] | None = None, all_columns: bool = False,
    multi_symbol: bool, intraday: bool, n_regimes: int = 0,
) -> tuple[list[str], list[str]]:
    """The feature names for data with ``columns``, in output order, and log lines for the skipped ones.

    ``n_regimes``: the regime model's number of regimes (0: no regime model, so no regime columns).
    """
    present = set(NUMERIC_COLUMNS) if all_columns else (columns or set())
    if params.set in FACTOR_SETS:
        names, skipped = FACTOR_SETS[params.set].plan(present)
    else:
        names, skipped = _basic_plan(params, present)
    if params.calendar:
        names += ["day_of_week", "month"] + (["hour"] if intraday else [])
    if multi_symbol:
        for name in params.cross_sectional_ranks:
            if name in names:
                names.append(f"{name}_cs_rank")
            else:
                skipped.append(f"features: skipping {name}_cs_rank: {name} is not computed for these bars")
    names += params.exogenous.feature_names()  # optional groups last: the default columns stay a prefix
    names += params.sentiment.feature_names()
    if params.regimes:
        if n_regimes:
            names += regime_probability_columns(n_regimes)
        else:
            skipped.append("features: skipping regime_prob_*: no regime model was given "
                           "(the features stage loads models/regimes/model.json)")
    return names, skipped


def _basic_plan(params: FeatureParams, present: set[str]) -> tuple[list[str], list[str]]:
    """The basic set's per-symbol features for bar columns ``present``, and the log lines of the skipped ones."""
    names = [f"log_return_{h}" for h in params.return_horizons]
    names += [f"sma_ratio_{w}" for w in params.ma_windows]
    names += [f"ema_ratio_{w}" for w in params.ma_windows]
    names += ["rsi", "macd", "macd_signal", "macd_hist", "bollinger_position"]
    names += [f"volatility_{w}" for w in params.volatility_windows]
    skipped: list[str] = []
    for group, needed in _NEEDS.items():
        missing = [c for c in needed if c not in present]
        if missing:
            skipped.append(
                f"features: skipping {', '.join(_GROUP_NAMES[group])}: the bars have no "
                f"{', '.join(repr(c) for c in missing)} column"
            )
        else:
            names += _GROUP_NAMES[group]
    return names, skipped


def processed_columns(names: list[str]) -> list[str]:
    """The columns ``features.processing`` transforms: the per-symbol features (not calendar, exogenous,
    regime or already cross-sectional ``*_cs_rank`` columns, which are the same for every symbol or ranks)."""
    market_wide = {"day_of_week", "month", "hour"}
    return [n for n in names if n not in market_wide and not n.startswith(("exo_", "regime_prob_"))
            and not n.endswith("_cs_rank")]


def process_rows(block: np.ndarray, method: str) -> np.ndarray:
    """``features.processing`` of each row of ``block`` (one feature at one timestamp across its symbols; NaN
    cells are absent or unknown values), NaN filled with 0 afterwards. Shared by the batch and incremental engines."""
    missing = np.isnan(block)
    if method == "cs_rank":
        out = (_pct_rank_rows(block) - 0.5) * 3.46
    elif method == "cs_zscore":
        count = (~missing).sum(axis=1, keepdims=True).astype(np.float64)
        known = np.where(missing, 0.0, block)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = known.sum(axis=1, keepdims=True) / count
            deviations = np.where(missing, 0.0, block - mean)
            std = np.sqrt((deviations * deviations).sum(axis=1, keepdims=True) / (count - 1.0))
            out = (block - mean) / std
        out[np.broadcast_to((std == 0) | ~np.isfinite(std), out.shape)] = np.nan
    else:
        raise ValueError(f"features.processing: unknown method {method!r}; choose none, cs_rank or cs_zscore")
    out[np.isnan(out)] = 0.0
    return out


LabelNormalise = Literal["none", "cs_rank", "cs_zscore"]


def normalised_label(label: pd.Series, timestamps: pd.Series | np.ndarray, method: LabelNormalise) -> pd.Series:
    """``labels.normalise``: the training label transformed among the symbols of each timestamp (``cs_rank``:
    (percentile rank - 0.5) * 3.46; ``cs_zscore``: (y - mean) / sample std), so a model learns the cross-section
    rather than the market's move. Unknown labels stay NaN (never trained on; no Fillna here), as does a timestamp
    whose labels are all equal (cs_zscore) or a lone one (cs_zscore). Only labels of the same timestamp meet."""
    if method == "none":
        return label
    values = pd.Series(label.to_numpy(dtype=np.float64), index=label.index)
    grouped = values.groupby(np.asarray(timestamps), sort=False)
    if method == "cs_rank":
        return (grouped.rank(pct=True) - 0.5) * 3.46
    if method == "cs_zscore":
        std = grouped.transform("std")
        return (values - grouped.transform("mean")) / std.where(std > 0)
    raise ValueError(f"labels.normalise: unknown method {method!r}; choose none, cs_rank or cs_zscore")


def regime_probability_columns(n_regimes: int) -> list[str]:
    """The regime feature columns: the causal probability of each regime, ``regime_prob_0`` (calmest) first."""
    return [f"regime_prob_{k}" for k in range(n_regimes)]


def feature_plan(
    params: FeatureParams, *, columns: set[str] | frozenset[str], multi_symbol: bool, intraday: bool,
    n_regimes: int = 0,
) -> list[str]:
    """The feature names :func:`compute_features` produces, in its column order, for bars with ``columns``
    (more than one symbol: ``multi_symbol``; mostly sub-daily gaps: ``intraday``; a regime model of
    ``n_regimes`` regimes, 0 for none). The one plan that the incremental engine and the feature registry
    (``alphaforge.featurestore``) are derived from."""
    return _plan(params, columns=set(columns), multi_symbol=multi_symbol, intraday=intraday, n_regimes=n_regimes)[0]


# --------------------------------------------------------------------------------------------
# Input checks and the symbols x bars layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Groups:
    """Where each symbol's contiguous run of rows starts, and how long it is."""

    starts: np.ndarray
    lengths: np.ndarray
    timestamps_ns: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.lengths.sum())


def _timestamps_ns(bars: pd.DataFrame, caller: str) -> np.ndarray:
    column = bars["timestamp"]
    if not pd.api.types.is_datetime64_any_dtype(column.dtype):
        raise DataError(f"{caller}: column 'timestamp' must be datetime64 (UTC), got dtype {column.dtype}")
    index = pd.DatetimeIndex(column)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        row = int(np.flatnonzero(index.isna())[0])
        raise DataError(f"{caller}: column 'timestamp', row {row}: missing timestamp")
    return index.as_unit("ns").asi8


def _check_bars(bars: pd.DataFrame, caller: str, *, close_only: bool = False) -> _Groups:
    """Verify the schema promises the features rely on; raise :class:`DataError` naming row and rule."""
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"{caller}: the bars lack required column(s) {missing}")
    if len(bars) == 0:
        raise DataError(f"{caller}: the bars have no rows")
    timestamps = _timestamps_ns(bars, caller)
    symbol = bars["symbol"]
    # extension dtypes (string, categorical) may hold pd.NA, which does not compare; None does
    symbol_values = symbol.to_numpy() if symbol.dtype == object else symbol.to_numpy(dtype=object, na_value=None)
    same_symbol = np.asarray(symbol_values[1:] == symbol_values[:-1], dtype=bool)
    starts = np.concatenate(([0], np.flatnonzero(~same_symbol) + 1)).astype(np.int64)
    run_names = symbol_values[starts]
    missing_name = np.flatnonzero(pd.isna(run_names))
    if missing_name.size:
        raise DataError(f"{caller}: column 'symbol', row {int(starts[missing_name[0]])}: missing symbol")
    # Sorted by symbol <=> the names of the runs of equal symbols strictly increase (a symbol
    # that comes back later, or out of order, breaks that).
    try:
        out_of_order = np.flatnonzero(~np.asarray(run_names[1:] > run_names[:-1], dtype=bool))
    except TypeError as err:
        raise DataError(f"{caller}: column 'symbol' mixes types that cannot be ordered: {err}") from err
    order_hint = "sort with bars.sort_values(['symbol', 'timestamp'], kind='stable')"
    if out_of_order.size:
        row = int(starts[out_of_order[0] + 1])
        raise DataError(
            f"{caller}: rule sorted_by_symbol_then_time: row {row} (symbol {symbol_values[row]!r}) comes after "
            f"symbol {symbol_values[row - 1]!r}; {order_hint}"
        )
    not_forward = np.flatnonzero(same_symbol & (timestamps[1:] <= timestamps[:-1]))
    if not_forward.size:
        row = int(not_forward[0]) + 1
        rule = "duplicate timestamp" if timestamps[row] == timestamps[row - 1] else "time goes backwards"
        raise DataError(
            f"{caller}: rule sorted_by_symbol_then_time: row {row} (symbol {symbol_values[row]!r}, timestamp "
            f"{pd.Timestamp(timestamps[row], tz='UTC')}) is not after row {row - 1} ({rule}); {order_hint}"
        )
    _check_numeric(bars, "close", caller, positive=True, allow_nan=False)
    for column in () if close_only else ("high", "low"):
        if column in bars.columns:
            _check_numeric(bars, column, caller, positive=True, allow_nan=False)
    if "volume" in bars.columns and not close_only:
        _check_numeric(bars, "volume", caller, positive=False, allow_nan=False)
    for column in () if close_only else ("bid", "ask", "bid_size", "ask_size"):
        if column in bars.columns:
            _check_numeric(bars, column, caller, positive=False, allow_nan=True)
    lengths = np.diff(np.concatenate((starts, [len(bars)])))
    return _Groups(starts=starts, lengths=lengths, timestamps_ns=timestamps)


def _check_numeric(bars: pd.DataFrame, column: str, caller: str, *, positive: bool, allow_nan: bool) -> None:
    try:
        values = bars[column].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise DataError(f"{caller}: column {column!r} is not numeric (dtype {bars[column].dtype}): {err}") from err
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if positive:
        bad |= values <= 0
    elif not allow_nan:
        bad |= values < 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if positive:
            rule = "must be finite and > 0"
        else:
            rule = "must not be infinite" if allow_nan else "must be finite and >= 0"
        raise DataError(f"{caller}: column {column!r}, row {row}: value {values[row]!r} {rule}")


@dataclass(frozen=True)
class _Chunk:
    """A run of consecutive symbols laid out as a (symbols, bars) panel.

    The panel is NaN past each symbol's last bar, and its width is padded to a whole
    number of ``block`` bars (see :class:`_Rolling`).
    """

    row_lo: int
    row_hi: int
    lengths: np.ndarray
    width: int

    @property
    def longest(self) -> int:
        return int(self.lengths.max())

    @property
    def rectangular(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())

    def panel(self, values: np.ndarray) -> np.ndarray:
        """The chunk's rows of a long column as a panel."""
        part = values[self.row_lo : self.row_hi]
        out = np.empty((len(self.lengths), self.width))
        if self.rectangular:
            out[:, : self.longest] = part.reshape(len(self.lengths), self.longest)
            out[:, self.longest :] = np.nan
        else:
            out.fill(np.nan)
            out[self._inside()] = part
        return out

    def write(self, destination: np.ndarray, panel: np.ndarray) -> None:
        """Copy a panel back into the chunk's rows of a long column (``destination`` is the whole column)."""
        rows = destination[self.row_lo : self.row_hi]
        if self.rectangular:
            rows.reshape(len(self.lengths), self.longest)[...] = panel[:, : self.longest]
        else:
            rows[...] = panel[self._inside()]

    def _inside(self) -> np.ndarray:
        return np.arange(self.width)[None, :] < self.lengths[:, None]


def _chunks(groups: _Groups, block: int, budget: int = _PANEL_CELL_BUDGET) -> Iterator[_Chunk]:
    """Consecutive symbols, grouped so that each panel stays within the cell budget.

    The loop only partitions the symbols (cheap integer bookkeeping); all arithmetic
    happens on whole panels. Small panels also stay in the CPU cache.
    """
    padded = (-(-groups.lengths // block) * block).tolist()
    first = 0
    widest = 0
    for index, width in enumerate(padded):
        widest_with = max(widest, width)
        if index > first and widest_with * (index - first + 1) > budget:
            yield _make_chunk(groups, first, index, widest)
            first, widest_with = index, width
        widest = widest_with
    yield _make_chunk(groups, first, len(padded), widest)


def _make_chunk(groups: _Groups, first: int, stop: int, width: int) -> _Chunk:
    row_lo = int(groups.starts[first])
    lengths = groups.lengths[first:stop]
    return _Chunk(row_lo=row_lo, row_hi=row_lo + int(lengths.sum()), lengths=lengths, width=width)


def _block_size(*windows: int) -> int:
    """Bars per block of :class:`_Rolling`: at least every window, so a window spans at most two blocks."""
    return max(_MIN_BLOCK, *windows)


# --------------------------------------------------------------------------------------------
# Panel primitives (time runs along axis 1; each row is one symbol)
# --------------------------------------------------------------------------------------------


def _lag(x: np.ndarray, lag: int) -> np.ndarray:
    """``x`` shifted ``lag`` bars later within each row (NaN where there is no earlier bar)."""
    out = np.empty_like(x)
    out[:, :lag] = np.nan
    if lag < x.shape[1]:
        out[:, lag:] = x[:, : x.shape[1] - lag]
    return out


def _lead(x: np.ndarray, lead: int) -> np.ndarray:
    """``x`` shifted ``lead`` bars earlier within each row (NaN where there is no later bar)."""
    out = np.empty_like(x)
    out[:, max(x.shape[1] - lead, 0) :] = np.nan
    if lead < x.shape[1]:
        out[:, : x.shape[1] - lead] = x[:, lead:]
    return out


def _mask_before(x: np.ndarray, first_valid: int) -> np.ndarray:
    """Set the first ``first_valid`` bars of every row to NaN (window not yet full), in place."""
    x[:, : max(first_valid, 0)] = np.nan
    return x


class _Rolling:
    """Precise O(n) rolling sums of one panel series, for any window up to the block size.

    The time axis is cut into blocks of ``block`` bars (the panel width is a multiple of
    it). Within a block the values are taken relative to the block's first value (its
    anchor) and summed cumulatively, restarting at each block: no sum runs over more than
    one block (no rounding drift with the series' length), and the values summed are
    deviations from a nearby level, so ``sum(d**2) - sum(d)**2 / w`` does not cancel
    catastrophically when the level is far from 0 (prices). A window that straddles two
    blocks adds the tail of the previous block, re-expressed around the current anchor
    (exact algebra). Every row only ever uses its own past, bar by bar.
    The first ``first_valid`` bars of ``x`` may be NaN (e.g. returns); windows that reach
    them are NaN. ``anchored=False`` sums the values themselves (for non-negative series
    such as volume, where an all-zero window must sum to exactly 0).
    """

    def __init__(
        self, x: np.ndarray, block: int, *, first_valid: int = 0, second_moment: bool = False, anchored: bool = True
    ) -> None:
        self.n_symbols, self.width = x.shape
        if self.width % block:
            raise ValueError(f"_Rolling: panel width {self.width} is not a multiple of the block {block}")
        self.block = block
        self.first_valid = first_valid
        self._source = x
        if 0 < first_valid < self.width:
            x = x.copy()
            x[:, :first_valid] = x[:, first_valid : first_valid + 1]
        blocks = x.reshape(self.n_symbols, self.width // block, block)
        self.anchor = blocks[:, :, :1].copy() if anchored else np.zeros((self.n_symbols, self.width // block, 1))
        deviations = blocks - self.anchor
        self.sum1 = np.cumsum(deviations, axis=2)
        self.sum2: np.ndarray | None = None
        if second_moment:
            np.square(deviations, out=deviations)
            self.sum2 = np.cumsum(deviations, axis=2)
        self._change_counts: np.ndarray | None = None

    def _window_sums(self, window: int, cumulative: np.ndarray, *, squares: bool) -> np.ndarray:
        """Sum over the last ``window`` bars of the block-relative values (``squares``: of their squares)."""
        if window > self.block:
            raise ValueError(f"_Rolling: window {window} is longer than the block {self.block}")
        block = self.block
        out = np.empty_like(cumulative)
        np.subtract(cumulative[:, :, window:], cumulative[:, :, :-window], out=out[:, :, window:])
        out[:, :, window - 1] = cumulative[:, :, window - 1]
        if window > 1:
            straddle = window - 1  # bars 0..window-2 of a block reach back into the previous block
            tail = cumulative[:, :-1, block - 1 : block] - cumulative[:, :-1, block - window : block - 1]
            shift = self.anchor[:, :-1] - self.anchor[:, 1:]  # previous anchor minus current anchor
            count = np.arange(straddle, 0, -1, dtype=np.float64)  # bars taken from the previous block
            if squares:
                tail_sum = self.sum1[:, :-1, block - 1 : block] - self.sum1[:, :-1, block - window : block - 1]
                tail += 2.0 * shift * tail_sum + count * np.square(shift)
            else:
                tail += count * shift
            np.add(cumulative[:, 1:, :straddle], tail, out=out[:, 1:, :straddle])
            out[:, 0, :straddle] = np.nan
        return out

    def _as_panel(self, values: np.ndarray, window: int) -> np.ndarray:
        return _mask_before(values.reshape(self.n_symbols, self.width), self.first_valid + window - 1)

    def mean(self, window: int) -> np.ndarray:
        """Rolling mean over ``window`` bars (NaN until the window is full)."""
        sums = self._window_sums(window, self.sum1, squares=False)
        sums /= window
        sums += self.anchor
        return self._as_panel(sums, window)

    def std(self, window: int, ddof: int) -> np.ndarray:
        """Rolling standard deviation (``ddof`` 0 or 1), exactly 0 on a window of equal values."""
        if self.sum2 is None:
            raise RuntimeError("_Rolling.std needs second_moment=True")
        if window - ddof <= 0:
            return np.full((self.n_symbols, self.width), np.nan)
        squared_sum = np.square(self._window_sums(window, self.sum1, squares=False))
        squared_sum /= window
        variance = self._window_sums(window, self.sum2, squares=True)
        variance -= squared_sum
        np.maximum(variance, 0.0, out=variance)
        variance /= window - ddof
        std = self._as_panel(np.sqrt(variance, out=variance), window)
        std[self.is_constant(window)] = 0.0
        return std

    def is_constant(self, window: int) -> np.ndarray:
        """Whether the last ``window`` values are all equal (exact comparison, not a tolerance)."""
        if self._change_counts is None:
            changes = np.zeros(self._source.shape, dtype=bool)
            np.not_equal(self._source[:, 1:], self._source[:, :-1], out=changes[:, 1:])
            self._change_counts = np.cumsum(changes, axis=1, dtype=np.int32)
        counts = self._change_counts
        pairs = window - 1  # a window of `window` bars holds window-1 consecutive pairs
        constant = np.zeros(counts.shape, dtype=bool)
        if pairs == 0:
            constant[:] = True
        elif pairs < counts.shape[1]:
            np.equal(counts[:, pairs:], counts[:, :-pairs], out=constant[:, pairs:])
        constant[:, : self.first_valid + window - 1] = False
        return constant


def _short_mean(x: np.ndarray, window: int, block: int, *, first_valid: int = 0) -> np.ndarray:
    """Rolling mean; a plain sum of lagged copies for short windows (cheaper than cumulative sums)."""
    if window > 8:
        return _Rolling(x, block, first_valid=first_valid).mean(window)
    total = x.copy()
    for lag in range(1, window):
        total += _lag(x, lag)
    total /= window
    return _mask_before(total, first_valid + window - 1)


def _exponential_average(first: np.ndarray, rest: np.ndarray, alpha: float) -> np.ndarray:
    """``y[0] = first``, ``y[i] = (1 - alpha) * y[i-1] + alpha * rest[i-1]`` along each row (an IIR filter)."""
    out = np.empty((first.shape[0], rest.shape[1] + 1))
    out[:, 0] = first
    if rest.shape[1]:
        zi = ((1.0 - alpha) * first)[:, None]
        out[:, 1:], _ = lfilter([alpha], [1.0, alpha - 1.0], rest, axis=1, zi=zi)
    return out


def _ema(x: np.ndarray, span: int, start: int = 0) -> np.ndarray:
    """pandas ``ewm(span=span, adjust=False, min_periods=span)`` of a row series whose values begin at ``start``."""
    out = np.full_like(x, np.nan)
    if start < x.shape[1]:
        out[:, start:] = _exponential_average(x[:, start], x[:, start + 1 :], 2.0 / (span + 1.0))
    return _mask_before(out, start + span - 1)


def _wilder(x: np.ndarray, window: int) -> np.ndarray:
    """Wilder's smoothing of a series that starts at bar 1: mean of bars 1..n at bar n, then alpha = 1/n."""
    out = np.full_like(x, np.nan)
    if window < x.shape[1]:
        seed = x[:, 1 : window + 1].mean(axis=1)
        out[:, window:] = _exponential_average(seed, x[:, window + 1 :], 1.0 / window)
    return out


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray, where_zero: float) -> np.ndarray:
    """numerator / denominator, with ``where_zero`` where the denominator is 0 (never inf from a 0/0 or x/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(numerator, denominator)
    out[denominator == 0] = where_zero
    return out


# --------------------------------------------------------------------------------------------
# The features of one panel
# --------------------------------------------------------------------------------------------


def _feature_block(params: FeatureParams) -> int:
    return _block_size(
        *params.ma_windows, params.bollinger_window, *params.volatility_windows, params.volume_window,
        params.stochastic_smooth,
    )


def _panel_features(
    panel: Callable[[str], np.ndarray], params: FeatureParams, names: set[str], block: int
) -> dict[str, np.ndarray]:
    """Every per-symbol time-series feature in ``names`` for one chunk of symbols."""
    out: dict[str, np.ndarray] = {}
    close = panel("close")
    log_close = np.log(close)
    for horizon in params.return_horizons:
        out[f"log_return_{horizon}"] = log_close - _lag(log_close, horizon)
    returns = out.get("log_return_1")
    if returns is None:
        returns = log_close - _lag(log_close, 1)

    close_rolling = _Rolling(close, block, second_moment=True)
    for window in params.ma_windows:
        out[f"sma_ratio_{window}"] = close / close_rolling.mean(window) - 1.0
    for window in params.ma_windows:
        out[f"ema_ratio_{window}"] = close / _ema(close, window) - 1.0

    change = close - _lag(close, 1)
    gain = _wilder(np.maximum(change, 0.0), params.rsi_window)
    loss = _wilder(np.maximum(-change, 0.0), params.rsi_window)
    out["rsi"] = _safe_divide(100.0 * gain, gain + loss, where_zero=50.0)

    macd_line = _ema(close, params.macd_fast) - _ema(close, params.macd_slow)
    signal = _ema(macd_line, params.macd_signal, start=params.macd_slow - 1)
    out["macd"] = macd_line / close
    out["macd_signal"] = signal / close
    out["macd_hist"] = (macd_line - signal) / close

    middle = close_rolling.mean(params.bollinger_window)
    band = params.bollinger_k * close_rolling.std(params.bollinger_window, ddof=0)
    out["bollinger_position"] = _safe_divide(close - middle, band, where_zero=0.0)

    return_rolling = _Rolling(returns, block, first_valid=1, second_moment=True)
    for window in params.volatility_windows:
        out[f"volatility_{window}"] = return_rolling.std(window, ddof=1)

    if "atr_ratio" in names:
        high, low = panel("high"), panel("low")
        previous_close = _lag(close, 1)
        true_range = np.maximum(high - low, np.maximum(np.abs(high - previous_close), np.abs(low - previous_close)))
        out["atr_ratio"] = _wilder(true_range, params.atr_window) / close
    if "stochastic_k" in names:
        high, low = panel("high"), panel("low")
        window = params.stochastic_window
        origin = (window - 1) // 2  # makes the centred scipy window the trailing one
        highest = maximum_filter1d(high, window, axis=1, origin=origin)
        lowest = minimum_filter1d(low, window, axis=1, origin=origin)
        stochastic_k = _mask_before(_safe_divide(close - lowest, highest - lowest, where_zero=0.5), window - 1)
        out["stochastic_k"] = stochastic_k
        out["stochastic_d"] = _short_mean(stochastic_k, params.stochastic_smooth, block, first_valid=window - 1)
    if "volume_ratio" in names:
        volume = panel("volume")
        window = params.volume_window
        # Not anchored: sums of non-negative values, so a window without volume sums to exactly 0.
        mean_volume = _Rolling(volume, block, anchored=False).mean(window)
        out["volume_ratio"] = _safe_divide(volume, mean_volume, where_zero=np.nan)
        dollar = _Rolling(close * volume, block, anchored=False).mean(window)
        dollar[dollar == 0] = np.nan
        out["log_dollar_volume"] = np.log(dollar)
    return out


# --------------------------------------------------------------------------------------------
# Features computed on the long rows directly
# --------------------------------------------------------------------------------------------


def _is_intraday(groups: _Groups) -> bool:
    """Whether most gaps between a symbol's consecutive bars are under one day (the median gap is)."""
    gaps = np.diff(groups.timestamps_ns)
    gaps[groups.starts[1:] - 1] = 0  # a gap across two symbols is no gap
    n_gaps = np.count_nonzero(gaps > 0)
    return n_gaps > 0 and 2 * np.count_nonzero((gaps > 0) & (gaps < _NANOS_PER_DAY)) > n_gaps


def _calendar(timestamps: _TimestampGrid, intraday: bool) -> dict[str, np.ndarray]:
    """Day of week (Monday 0), month (1..12) and, for intraday data, hour, all in UTC."""
    per_timestamp = calendar_values(timestamps.uniques_ns, intraday)
    return {name: values[timestamps.codes] for name, values in per_timestamp.items()}


def calendar_values(unique_ns: np.ndarray, intraday: bool) -> dict[str, np.ndarray]:
    """The calendar features of UTC timestamps given in nanoseconds (shared with the incremental engine)."""
    days = unique_ns // _NANOS_PER_DAY
    months = unique_ns.view("datetime64[ns]").astype("datetime64[M]").astype(np.int64)
    per_timestamp = {
        "day_of_week": ((days + 3) % 7).astype(np.float64),  # 1970-01-01 was a Thursday
        "month": (months % 12 + 1).astype(np.float64),
    }
    if intraday:
        per_timestamp["hour"] = ((unique_ns // _NANOS_PER_HOUR) % 24).astype(np.float64)
    return per_timestamp


@dataclass(frozen=True)
class _TimestampGrid:
    """Rows grouped by timestamp: each row's timestamp number and its cell in a (timestamps, slots) grid."""

    uniques_ns: np.ndarray
    codes: np.ndarray
    cells: np.ndarray
    width: int

    @classmethod
    def build(cls, groups: _Groups) -> _TimestampGrid:
        """A symbol has at most one row per timestamp, so its number is a free slot; when most
        timestamps lack most symbols, slots are packed instead (rank within the timestamp)."""
        codes, uniques = pd.factorize(groups.timestamps_ns)
        n_symbols, n_rows = len(groups.starts), len(codes)
        if len(uniques) * n_symbols <= 2 * n_rows + 4096:
            slots = np.repeat(np.arange(n_symbols, dtype=np.int64), groups.lengths)
            width = n_symbols
        else:
            order = np.argsort(codes, kind="stable")
            counts = np.bincount(codes, minlength=len(uniques))
            starts = np.cumsum(counts) - counts
            slots = np.empty(n_rows, dtype=np.int64)
            slots[order] = np.arange(n_rows) - starts[codes[order]]
            width = int(counts.max())
        cells = codes.astype(np.int64) * width + slots
        return cls(uniques_ns=np.asarray(uniques), codes=codes, cells=cells, width=width)


def _cross_sectional_pct_rank(values: np.ndarray, timestamps: _TimestampGrid) -> np.ndarray:
    """pandas ``groupby(timestamp).rank(pct=True)``: average rank of ties / number of non-NaN values.

    The rows are laid out as a (timestamps, slots) grid and ranked a block of timestamps at
    a time (small blocks stay in the CPU cache); each timestamp only ever sees its own rows.
    """
    return _cross_sectional_apply(values, timestamps, _pct_rank_rows)


def _cross_sectional_apply(values: np.ndarray, timestamps: _TimestampGrid,
                           transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform`` (rows of a (timestamps, slots) grid -> same shape) applied per timestamp to a long column."""
    n_times, width, cells = len(timestamps.uniques_ns), timestamps.width, timestamps.cells
    grid = np.full(n_times * width, np.nan)
    grid[cells] = values
    grid = grid.reshape(n_times, width)
    rows_per_block = max(1, _PANEL_CELL_BUDGET // width)
    for start in range(0, n_times, rows_per_block):
        block = grid[start : start + rows_per_block]
        block[...] = transform(block)
    return grid.reshape(-1)[cells]


def _pct_rank_rows(grid: np.ndarray) -> np.ndarray:
    """Percentile rank of each value within its row (NaN stays NaN; ties get their average rank).

    Sorting plain integer keys is several times faster than ``argsort``: each value becomes
    an order-preserving integer whose low bits are replaced by its column. Rows where two
    keys collide after dropping those bits (exact ties, or values a few ulps apart that
    might come out of order) are ranked again exactly, with ``argsort``; in the other rows
    the sorted position is the rank.
    """
    n_rows, width = grid.shape
    missing = np.isnan(grid)
    count = (width - missing.sum(axis=1))[:, None]
    slot_bits = max(1, (width - 1).bit_length())
    keys = (grid + 0.0).view(np.int64)  # + 0.0 turns -0.0 into 0.0, which must tie with it
    keys ^= (keys >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF)  # IEEE bits -> monotone int64
    keys[missing] = np.iinfo(np.int64).max  # NaN last
    keys >>= slot_bits
    keys <<= slot_bits
    keys |= np.arange(width, dtype=np.int64)
    keys.sort(axis=1)
    position = np.arange(width)
    collide = (keys[:, 1:] >> slot_bits) == (keys[:, :-1] >> slot_bits)
    collide &= position[None, 1:] < count
    keys &= np.int64((1 << slot_bits) - 1)
    order = keys  # the column at each sorted position
    pct = np.empty(grid.shape)
    pct[:] = position + 1.0
    special = np.flatnonzero(collide.any(axis=1))
    if special.size:
        order[special] = np.argsort(grid[special], axis=1, kind="stable")
        run = np.take_along_axis(grid[special], order[special], axis=1)
        run_start = np.ones(run.shape, dtype=bool)
        run_start[:, 1:] = run[:, 1:] != run[:, :-1]
        run_end = np.ones(run.shape, dtype=bool)
        run_end[:, :-1] = run_start[:, 1:]
        first = np.maximum.accumulate(np.where(run_start, position, 0), axis=1)
        last = np.minimum.accumulate(np.where(run_end, position, width - 1)[:, ::-1], axis=1)[:, ::-1]
        pct[special] = (first + last) / 2.0 + 1.0  # the average rank of each run of equal values
    pct /= np.maximum(count, 1)
    pct[position[None, :] >= count] = np.nan  # the NaN values, sorted last
    ranked = np.empty(grid.size)
    ranked[order + (np.arange(n_rows, dtype=np.int64) * width)[:, None]] = pct
    return ranked.reshape(grid.shape)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def compute_features(bars: pd.DataFrame, params: FeatureParams, regime_model: RegimeModel | None = None
                     ) -> pd.DataFrame:
    """All features of ``bars``, one row per bar (same index and order), float64.

    ``bars`` must be in the canonical long schema sorted by (symbol, timestamp), with
    finite positive close (and high/low when present) and finite non-negative volume;
    otherwise :class:`DataError` names the row and the rule. Features whose input
    columns are absent are skipped with one INFO log line each; ``frame.attrs["skipped"]`` keeps those lines.

    ``params.set`` picks the per-symbol family (``basic`` or ``alpha158``, :mod:`alphaforge.alpha158`, which also
    needs a finite positive open where its K-bar and OPEN0 factors read it); ``params.processing`` then transforms
    the per-symbol features among the symbols of each timestamp (:func:`process_rows`; needs several symbols).

    ``regime_model`` (fitted, :class:`alphaforge.regimes.RegimeModel`): with ``params.regimes`` on, its
    causal regime probabilities (:func:`alphaforge.regimes.apply_regime_features`, filtered from the first
    bar of ``bars``) become the last columns ``regime_prob_0..k-1``; without a model they are skipped.
    """
    groups = _check_bars(bars, "compute_features")
    columns = set(bars.columns)
    multi_symbol = len(groups.starts) > 1
    intraday = params.calendar and _is_intraday(groups)
    n_regimes = regime_model.params.n_regimes if (params.regimes and regime_model is not None) else 0
    names, skipped = _plan(params, columns=columns, multi_symbol=multi_symbol, intraday=intraday,
                           n_regimes=n_regimes)
    for line in skipped:
        log.info(line)
    values = np.empty((len(names), groups.n_rows))
    slot = {name: i for i, name in enumerate(names)}
    name_set = set(names)

    processing = params.per_timestamp_processing
    if processing != "none" and not multi_symbol:
        raise DataError(f"compute_features: features.processing {processing!r} transforms each feature among "
                        "the symbols of a timestamp, and the bars have one symbol; set features.processing: none")
    family = FACTOR_SETS.get(params.set)
    known_factors = set(family.all_names()) if family is not None else set()
    factors = [name for name in names if name in known_factors]
    needed = {"close", *(c for n in factors for c in family.inputs_of(n))} if family is not None else {"close"}
    if "open" in needed:  # the basic set never reads the open; Alpha158 divides by it
        _check_numeric(bars, "open", "compute_features", positive=True, allow_nan=False)
    long_columns = {
        c: bars[c].to_numpy(dtype=np.float64, na_value=np.nan)
        for c in ("open", "close", "high", "low", "volume")
        if c in columns
    }
    for chunk in _chunks(groups, 1, budget=_ALPHA158_CELL_BUDGET) if factors else ():
        inputs = {c: chunk.panel(long_columns[c]) for c in needed}
        for name, result in factor_values(params.set, inputs, factors, last_only=False).items():
            chunk.write(values[slot[name]], result)
    block = _feature_block(params)
    for chunk in _chunks(groups, block) if params.set == "basic" else ():
        panels: dict[str, np.ndarray] = {}

        def panel(column: str, chunk: _Chunk = chunk, panels: dict[str, np.ndarray] = panels) -> np.ndarray:
            if column not in panels:
                panels[column] = chunk.panel(long_columns[column])
            return panels[column]

        for name, result in _panel_features(panel, params, name_set, block).items():
            if name in slot:
                chunk.write(values[slot[name]], result)

    if "spread" in slot:
        bid, ask = (bars[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("bid", "ask"))
        mid = (ask + bid) / 2.0
        values[slot["spread"]] = _safe_divide(ask - bid, mid, where_zero=np.nan)
    if "order_imbalance" in slot:
        bid_size, ask_size = (bars[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("bid_size", "ask_size"))
        values[slot["order_imbalance"]] = _safe_divide(bid_size - ask_size, bid_size + ask_size, where_zero=0.0)
    if params.exogenous.enabled:
        joined = load_exogenous(params.exogenous).asof(groups.timestamps_ns)
        for j, name in enumerate(params.exogenous.feature_names()):
            values[slot[name]] = joined[:, j]
    if params.sentiment.enabled:
        headlines = load_headlines(params.sentiment)
        symbols = bars["symbol"].to_numpy(dtype=object)
        polarity, count = values[slot["sentiment_lm_polarity"]], values[slot["sentiment_headline_count"]]
        for start, length in zip(groups.starts.tolist(), groups.lengths.tolist(), strict=True):  # per symbol: optional
            rows = slice(start, start + length)
            polarity[rows], count[rows] = headlines.per_bar(str(symbols[start]), groups.timestamps_ns[rows])
    ranked = [name for name in names if name.endswith("_cs_rank")]
    if params.calendar or ranked:
        timestamps = _TimestampGrid.build(groups)
        if params.calendar:
            for name, result in _calendar(timestamps, intraday).items():
                values[slot[name]] = result
        for name in ranked:
            source = values[slot[name.removesuffix("_cs_rank")]]
            values[slot[name]] = _cross_sectional_pct_rank(source, timestamps)
    if n_regimes:
        from alphaforge.regimes import apply_regime_features

        regimes = apply_regime_features(bars, regime_model)
        for name in regime_probability_columns(n_regimes):
            values[slot[name]] = regimes[name].to_numpy(dtype=np.float64)
    if processing != "none":
        timestamps = _TimestampGrid.build(groups)
        for name in processed_columns(names):
            values[slot[name]] = _cross_sectional_apply(values[slot[name]], timestamps,
                                                        lambda block: process_rows(block, processing))

    frame = _with_keys(bars, pd.DataFrame(values.T, columns=names, index=bars.index, copy=False))
    frame.attrs["skipped"] = list(skipped)
    return frame


def _with_keys(bars: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the bars' timestamp and symbol columns in front (same dtypes as in ``bars``)."""
    symbol = bars["symbol"]
    frame.insert(0, "symbol", symbol.to_numpy() if symbol.dtype == object else symbol.array)
    frame.insert(0, "timestamp", bars["timestamp"].array)
    return frame


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of ``frame``: everything but the keys, raw bar columns and labels, in frame order."""
    excluded = set(KEY_COLUMNS) | set(NUMERIC_COLUMNS) | set(LABEL_COLUMNS)
    return [c for c in frame.columns if c not in excluded]


def compute_labels(bars: pd.DataFrame, horizon: int, execution: str = "auto") -> pd.DataFrame:
    """What a position decided at each bar earns afterwards, per symbol: the targets (never features).

    A signal from bar t trades at bar t+1's execution price P (its open for ``execution="next_open"``, its close
    for ``next_close``; ``auto`` picks next_open when the bars have an open column), so the label is the return
    the strategy could earn (see :mod:`alphaforge.backtest.market`):

    * ``forward_return`` = log(P[t+1+h] / P[t+1]);
    * ``forward_direction`` = 1.0 if forward_return > 0 else 0.0 (NaN where it is NaN);
    * ``forward_volatility`` = sample std (ddof=1) of the h one-bar log close returns t+1..t+h
      (NaN for h = 1: one return has no sample std);
    * ``forward_return_1`` = log(P[t+2] / P[t+1]), the one bar a position decided at t is held.

    NaN where the symbol's future is not in ``bars`` (its last bars); never reaches into
    the next symbol. Same row order and index as ``bars``. ``frame.attrs["execution"]`` names the convention.
    """
    from alphaforge.backtest.market import execution_prices, resolve_execution

    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"compute_labels: horizon must be an integer >= 1 bar, got {horizon!r}")
    horizon = int(horizon)
    resolved = resolve_execution(list(bars.columns), execution)
    groups = _check_bars(bars, "compute_labels", close_only=True)
    close = bars["close"].to_numpy(dtype=np.float64)
    price = execution_prices(bars, resolved)
    values = np.empty((len(LABEL_COLUMNS), groups.n_rows))
    block = _block_size(horizon + 1)
    for chunk in _chunks(groups, block):
        log_close = np.log(chunk.panel(close))
        with np.errstate(invalid="ignore", divide="ignore"):
            log_entry = _lead(np.log(chunk.panel(price)), 1)
        forward_return = _lead(log_entry, horizon) - log_entry
        forward_return_1 = _lead(log_entry, 1) - log_entry
        returns = log_close - _lag(log_close, 1)
        past_volatility = _Rolling(returns, block, first_valid=1, second_moment=True).std(horizon, ddof=1)
        forward_volatility = _lead(past_volatility, horizon)
        direction = np.where(np.isnan(forward_return), np.nan, (forward_return > 0).astype(np.float64))
        for i, result in enumerate((forward_return, direction, forward_volatility, forward_return_1)):
            chunk.write(values[i], result)
    labels = _with_keys(bars, pd.DataFrame(values.T, columns=list(LABEL_COLUMNS), index=bars.index, copy=False))
    labels.attrs["execution"] = resolved
    return labels
