"""Alpha158: equivalents of Qlib's Alpha158 factor set (``qlib/contrib/data/loader.py``, ``Alpha158DL``).

The formulas are written once (:func:`_evaluate`) over a small set of window primitives (sums, index-weighted
sums, extremes, sorted windows, rank counts, flatness), which come in two implementations: :class:`_Panel`
for whole (rows, bars) panels, O(1) per bar and window (cumulative sums over overlapping blocks, running
max/min filters), used by the batch library (:func:`alphaforge.features.compute_features`, ``features.set:
alpha158``); and :class:`_Latest` for each symbol's last :data:`HISTORY` bars (the incremental engine's ring
buffer, ``last_only``), where every window is a prefix of the history read backwards, so one cumulative sum
serves all five window lengths. Both sum values relative to a nearby level (a block's first bar, the current
bar), so they agree inside 1e-9 (``tests/test_featurestore.py`` checks every factor on real bars; on the
benchmark's 500 x 2,500 random bars the largest gap is ~1e-10, in the correlations and R^2 of short, nearly
flat windows, which are ill-conditioned whatever the summation order). Sums of gains and losses count |change|
as gains + losses, so a window with no gains has exactly 0 of them in both engines (cross-sectional processing
would otherwise amplify rounding among tied symbols).

Names and formulas are Qlib's (``$close`` is the bar's close, ``Ref(x, d)`` its value ``d`` bars
earlier, windows ``d`` in 5, 10, 20, 30, 60):

* K-bar shape: ``KMID = (close-open)/open``, ``KLEN = (high-low)/open``, ``KMID2 = (close-open)/(high-low+1e-12)``,
  ``KUP = (high-max(open,close))/open``, ``KUP2 = (high-max(open,close))/(high-low+1e-12)``,
  ``KLOW = (min(open,close)-low)/open``, ``KLOW2 = (min(open,close)-low)/(high-low+1e-12)``,
  ``KSFT = (2close-high-low)/open``, ``KSFT2 = (2close-high-low)/(high-low+1e-12)``.
* Prices: ``OPEN0 = open/close``, ``HIGH0 = high/close``, ``LOW0 = low/close``, ``VWAP0 = vwap/close``
  (the canonical schema has no vwap column, so VWAP0 is always skipped and listed as such).
* Rolling, over the last ``d`` bars (current one included): ``ROC = Ref(close,d)/close``, ``MA = mean/close``,
  ``STD = sample std (ddof 1)/close``, ``BETA = OLS slope on the bar index/close``, ``RSQR`` = its R^2,
  ``RESI`` = residual of the current bar/close, ``MAX = max(high)/close``, ``MIN = min(low)/close``,
  ``QTLU/QTLD`` = 0.8/0.2 quantile of close (linear interpolation, as pandas)/close, ``RANK`` = percentile
  of the current close in the window (ties averaged, pandas ``rank(pct=True)``), ``RSV = (close-min(low))/
  (max(high)-min(low)+1e-12)``, ``IMAX = (argmax(high)+1)/d`` and ``IMIN = (argmin(low)+1)/d`` counted from
  the window's oldest bar (first occurrence; Qlib's ``IdxMax``), ``IMXD = (argmax(high)-argmin(low))/d``,
  ``CORR = corr(close, log(volume+1))``, ``CORD = corr(close/Ref(close,1), log(volume/Ref(volume,1)+1))``,
  ``CNTP/CNTN`` = share of up/down bars among the last ``d`` one-bar changes, ``CNTD = CNTP-CNTN``,
  ``SUMP/SUMN/SUMD`` = summed gains/losses/their difference over (summed absolute changes + 1e-12),
  ``VMA = mean(volume)/(volume+1e-12)``, ``VSTD = std(volume)/(volume+1e-12)``, ``WVMA`` = std/(mean+1e-12)
  of ``|close/Ref(close,1)-1| * volume``, ``VSUMP/VSUMN/VSUMD`` as SUMP/SUMN/SUMD on volume.

Where this differs from Qlib, on purpose (house rules: no value from a partial window):

* a window that is not yet full gives NaN (Qlib's operators use ``min_periods=1``); factors on one-bar
  changes (CORD, CNT*, SUM*, WVMA, VSUM*) need ``d`` changes, so ``d + 1`` bars, as ROC does;
* on a window of exactly equal values STD/VSTD are exactly 0, and RSQR and CORR/CORD (either side flat) are NaN
  (Qlib: a 2e-5 tolerance for CORR);
* CORD is NaN where the previous volume is 0 (volume/0 has no log).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

# the window geometry (WINDOWS, HISTORY, BLOCK: read as alpha158.X) and the two window engines
from alphaforge.features.alpha158_ops import BLOCK, HISTORY, WINDOWS, _Latest, _Panel, _Series  # noqa: F401

KBAR: tuple[str, ...] = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
PRICE: tuple[str, ...] = ("OPEN0", "HIGH0", "LOW0", "VWAP0")
ROLLING: tuple[str, ...] = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV", "IMAX", "IMIN", "IMXD",
    "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)
_EPS = 1e-12

#: The bar columns each factor family reads.
NEEDS: dict[str, tuple[str, ...]] = {
    **{name: ("open", "high", "low", "close") for name in KBAR},
    "OPEN0": ("open", "close"), "HIGH0": ("high", "close"), "LOW0": ("low", "close"), "VWAP0": ("vwap", "close"),
    **{op: ("close",) for op in ("ROC", "MA", "STD", "BETA", "RSQR", "RESI", "QTLU", "QTLD", "RANK", "CNTP", "CNTN",
                                 "CNTD", "SUMP", "SUMN", "SUMD")},
    "MAX": ("high", "close"), "MIN": ("low", "close"), "RSV": ("high", "low", "close"), "IMAX": ("high",),
    "IMIN": ("low",), "IMXD": ("high", "low"),
    **{op: ("close", "volume") for op in ("CORR", "CORD", "WVMA")},
    **{op: ("volume",) for op in ("VMA", "VSTD", "VSUMP", "VSUMN", "VSUMD")},
}
#: Operators on one-bar changes: a window of ``d`` changes spans ``d + 1`` bars.
_ON_CHANGES = frozenset({"CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "WVMA", "VSUMP", "VSUMN", "VSUMD"})

DESCRIPTIONS: dict[str, str] = {
    "KMID": "(close - open) / open", "KLEN": "(high - low) / open", "KMID2": "(close - open) / (high - low + 1e-12)",
    "KUP": "(high - max(open, close)) / open", "KUP2": "(high - max(open, close)) / (high - low + 1e-12)",
    "KLOW": "(min(open, close) - low) / open", "KLOW2": "(min(open, close) - low) / (high - low + 1e-12)",
    "KSFT": "(2 close - high - low) / open", "KSFT2": "(2 close - high - low) / (high - low + 1e-12)",
    "OPEN0": "open / close", "HIGH0": "high / close", "LOW0": "low / close", "VWAP0": "vwap / close",
    "ROC": "close {d} bars earlier / close", "MA": "mean close of {d} bars / close",
    "STD": "sample std of {d} closes / close", "BETA": "OLS slope of {d} closes on the bar index / close",
    "RSQR": "R^2 of the OLS line through {d} closes (NaN on a flat window)",
    "RESI": "residual of the current close from the OLS line through {d} closes / close",
    "MAX": "highest high of {d} bars / close", "MIN": "lowest low of {d} bars / close",
    "QTLU": "0.8 quantile of {d} closes / close", "QTLD": "0.2 quantile of {d} closes / close",
    "RANK": "percentile of the close among the last {d} closes (ties averaged)",
    "RSV": "(close - lowest low) / (highest high - lowest low + 1e-12) over {d} bars",
    "IMAX": "(bars from the window start to the highest high + 1) / {d}",
    "IMIN": "(bars from the window start to the lowest low + 1) / {d}",
    "IMXD": "(argmax high - argmin low) / {d} over {d} bars",
    "CORR": "correlation of close and log(volume + 1) over {d} bars",
    "CORD": "correlation of close/prev close and log(volume/prev volume + 1) over {d} changes",
    "CNTP": "share of up bars among the last {d}", "CNTN": "share of down bars among the last {d}",
    "CNTD": "share of up bars - share of down bars among the last {d}",
    "SUMP": "summed gains / (summed absolute changes + 1e-12) over {d} bars",
    "SUMN": "summed losses / (summed absolute changes + 1e-12) over {d} bars",
    "SUMD": "(summed gains - summed losses) / (summed absolute changes + 1e-12) over {d} bars",
    "VMA": "mean volume of {d} bars / (volume + 1e-12)", "VSTD": "sample std of {d} volumes / (volume + 1e-12)",
    "WVMA": "std / (mean + 1e-12) of |close/prev close - 1| x volume over {d} bars",
    "VSUMP": "summed volume increases / (summed absolute volume changes + 1e-12) over {d} bars",
    "VSUMN": "summed volume decreases / (summed absolute volume changes + 1e-12) over {d} bars",
    "VSUMD": "(volume increases - decreases) / (summed absolute volume changes + 1e-12) over {d} bars",
}


def operator_of(name: str) -> tuple[str, int]:
    """(operator, window) of a factor name: ``"ROC20"`` -> ``("ROC", 20)``; a K-bar or price factor has window 1."""
    if name in KBAR or name in PRICE:
        return name, 1
    operator = name.rstrip("0123456789")
    if operator not in ROLLING or operator == name:
        raise KeyError(f"{name!r} is not an Alpha158 factor")
    return operator, int(name[len(operator):])


def window_of(name: str) -> int:
    """Bars of history (the current one included) the factor needs before it exists."""
    operator, d = operator_of(name)
    if operator == "ROC" or operator in _ON_CHANGES:
        return d + 1
    return d


def all_names() -> list[str]:
    """Every factor, in Qlib's order (K-bar, prices, then each rolling operator over every window)."""
    return [*KBAR, *PRICE, *(f"{op}{d}" for op in ROLLING for d in WINDOWS)]


def plan(present: set[str]) -> tuple[list[str], list[str]]:
    """The factors computable from bar columns ``present``, and one log line per skipped family."""
    names: list[str] = []
    skipped: list[str] = []
    for family in (*KBAR, *PRICE, *ROLLING):
        missing = [c for c in NEEDS[family] if c not in present]
        members = [family] if family in KBAR or family in PRICE else [f"{family}{d}" for d in WINDOWS]
        if missing:
            skipped.append(f"features: skipping {', '.join(members)}: the bars have no "
                           f"{', '.join(repr(c) for c in missing)} column")
        else:
            names += members
    return names, skipped


# --------------------------------------------------------------------------------------------
# The kernel: the formulas once, over two ways of summing windows
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _windows_by_operator(names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The windows each rolling operator among ``names`` is wanted over."""
    by_operator: dict[str, tuple[int, ...]] = {}
    for name in names:
        if name not in KBAR and name not in PRICE:
            operator, d = operator_of(name)
            by_operator[operator] = (*by_operator.get(operator, ()), d)
    return by_operator


def _lag1(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    out[:, 0] = np.nan
    out[:, 1:] = x[:, :-1]
    return out


def alpha158_values(panels: dict[str, np.ndarray], names: list[str], *, last_only: bool) -> dict[str, np.ndarray]:
    """The factors ``names`` of (rows, bars) panels of ``close`` (and ``open``/``high``/``low``/``volume`` as the
    factors need), each row one symbol's consecutive bars, NaN before its first bar.

    ``last_only`` False: (rows, bars) arrays, NaN where a window is not full. True: (rows,) arrays, the value
    at the last bar (the panels must hold at least :data:`HISTORY` bars, NaN-padded in front when shorter).
    """
    close = panels["close"]
    n_bars = close.shape[1]
    if last_only and n_bars != HISTORY:
        if n_bars < HISTORY:
            raise ValueError(f"alpha158_values: last_only needs {HISTORY} bars of history, got {n_bars}")
        panels = {c: v[:, -HISTORY:] for c, v in panels.items()}
        close = panels["close"]
    windows: _Panel | _Latest = _Latest(close) if last_only else _Panel(close)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _evaluate(windows, panels, names)


def _evaluate(w: _Panel | _Latest, panels: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Every factor's formula, once, over the window sums of ``w``."""
    out: dict[str, np.ndarray] = {}
    wanted = set(names)
    close = panels["close"]
    c = w.current(close)
    if wanted & set(KBAR):
        o, h, lo = (w.current(panels[k]) for k in ("open", "high", "low"))
        span = h - lo + _EPS
        top, bottom = np.maximum(o, c), np.minimum(o, c)
        kbar = {"KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / span, "KUP": (h - top) / o,
                "KUP2": (h - top) / span, "KLOW": (bottom - lo) / o, "KLOW2": (bottom - lo) / span,
                "KSFT": (2.0 * c - h - lo) / o, "KSFT2": (2.0 * c - h - lo) / span}
        out.update({n: v for n, v in kbar.items() if n in wanted})
    for name, column in (("OPEN0", "open"), ("HIGH0", "high"), ("LOW0", "low"), ("VWAP0", "vwap")):
        if name in wanted:
            out[name] = w.current(panels[column]) / c

    by_operator = _windows_by_operator(tuple(names))

    def ds(*operators: str) -> tuple[int, ...]:
        return tuple(sorted({d for op in operators for d in by_operator.get(op, ())}))

    def put(operator: str, d: int, values: np.ndarray, span: int | None = None, extra: np.ndarray | None = None
            ) -> None:
        if d in by_operator.get(operator, ()):
            valid = w.valid(d if span is None else span)
            if extra is not None:
                valid = valid & extra
            out[f"{operator}{d}"] = np.where(valid, values, np.nan)

    for d in ds("ROC"):
        put("ROC", d, w.earlier(close, d) / c, span=d + 1)

    moments_of_close = ds("MA", "STD", "BETA", "RSQR", "RESI", "CORR")
    if moments_of_close:
        series = w.prepare(close, shifted=True)
        s1 = w.sums(series.values, moments_of_close)
        s2 = w.sums(series.values * series.values, moments_of_close)
        flat = w.flat(close, moments_of_close)
        index = w.index_sums(series.values, ds("BETA", "RSQR", "RESI"), s1)
        for d in moments_of_close:
            put("MA", d, (series.shift + s1[d] / d) / c)
            syy = np.maximum(s2[d] - s1[d] * s1[d] / d, 0.0)
            put("STD", d, np.where(flat[d], 0.0, np.sqrt(syy / (d - 1))) / c)
            if d in index:
                sxx = d * (d * d - 1) / 12.0
                sxy = index[d] - (d - 1) / 2.0 * s1[d]
                slope = sxy / sxx
                put("BETA", d, slope / c)
                put("RSQR", d, np.where(flat[d], np.nan, sxy * sxy / (sxx * syy)))
                put("RESI", d, ((c - series.shift) - (s1[d] / d + slope * (d - 1) / 2.0)) / c)
        if ds("CORR"):
            _put_correlation(w, put, "CORR", ds("CORR"), series, s1, s2, flat,
                             np.log(panels["volume"] + 1.0), span_extra=0)

    extreme_windows = ds("MAX", "MIN", "RSV", "IMAX", "IMIN", "IMXD")
    if ds("MAX", "RSV", "IMAX", "IMXD"):
        high = w.extremes(panels["high"], ds("MAX", "RSV", "IMAX", "IMXD"), highest=True)
    if ds("MIN", "RSV", "IMIN", "IMXD"):
        low = w.extremes(panels["low"], ds("MIN", "RSV", "IMIN", "IMXD"), highest=False)
    for d in extreme_windows:
        if d in ds("MAX", "IMAX"):
            put("MAX", d, high[d][0] / c)
            put("IMAX", d, (high[d][1] + 1.0) / d)
        if d in ds("MIN", "IMIN"):
            put("MIN", d, low[d][0] / c)
            put("IMIN", d, (low[d][1] + 1.0) / d)
        if d in ds("RSV"):
            put("RSV", d, (c - low[d][0]) / (high[d][0] - low[d][0] + _EPS))
        if d in ds("IMXD"):
            put("IMXD", d, (high[d][1] - low[d][1]) / float(d))

    for d in ds("QTLU", "QTLD"):
        ordered = w.sorted_windows(close, d)
        for operator, q in (("QTLU", 0.8), ("QTLD", 0.2)):
            position = q * (d - 1)
            below = int(np.floor(position))
            above = min(below + 1, d - 1)
            value = ordered[..., below] + (ordered[..., above] - ordered[..., below]) * (position - below)
            put(operator, d, value / c)
    for d, (less, equal) in w.rank_counts(close, ds("RANK")).items():
        put("RANK", d, (less + (equal + 1) / 2.0) / d)

    _change_factors(w, panels, put, ds)

    volume_windows = ds("VMA", "VSTD")
    if volume_windows:
        volume = panels["volume"]
        v = w.current(volume) + _EPS
        plain = w.prepare(volume, shifted=False)
        for d, total in w.sums(plain.values, ds("VMA")).items():
            put("VMA", d, total / d / v)
        if ds("VSTD"):
            moments = w.prepare(volume, shifted=True)
            s1 = w.sums(moments.values, ds("VSTD"))
            s2 = w.sums(moments.values * moments.values, ds("VSTD"))
            flat = w.flat(volume, ds("VSTD"))
            for d in ds("VSTD"):
                variance = np.maximum(s2[d] - s1[d] * s1[d] / d, 0.0) / (d - 1)
                put("VSTD", d, np.where(flat[d], 0.0, np.sqrt(variance)) / v)
    return {name: out[name] for name in names}


def _put_correlation(w: _Panel | _Latest, put: Callable[..., None], operator: str, windows: tuple[int, ...],
                     x: _Series, sx: dict[int, np.ndarray], sxx: dict[int, np.ndarray],
                     flat_x: dict[int, np.ndarray], y_raw: np.ndarray, span_extra: int) -> None:
    """Pearson correlation of the prepared ``x`` with ``y_raw`` over each window; NaN where either side is flat
    or a value is missing (``span_extra``: 1 for series of one-bar changes)."""
    y = w.prepare(y_raw, shifted=True)
    sy = w.sums(y.values, windows)
    syy = w.sums(y.values * y.values, windows)
    sxy = w.sums(x.values * y.values, windows)
    missing = w.sums((x.missing | y.missing).astype(np.float64), windows)
    flat_y = w.flat(y_raw, windows)
    for d in windows:
        covariance = sxy[d] - sx[d] * sy[d] / d
        spread = np.maximum(sxx[d] - sx[d] * sx[d] / d, 0.0) * np.maximum(syy[d] - sy[d] * sy[d] / d, 0.0)
        value = np.where(flat_x[d] | flat_y[d], np.nan, covariance / np.sqrt(spread))
        put(operator, d, value, span=d + span_extra, extra=missing[d] == 0)


def _change_factors(w: _Panel | _Latest, panels: dict[str, np.ndarray], put: Callable[..., None],
                    ds: Callable[..., tuple[int, ...]]) -> None:
    """The operators on the last ``d`` one-bar changes (``d + 1`` bars: a symbol's first change is NaN)."""
    close = panels["close"]
    counted = ds("CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD")
    if counted:
        change = w.prepare(close - _lag1(close), shifted=False).values
        up = w.sums((change > 0).astype(np.float64), ds("CNTP", "CNTN", "CNTD"))
        down = w.sums((change < 0).astype(np.float64), ds("CNTP", "CNTN", "CNTD"))
        for d in up:
            put("CNTP", d, up[d] / float(d), span=d + 1)
            put("CNTN", d, down[d] / float(d), span=d + 1)
            put("CNTD", d, up[d] / float(d) - down[d] / float(d), span=d + 1)
        _gain_loss(w, ("SUMP", "SUMN", "SUMD"), change, ds("SUMP", "SUMN", "SUMD"), put)
    if ds("VSUMP", "VSUMN", "VSUMD"):
        volume = panels["volume"]
        change = w.prepare(volume - _lag1(volume), shifted=False).values
        _gain_loss(w, ("VSUMP", "VSUMN", "VSUMD"), change, ds("VSUMP", "VSUMN", "VSUMD"), put)
    if ds("WVMA"):
        weighted_raw = np.abs(close / _lag1(close) - 1.0) * panels["volume"]
        plain = w.sums(w.prepare(weighted_raw, shifted=False).values, ds("WVMA"))
        weighted = w.prepare(weighted_raw, shifted=True)
        s1 = w.sums(weighted.values, ds("WVMA"))
        s2 = w.sums(weighted.values * weighted.values, ds("WVMA"))
        flat = w.flat(weighted_raw, ds("WVMA"))
        for d in ds("WVMA"):
            std = np.where(flat[d], 0.0, np.sqrt(np.maximum(s2[d] - s1[d] * s1[d] / d, 0.0) / (d - 1)))
            put("WVMA", d, std / (plain[d] / d + _EPS), span=d + 1)
    if ds("CORD"):
        volume = panels["volume"]
        previous = _lag1(volume)
        ratio = np.log(np.where(previous == 0, np.nan, volume / previous) + 1.0)
        relative = close / _lag1(close)
        x = w.prepare(relative, shifted=True)
        windows = ds("CORD")
        sx, sxx = w.sums(x.values, windows), w.sums(x.values * x.values, windows)
        _put_correlation(w, put, "CORD", windows, x, sx, sxx, w.flat(relative, windows), ratio, span_extra=1)


def _gain_loss(w: _Panel | _Latest, names: tuple[str, str, str], change: np.ndarray, windows: tuple[int, ...],
               put: Callable[..., None]) -> None:
    if not windows:
        return
    gains = w.sums(np.maximum(change, 0.0), windows)
    losses = w.sums(np.maximum(-change, 0.0), windows)
    for d in windows:
        # |change| summed as gains + losses: a window of only losses has gains exactly 0 in both engines, so
        # SUMN is l / (l + 1e-12) in both, and cross-sectional processing of such ties cannot amplify rounding
        total = gains[d] + losses[d] + _EPS
        put(names[0], d, gains[d] / total, span=d + 1)
        put(names[1], d, losses[d] / total, span=d + 1)
        put(names[2], d, (gains[d] - losses[d]) / total, span=d + 1)


def inputs_of(name: str) -> tuple[str, ...]:
    """The bar columns a factor reads."""
    return NEEDS[operator_of(name)[0]]


def describe(name: str) -> str:
    """One line saying what a factor is."""
    operator, d = operator_of(name)
    return DESCRIPTIONS[operator].format(d=d)
