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

**Layout.** This package's ``__init__`` holds the parameters, the plan and :func:`compute_features`; the pieces
live beside it (every name stays importable from ``alphaforge.features``): ``kernels`` (input checks, the panel
layout, rolling-window primitives), ``technical`` (the basic indicators and calendar), ``processing`` (per-timestamp
cross-sectional work), ``labels`` (targets), ``alpha158`` and ``alpha360`` (the factor families; also importable
as ``alphaforge.alpha158`` / ``alphaforge.alpha360``) and ``alpha158_kernels`` (Alpha158's numba kernels, imported
on first use only). Exogenous and sentiment inputs are in
:mod:`alphaforge.featurestore`.

**Feature sets and processing.** ``features.set: alpha158`` replaces the per-symbol indicators above with
Qlib's Alpha158 factors (:mod:`alphaforge.alpha158`: one compiled numba routine per symbol, the same for the batch
library and the incremental engine), ``features.set: alpha360`` with Qlib's raw normalised 60-bar history
(:mod:`alphaforge.alpha360`); the calendar, rank, exogenous, sentiment and regime columns follow any set.
``features.processing`` (``cs_rank``/``cs_zscore``, :func:`process_rows`) then transforms each per-symbol feature
among the symbols of its timestamp and fills NaN with 0: no fitted state, one timestamp at a time, so it stays
causal and the same in training and serving. ``robust_zscore`` (and ``[robust_zscore, fillna]``) is fitted on
training rows, so the model carries it (:mod:`alphaforge.models.normalise`) and the features stay raw here.
``labels.normalise`` (:func:`normalised_label`) is the training label's analogue.

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
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alphaforge.features import alpha158, alpha360
from alphaforge.features.kernels import (  # noqa: F401 (re-exported: the old single-module names)
    _MIN_BLOCK,
    _NANOS_PER_DAY,
    _PANEL_CELL_BUDGET,
    _block_size,
    _check_bars,
    _check_numeric,
    _Chunk,
    _chunks,
    _ema,
    _exponential_average,
    _Groups,
    _lag,
    _lead,
    _make_chunk,
    _mask_before,
    _Rolling,
    _safe_divide,
    _short_mean,
    _timestamps_ns,
    _wilder,
    _with_keys,
)
from alphaforge.features.labels import LABEL_COLUMNS, LabelNormalise, compute_labels, normalised_label  # noqa: F401
from alphaforge.features.processing import (  # noqa: F401
    _cross_sectional_apply,
    _cross_sectional_pct_rank,
    _pct_rank_rows,
    _TimestampGrid,
    process_rows,
    processed_columns,
)
from alphaforge.features.technical import (  # noqa: F401
    _GROUP_NAMES,
    _NANOS_PER_HOUR,
    _NEEDS,
    _basic_plan,
    _calendar,
    _feature_block,
    _is_intraday,
    _panel_features,
    calendar_values,
)
from alphaforge.featurestore.exogenous import ExogenousParams, load_exogenous
from alphaforge.featurestore.sentiment import SentimentParams, load_headlines
from alphaforge.schema import KEY_COLUMNS, NUMERIC_COLUMNS, DataError

if TYPE_CHECKING:
    from alphaforge.regimes import RegimeModel

log = logging.getLogger(__name__)

FEATURE_VERSION: str = "1"
#: The factor families of ``features.set`` beyond the basic indicators: module with plan, all_names, inputs_of,
#: window_of and describe.
FACTOR_SETS = {"alpha158": alpha158, "alpha360": alpha360}


# Alpha360 works on (symbols, bars) panels of its 60 lags: small panels keep them in cache.
_ALPHA360_CELL_BUDGET: int = 1 << 15


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
    if factors and params.set == "alpha158":  # one compiled pass over every symbol's bars, into the rows of values
        alpha158.compute_batch(long_columns, groups.starts, groups.lengths,
                               alpha158.layout(factors, [slot[n] for n in factors]), values)
    for chunk in _chunks(groups, 1, budget=_ALPHA360_CELL_BUDGET) if factors and params.set == "alpha360" else ():
        inputs = {c: chunk.panel(long_columns[c]) for c in needed}
        for name, result in alpha360.alpha360_values(inputs, factors, last_only=False).items():
            chunk.write(values[slot[name]], result)
    block = _feature_block(params)
    for chunk in _chunks(groups, block, budget=_PANEL_CELL_BUDGET) if params.set == "basic" else ():
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


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of ``frame``: everything but the keys, raw bar columns and labels, in frame order."""
    excluded = set(KEY_COLUMNS) | set(NUMERIC_COLUMNS) | set(LABEL_COLUMNS)
    return [c for c in frame.columns if c not in excluded]
