"""Incremental features: per-symbol state updated bar by bar, vectorised across symbols.

One :meth:`IncrementalEngine.update` takes the bars of many symbols at one timestamp and
returns their feature vectors in one set of NumPy operations (no Python loop over symbols).
The values are those of the batch library (:func:`alphaforge.features.compute_features`) on
the same history, to 1e-9 (the tests hold them to it on the bundled real datasets), because
every definition is evaluated the same way:

* windows (SMA, Bollinger, volatility, stochastic, volume) are taken over per-symbol
  shift registers of the last ``w`` inputs, NaN before a symbol's first bar, so a window that
  is not yet full gives NaN exactly as in batch; standard deviations are two-pass and exactly
  0 on a window of equal values (batch: the same rule);
* exponential and Wilder averages run the same recurrence (``y = a * x + (1 - a) * y_prev``)
  from the same start (first close; mean of the first ``n`` changes);
* calendar values come from :func:`alphaforge.features.calendar_values` and cross-sectional
  ranks from the batch ranking routine, among the symbols of the update (one timestamp), so
  an update must carry every symbol's bar of its timestamp;
* regime probabilities (``regime_prob_*``, with a fitted regime model): the market return of the
  update (mean of its symbols' one-bar log returns) goes through one step of
  :class:`alphaforge.regimes.RegimeFilter`, the batch filter's own step, once per timestamp;
* Alpha158 (``features.set: alpha158``): the batch library's compiled routine itself
  (:func:`alphaforge.alpha158.compute_latest`), on each symbol's last ``alpha158.HISTORY`` bars
  (shift registers as above), for the last bar; the engine loads or compiles it when it is built.

The state (:meth:`IncrementalEngine.state_bytes`) is the last window of each symbol's bars
plus the running averages, which no finite window of bars can recover exactly (an EMA
remembers every bar); :meth:`IncrementalEngine.from_state_bytes` restores it bit for bit,
and :meth:`IncrementalEngine.replay` rebuilds it from stored bars.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alphaforge import alpha158, alpha360
from alphaforge.features import (
    FACTOR_SETS,
    FEATURE_VERSION,
    FeatureParams,
    _pct_rank_rows,
    calendar_values,
    feature_plan,
    process_rows,
    processed_columns,
    regime_probability_columns,
)
from alphaforge.featurestore.definitions import ALL_BAR_COLUMNS, feature_definitions
from alphaforge.featurestore.exogenous import load_exogenous
from alphaforge.featurestore.sentiment import SentimentState, load_headlines
from alphaforge.regimes import RegimeFilter, RegimeModel
from alphaforge.schema import DataError

_FACTOR_COLUMNS = ("open", "high", "low", "close", "volume")
_STATE_ARRAYS = ("count", "last_ns", "close_hist", "return_hist", "high_hist", "low_hist", "k_hist", "volume_hist",
                 "dollar_hist", "ema", "signal", "gain", "loss", "atr", *(f"factor_{c}" for c in _FACTOR_COLUMNS),
                 "last_session", "last_closure", "step_hist")
# What a restart after a suspension keeps: the clock and the record of the symbol's own bar spacing.
_KEPT_ON_RESTART = frozenset({"last_ns", "last_session", "last_closure", "step_hist"})
_STEP_MEMORY = 63  # bars of a symbol's spacing remembered for its usual step (the median)


@dataclass(frozen=True)
class SuspensionRule:
    """When a symbol's series restarts, as validate splits it (:func:`alphaforge.validate.assign_segments`): more
    than ``max_gap_bars`` of its own bars missed on the panel's calendar, or a market-wide closure longer than
    ``max_closure_days`` since its last bar. Online, a symbol's usual spacing is the median of its past steps."""

    max_gap_bars: float
    max_closure_days: float


def _push(register: np.ndarray, slots: np.ndarray | None, n_known: int, values: np.ndarray) -> np.ndarray:
    """Shift the slots' registers one bar back in time and put ``values`` last; the updated (bars, symbols) rows.

    Registers are time-major (bars x slots), so a window is the last ``w`` rows and every reduction
    runs along contiguous rows of symbols. ``slots`` None means every known symbol, in slot order:
    updated in place.
    """
    rows = register[:, :n_known] if slots is None else register[:, slots]
    rows[:-1] = rows[1:]
    rows[-1] = values
    if slots is not None:
        register[:, slots] = rows
    return rows


def _two_pass_std(window: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each column of a (bars, symbols) window; the std is exactly 0 where
    every value is equal, as in the batch library (NaN columns stay NaN)."""
    mean = window.sum(axis=0) / window.shape[0]
    deviations = window - mean
    np.square(deviations, out=deviations)
    std = np.sqrt(deviations.sum(axis=0) / (window.shape[0] - ddof))
    # Equal values give a std of a few ulps of the mean at most; only those columns are checked exactly.
    suspect = np.flatnonzero(std <= 1e-12 * np.abs(mean))
    if suspect.size:
        part = window[:, suspect]
        std[suspect[(part == part[-1]).all(axis=0)]] = 0.0
    return mean, std


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray, where_zero: float) -> np.ndarray:
    """numerator / denominator, ``where_zero`` where the denominator is 0 (call under ``np.errstate``)."""
    out = numerator / denominator
    zero = denominator == 0
    if zero.any():
        out[zero] = where_zero
    return out


def _pct_ranks(block: np.ndarray) -> np.ndarray:
    """Percentile rank of each value within its row, as the batch library ranks (ties averaged, NaN stays NaN).

    Rows without NaN or ties (the usual case) are ranked by one argsort; any other row goes through
    the batch routine itself.
    """
    order = np.argsort(block, axis=1)
    rows = np.arange(block.shape[0])[:, None]
    ordered = block[rows, order]
    if np.isnan(ordered[:, -1]).any() or (ordered[:, 1:] == ordered[:, :-1]).any():
        return _pct_rank_rows(block)
    width = block.shape[1]
    pct = np.arange(1.0, width + 1.0)
    pct /= width
    ranks = np.empty(block.shape)
    ranks[rows, order] = pct
    return ranks


class IncrementalEngine:
    """The batch feature set, computed one timestamp at a time.

    ``names`` is the feature plan to produce (see :func:`plan_for`), in output order; it fixes
    what the batch library infers from a whole dataset (which columns exist, one symbol or
    several, daily or intraday).
    """

    def __init__(self, params: FeatureParams, names: Sequence[str], capacity: int = 64,
                 regime_model: RegimeModel | None = None, suspensions: SuspensionRule | None = None) -> None:
        self.params = params
        self.suspensions = suspensions
        self.session = -1  # panel sessions seen (one per update), and closures longer than the rule's
        self.closures = 0
        self.panel_last_ns: int | None = None
        self.restarts = 0
        self.names = list(names)
        self.regime_model = regime_model if params.regimes else None
        n_regimes = self.regime_model.params.n_regimes if self.regime_model is not None else 0
        possible = set(feature_plan(params, columns=ALL_BAR_COLUMNS, multi_symbol=True, intraday=True,
                                    n_regimes=n_regimes))
        unknown = [n for n in self.names if n not in possible]
        if unknown:
            hint = (" (regime_prob_* need a fitted regime model: regime_model=, and features.regimes on)"
                    if any(n.startswith("regime_prob_") for n in unknown) else "")
            raise ValueError(f"IncrementalEngine: {unknown} are not features of this configuration{hint}")
        self.feature_version = FEATURE_VERSION
        self._column = {name: i for i, name in enumerate(self.names)}
        self.regime_rows = np.asarray([self._column[n] for n in regime_probability_columns(n_regimes)
                                       if n in self._column], dtype=np.int64)
        self._regimes = RegimeFilter(self.regime_model) if self.regime_rows.size else None
        definitions = {d.name: d for d in feature_definitions(params, regime_model=self.regime_model)}
        definitions.update({d.name: d for d in feature_definitions(params, intraday=True)})
        inputs = {c for n in self.names for c in definitions[n].inputs} - {"timestamp", "headlines"}
        self.input_columns = tuple(sorted(inputs | {"close"}))
        self.intraday = "hour" in self._column
        self.calendar = [n for n in ("day_of_week", "month", "hour") if n in self._column]
        self.ranked = [n for n in self.names if n.endswith("_cs_rank")]
        self._exogenous = load_exogenous(params.exogenous) if params.exogenous.enabled else None
        self._calendar_cache: tuple[int | None, dict[str, np.ndarray]] = (None, {})
        self._sentiment = SentimentState(load_headlines(params.sentiment)) if params.sentiment.enabled else None
        self._needs_high_low = "atr_ratio" in self._column or "stochastic_k" in self._column
        self._needs_volume = "volume_ratio" in self._column
        family = FACTOR_SETS.get(params.set)
        known_factors = set(family.all_names()) if family is not None else set()
        self._factors = [n for n in self.names if n in known_factors]
        self._factor_rows = np.asarray([self._column[n] for n in self._factors], dtype=np.int64)
        self._factor_inputs = sorted({"close", *(c for n in self._factors for c in family.inputs_of(n))}
                                     if family is not None else {"close"})
        # Alpha158's compiled kernel writes straight into the output rows; loaded (or compiled) here, so that the
        # first update does not pay it
        self._factor_layout = (alpha158.layout(self._factors, self._factor_rows.tolist())
                               if self._factors and params.set == "alpha158" else None)
        if self._factor_layout is not None:
            alpha158.warm_up()
        self._member_cache = np.arange(0, dtype=np.int64)  # 0 .. n_known - 1 (see _all_slots)
        self._processed_rows = (np.asarray([self._column[n] for n in processed_columns(self.names)], dtype=np.int64)
                                if params.per_timestamp_processing != "none" else np.empty(0, dtype=np.int64))
        p = params
        self._close_length = max(max(p.return_horizons) + 1, *p.ma_windows, p.bollinger_window, 2)
        self._return_length = max(p.volatility_windows)
        self._spans = sorted({*p.ma_windows, p.macd_fast, p.macd_slow})
        spans = np.asarray(self._spans, dtype=np.float64)[:, None]
        self._alpha = 2.0 / (spans + 1.0)
        self._decay = -(self._alpha - 1.0)  # what scipy's lfilter multiplies the previous average by
        self._span_starts = spans - 1.0
        self._lag_rows = -1 - np.asarray(p.return_horizons)
        self._ma_by_length = sorted(enumerate(p.ma_windows), key=lambda item: item[1])
        self._ma_windows = np.asarray(p.ma_windows, dtype=np.float64)[:, None]
        self._ma_span_rows = np.asarray([self._spans.index(w) for w in p.ma_windows])
        self._blocks = {
            group: self._block_rows([f"{group}_{w}" for w in windows])
            for group, windows in (("log_return", p.return_horizons), ("sma_ratio", p.ma_windows),
                                   ("ema_ratio", p.ma_windows))
        }
        self.symbols: list[str] = []
        self._slot: dict[str, int] = {}
        self._last_symbols: list[str] = []
        self._last_slots: np.ndarray | None = None
        self._allocate(capacity)

    def _all_slots(self, n_known: int) -> np.ndarray:
        """0 .. n_known - 1: every known symbol, in slot order."""
        if len(self._member_cache) != n_known:
            self._member_cache = np.arange(n_known, dtype=np.int64)
        return self._member_cache

    def _block_rows(self, names: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(rows of a block to keep, or None for all; their output rows) for a family of feature names."""
        kept = [i for i, name in enumerate(names) if name in self._column]
        out_rows = np.asarray([self._column[names[i]] for i in kept], dtype=np.int64)
        return (None if len(kept) == len(names) else np.asarray(kept, dtype=np.int64)), out_rows

    # ---------------------------------------------------------------------------------------- state

    def _allocate(self, capacity: int) -> None:
        p = self.params
        nan = np.nan
        self.count = np.zeros(capacity, dtype=np.int64)
        self.last_ns = np.full(capacity, np.iinfo(np.int64).min, dtype=np.int64)
        self.close_hist = np.full((self._close_length, capacity), nan)
        self.return_hist = np.full((self._return_length, capacity), nan)
        width = p.stochastic_window if self._needs_high_low else 1
        self.high_hist = np.full((width, capacity), nan)
        self.low_hist = np.full((width, capacity), nan)
        self.k_hist = np.full((p.stochastic_smooth if self._needs_high_low else 1, capacity), nan)
        width = p.volume_window if self._needs_volume else 1
        self.volume_hist = np.full((width, capacity), nan)
        self.dollar_hist = np.full((width, capacity), nan)
        self.ema = np.full((len(self._spans), capacity), nan)
        self.signal = np.full(capacity, nan)
        self.gain = np.zeros(capacity)
        self.loss = np.zeros(capacity)
        self.atr = np.zeros(capacity)
        # Alpha158: the last alpha158.HISTORY bars of each column the factors read (one bar when unused).
        width = alpha158.HISTORY if self._factors else 1
        for c in _FACTOR_COLUMNS:
            setattr(self, f"factor_{c}", np.full((width, capacity), nan))
        self.last_session = np.full(capacity, -1, dtype=np.int64)
        self.last_closure = np.zeros(capacity, dtype=np.int64)
        self.step_hist = np.full((_STEP_MEMORY if self.suspensions is not None else 1, capacity), nan)

    def _restart(self, slots: np.ndarray) -> None:
        """Start the given slots' series afresh (a suspension): every state but the clock, as for a new symbol."""
        keep = {name: getattr(self, name) for name in _STATE_ARRAYS}
        self._allocate(1)
        fresh = {name: getattr(self, name) for name in _STATE_ARRAYS}
        for name, values in keep.items():
            if name not in _KEPT_ON_RESTART:
                values[..., slots] = fresh[name][..., :1]
            setattr(self, name, values)
        self.restarts += len(slots)

    def _suspended(self, timestamp_ns: int, index: slice | np.ndarray) -> None:
        """Restart the symbols of this update whose series validate would split here (:class:`SuspensionRule`)."""
        rule = self.suspensions
        assert rule is not None
        self.session += 1
        if self.panel_last_ns is not None and (timestamp_ns - self.panel_last_ns) / 86_400e9 > rule.max_closure_days:
            self.closures += 1
        self.panel_last_ns = timestamp_ns
        slots = np.arange(len(self.symbols))[index]
        last = self.last_session[slots]
        seen = last >= 0
        step = np.where(seen, self.session - last, np.nan)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a symbol's first steps: no history yet
            usual = np.nanmedian(np.vstack([self.step_hist[:, slots], step[None, :]]), axis=0)
        usual = np.where(np.isfinite(usual), np.maximum(usual, 1.0), 1.0)
        restart = seen & ((step / usual - 1.0 > rule.max_gap_bars) | (self.closures > self.last_closure[slots]))
        if seen.any():
            self.step_hist[:, slots[seen]] = np.vstack([self.step_hist[1:, slots[seen]], step[None, seen]])
        if restart.any():
            self._restart(slots[restart])
        self.last_session[slots] = self.session
        self.last_closure[slots] = self.closures

    def _grow(self, needed: int) -> None:
        old = {name: getattr(self, name) for name in _STATE_ARRAYS}
        capacity = len(old["count"])
        while capacity < needed:
            capacity *= 2
        self._allocate(capacity)
        for name, values in old.items():
            getattr(self, name)[..., : values.shape[-1]] = values

    def _slots(self, symbols: list[str]) -> np.ndarray | None:
        """Slot of each symbol (new symbols get one); None when the update is every known symbol in order."""
        if symbols == self._last_symbols:  # a stream's updates usually repeat the same symbols
            return self._last_slots
        slot = self._slot
        indices = [slot.get(s, -1) for s in symbols]
        if -1 in indices:
            for i, s in enumerate(symbols):
                if indices[i] == -1:
                    if s in slot:
                        indices[i] = slot[s]
                        continue
                    if not isinstance(s, str) or not s:
                        raise DataError(f"IncrementalEngine: symbol {s!r} must be a non-empty string")
                    slot[s] = indices[i] = len(self.symbols)
                    self.symbols.append(s)
            if len(self.symbols) > len(self.count):
                self._grow(len(self.symbols))
        out: np.ndarray | None = np.asarray(indices, dtype=np.int64)
        if len(np.unique(out)) != len(indices):
            seen: set[str] = set()
            duplicate = next(s for s in symbols if s in seen or seen.add(s))  # type: ignore[func-returns-value]
            raise DataError(f"IncrementalEngine: symbol {duplicate!r} has two bars in one update")
        if len(indices) == len(self.symbols) and indices == list(range(len(indices))):
            out = None
        self._last_symbols, self._last_slots = list(symbols), out
        return out

    def fingerprint(self) -> str:
        """Identifies what the state means: feature version, parameters, plan and regime model."""
        regimes = self.regime_model.to_json() if self._regimes is not None else None
        suspensions = None if self.suspensions is None else [self.suspensions.max_gap_bars,
                                                              self.suspensions.max_closure_days]
        text = json.dumps({"version": FEATURE_VERSION, "params": self.params.model_dump(mode="json"),
                           "names": self.names, **({"regime_model": regimes} if regimes else {}),
                           **({"suspensions": suspensions} if suspensions else {})}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def state_bytes(self) -> bytes:
        """The whole state, to restore bit for bit with :meth:`from_state_bytes`."""
        n = len(self.symbols)
        buffer = io.BytesIO()
        arrays = {name: getattr(self, name)[..., :n] for name in _STATE_ARRAYS}
        if self._sentiment is not None:
            arrays.update(self._sentiment.state())
        if self._regimes is not None:
            arrays.update(self._regimes.state())
        panel = np.asarray([self.session, self.closures, -1 if self.panel_last_ns is None else self.panel_last_ns,
                            self.restarts], dtype=np.int64)
        np.savez(buffer, symbols=np.asarray(self.symbols, dtype=object).astype(str),
                 fingerprint=np.asarray(self.fingerprint()), panel_clock=panel, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_state_bytes(cls, params: FeatureParams, names: Sequence[str], state: bytes,
                         regime_model: RegimeModel | None = None,
                         suspensions: SuspensionRule | None = None) -> IncrementalEngine:
        engine = cls(params, names, regime_model=regime_model, suspensions=suspensions)
        with np.load(io.BytesIO(state), allow_pickle=False) as saved:
            if str(saved["fingerprint"]) != engine.fingerprint():
                raise ValueError("IncrementalEngine: the saved state was made by other feature parameters, plan or "
                                 "version; rebuild it from the bars")
            symbols = [str(s) for s in saved["symbols"]]
            engine._grow(max(len(symbols), 1))
            for name in _STATE_ARRAYS:
                getattr(engine, name)[..., : len(symbols)] = saved[name]
            engine.session, engine.closures, last_ns, engine.restarts = (int(v) for v in saved["panel_clock"])
            engine.panel_last_ns = None if last_ns == -1 else last_ns
            if engine._sentiment is not None:
                engine._sentiment.restore({k: saved[k] for k in saved.files if k.startswith("sentiment_")})
            if engine._regimes is not None:
                engine._regimes.restore({k: saved[k] for k in saved.files if k.startswith("regime_")})
        engine.symbols = symbols
        engine._slot = {s: i for i, s in enumerate(symbols)}
        return engine

    # --------------------------------------------------------------------------------------- update

    def update(self, timestamp_ns: int, symbols: Sequence[str], columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Add one bar per symbol at ``timestamp_ns`` (UTC nanoseconds); their features, shape (symbols, features).

        ``columns`` maps each of :attr:`input_columns` to one value per symbol. Every symbol with a
        bar at this timestamp must be in this one update (the cross-sectional ranks are taken among
        them), and the timestamp must be later than each symbol's previous bar.
        """
        symbols = symbols if isinstance(symbols, list) else list(symbols)
        slots = self._slots(symbols)
        n_known = len(self.symbols)
        index = slice(0, n_known) if slots is None else slots
        late = self.last_ns[index] >= timestamp_ns
        if late.any():
            symbol = symbols[int(np.flatnonzero(late)[0])]
            raise DataError(f"IncrementalEngine: symbol {symbol!r}: bar at {pd.Timestamp(timestamp_ns, tz='UTC')} is "
                            "not after its previous bar (rule: time strictly increases per symbol)")
        close = np.asarray(columns["close"], dtype=np.float64)
        if not (close > 0).all() or not np.isfinite(close).all():
            bad = int(np.flatnonzero(~((close > 0) & np.isfinite(close)))[0])
            raise DataError(f"IncrementalEngine: symbol {symbols[bad]!r}: column 'close' value {close[bad]!r} "
                            "must be finite and > 0")
        if self.suspensions is not None:
            self._suspended(timestamp_ns, index)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self._compute(timestamp_ns, symbols, slots, n_known, index, close, columns)
        self.count[index] += 1
        self.last_ns[index] = timestamp_ns
        return out.T

    def _compute(self, timestamp_ns: int, symbols: list[str], slots: np.ndarray | None, n_known: int,
                 index: slice | np.ndarray, close: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The features of one update, as (features, symbols); updates every state but the bar counts."""
        n = len(symbols)
        p = self.params
        position = self.count[index].copy()
        out = np.empty((len(self.names), n))
        column = self._column

        def put(name: str, values: np.ndarray) -> None:
            if name in column:
                out[column[name]] = values

        def put_block(group: str, block: np.ndarray) -> None:
            """Rows of ``block`` (one per window of a family of features) into their output rows."""
            block_rows, out_rows = self._blocks[group]
            if out_rows.size:
                out[out_rows] = block if block_rows is None else block[block_rows]

        # Families of features that differ only by their window are computed as one (windows, symbols) block.
        previous_close = self.close_hist[-1, index].copy()
        closes = _push(self.close_hist, slots, n_known, close)
        log_close = np.log(close)
        put_block("log_return", log_close - np.log(closes[self._lag_rows]))
        returns = log_close - np.log(previous_close)
        sums = np.empty((len(self._ma_windows), n))
        total, covered = np.zeros(n), 0
        for row, window in self._ma_by_length:  # nested windows: each sum extends the shorter one
            total = total + closes[-window: len(closes) - covered].sum(axis=0)
            sums[row], covered = total, window
        put_block("sma_ratio", close / (sums / self._ma_windows) - 1.0)

        first = np.flatnonzero(position == 0)
        ema = self._alpha * close + self._decay * self.ema[:, index]
        if first.size:
            ema[:, first] = close[first]
        self.ema[:, index] = ema
        if not (position >= self._spans[-1] - 1).all():
            ema = np.where(position >= self._span_starts, ema, np.nan)
        put_block("ema_ratio", close / ema[self._ma_span_rows] - 1.0)
        masked = {span: ema[j] for j, span in enumerate(self._spans)}

        change = close - previous_close
        gain = self._wilder(self.gain, index, np.maximum(change, 0.0), position, p.rsi_window)
        loss = self._wilder(self.loss, index, np.maximum(-change, 0.0), position, p.rsi_window)
        put("rsi", _safe_divide(100.0 * gain, gain + loss, where_zero=50.0))

        macd_line = masked[p.macd_fast] - masked[p.macd_slow]
        alpha = 2.0 / (p.macd_signal + 1.0)
        signal = alpha * macd_line + (-(alpha - 1.0)) * self.signal[index]
        start = position == p.macd_slow - 1
        signal[start] = macd_line[start]
        self.signal[index] = signal
        signal = np.where(position >= p.macd_slow + p.macd_signal - 2, signal, np.nan)
        put("macd", macd_line / close)
        put("macd_signal", signal / close)
        put("macd_hist", (macd_line - signal) / close)

        middle, std = _two_pass_std(closes[-p.bollinger_window:], ddof=0)
        put("bollinger_position", _safe_divide(close - middle, p.bollinger_k * std, where_zero=0.0))

        returns_window = _push(self.return_hist, slots, n_known, returns)
        for window_length in p.volatility_windows:
            put(f"volatility_{window_length}", _two_pass_std(returns_window[-window_length:], ddof=1)[1])

        if self._needs_high_low:
            high = np.asarray(columns["high"], dtype=np.float64)
            low = np.asarray(columns["low"], dtype=np.float64)
            true_range = np.maximum(high - low, np.maximum(np.abs(high - previous_close),
                                                           np.abs(low - previous_close)))
            put("atr_ratio", self._wilder(self.atr, index, true_range, position, p.atr_window) / close)
            highest = _push(self.high_hist, slots, n_known, high).max(axis=0)
            lowest = _push(self.low_hist, slots, n_known, low).min(axis=0)
            stochastic_k = _safe_divide(close - lowest, highest - lowest, where_zero=0.5)
            stochastic_k[np.isnan(highest) | np.isnan(lowest)] = np.nan
            put("stochastic_k", stochastic_k)
            recent = _push(self.k_hist, slots, n_known, stochastic_k)
            total = recent[-1].copy()
            for lag in range(1, p.stochastic_smooth):
                total += recent[-1 - lag]
            put("stochastic_d", total / p.stochastic_smooth)
        if self._needs_volume:
            volume = np.asarray(columns["volume"], dtype=np.float64)
            mean_volume = _push(self.volume_hist, slots, n_known, volume).sum(axis=0) / p.volume_window
            put("volume_ratio", _safe_divide(volume, mean_volume, where_zero=np.nan))
            dollar = _push(self.dollar_hist, slots, n_known, close * volume).sum(axis=0) / p.volume_window
            dollar[dollar == 0] = np.nan
            put("log_dollar_volume", np.log(dollar))
        if "spread" in column:
            bid, ask = (np.asarray(columns[c], dtype=np.float64) for c in ("bid", "ask"))
            put("spread", _safe_divide(ask - bid, (ask + bid) / 2.0, where_zero=np.nan))
        if "order_imbalance" in column:
            bid_size, ask_size = (np.asarray(columns[c], dtype=np.float64) for c in ("bid_size", "ask_size"))
            put("order_imbalance", _safe_divide(bid_size - ask_size, bid_size + ask_size, where_zero=0.0))
        if self.calendar:
            if self._calendar_cache[0] != timestamp_ns:
                self._calendar_cache = (timestamp_ns, calendar_values(np.asarray([timestamp_ns], dtype=np.int64),
                                                                      self.intraday))
            values = self._calendar_cache[1]
            for name in self.calendar:
                out[column[name]] = values[name][0]
        if self._exogenous is not None:
            joined = self._exogenous.asof(np.asarray([timestamp_ns], dtype=np.int64))[0]
            for j, name in enumerate(self._exogenous.names):
                out[column[name]] = joined[j]
        if self._sentiment is not None:
            polarity, count = self._sentiment.update(timestamp_ns, symbols)
            out[column["sentiment_lm_polarity"]] = polarity
            out[column["sentiment_headline_count"]] = count
        if self._regimes is not None:  # one market-wide filter step per update (timestamp)
            finite = returns[np.isfinite(returns)]
            market_return = float(finite.mean()) if finite.size else np.nan
            out[self.regime_rows] = self._regimes.update(market_return)[:, None]
        if self._factors:  # the batch kernel itself, on each symbol's last alpha158.HISTORY bars
            pushed = {c: _push(getattr(self, f"factor_{c}"), slots, n_known, np.asarray(columns[c], dtype=np.float64))
                      for c in self._factor_inputs}
            if self._factor_layout is not None:  # Alpha158 reads the symbols' columns of the whole buffers
                registers = {c: getattr(self, f"factor_{c}") for c in self._factor_inputs}
                members = self._all_slots(n_known) if slots is None else slots
                alpha158.compute_latest(registers, members, self._factor_layout, out)
            else:
                panels = {c: rows.T for c, rows in pushed.items()}  # (symbols, bars) views
                factors = alpha360.alpha360_values(panels, self._factors, last_only=True)
                out[self._factor_rows] = np.stack([factors[name] for name in self._factors])
        if self.ranked:
            sources = np.stack([out[column[name.removesuffix("_cs_rank")]] for name in self.ranked])
            ranked = _pct_ranks(sources)
            for i, name in enumerate(self.ranked):
                out[column[name]] = ranked[i]
        if self._processed_rows.size:  # across the symbols of this timestamp, after the ranks (as in batch)
            out[self._processed_rows] = process_rows(out[self._processed_rows], p.per_timestamp_processing)

        return out

    @staticmethod
    def _wilder(state: np.ndarray, index: slice | np.ndarray, x: np.ndarray, position: np.ndarray,
                window: int) -> np.ndarray:
        """Wilder's average of a series that starts at bar 1: the mean of bars 1..n at bar n, then alpha = 1/n."""
        values = state[index]
        if (position > window).all():
            alpha = 1.0 / window
            values = alpha * x + (-(alpha - 1.0)) * values
        else:
            alpha = 1.0 / window
            seeding = (position >= 1) & (position <= window)
            recurring = position > window
            values[position == 0] = 0.0
            values[seeding] += x[seeding]
            seeded = position == window
            values[seeded] /= window
            values[recurring] = alpha * x[recurring] + (-(alpha - 1.0)) * values[recurring]
        state[index] = values
        return np.where(position >= window, values, np.nan)

    # --------------------------------------------------------------------------------------- replay

    def replay(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Feed ``bars`` (canonical long schema, any row order) one timestamp at a time; their features,
        one row per bar in the order of ``bars``, with ``timestamp`` and ``symbol`` in front."""
        missing = [c for c in ("timestamp", "symbol", *self.input_columns) if c not in bars.columns]
        if missing:
            raise DataError(f"IncrementalEngine.replay: the bars lack column(s) {missing} needed by the features")
        stamps = pd.DatetimeIndex(bars["timestamp"])
        stamps = stamps.tz_convert("UTC").tz_localize(None) if stamps.tz is not None else stamps
        nanos = stamps.as_unit("ns").asi8
        order = np.argsort(nanos, kind="stable")
        sorted_nanos = nanos[order]
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(sorted_nanos)) + 1, [len(order)]))
        symbols = bars["symbol"].to_numpy(dtype=object)[order]
        inputs = {c: bars[c].to_numpy(dtype=np.float64, na_value=np.nan)[order] for c in self.input_columns}
        values = np.empty((len(bars), len(self.names)))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            step = {c: v[lo:hi] for c, v in inputs.items()}
            values[order[lo:hi]] = self.update(int(sorted_nanos[lo]), symbols[lo:hi].tolist(), step)
        frame = pd.DataFrame(values, columns=self.names, index=bars.index)
        frame.insert(0, "symbol", bars["symbol"].to_numpy())
        frame.insert(0, "timestamp", bars["timestamp"].array)
        return frame


def plan_for(params: FeatureParams, *, columns: Sequence[str] | set[str], multi_symbol: bool,
             intraday: bool, n_regimes: int = 0) -> list[str]:
    """The feature names (batch order) for bars with ``columns`` (and a regime model of ``n_regimes``, 0: none);
    what :class:`IncrementalEngine` takes."""
    return feature_plan(params, columns=set(columns), multi_symbol=multi_symbol, intraday=intraday,
                        n_regimes=n_regimes)
