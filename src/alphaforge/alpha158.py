"""Alpha158: equivalents of Qlib's Alpha158 factor set (``qlib/contrib/data/loader.py``, ``Alpha158DL``).

One kernel, :func:`alpha158_values`, evaluates every factor on windows of a (rows, bars) panel. The batch
library (:func:`alphaforge.features.compute_features`, ``features.set: alpha158``) hands it whole
panels and takes every position; the incremental engine hands it each symbol's last
:data:`HISTORY` bars (a ring buffer) and takes the last position (``last_only``). Both run the same
arithmetic on the same window values, so they agree far inside 1e-9.

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

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOWS: tuple[int, ...] = (5, 10, 20, 30, 60)
#: Bars of a symbol's history the incremental engine keeps: the longest window of one-bar changes.
HISTORY: int = max(WINDOWS) + 1
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
# The kernel
# --------------------------------------------------------------------------------------------


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
    rows, n_bars = close.shape
    if last_only and n_bars < HISTORY:
        raise ValueError(f"alpha158_values: last_only needs {HISTORY} bars of history, got {n_bars}")
    wanted = set(names)
    out: dict[str, np.ndarray] = {}
    current = (lambda x: x[:, -1]) if last_only else (lambda x: x)

    def windows(x: np.ndarray, d: int) -> np.ndarray:
        """(rows, positions, d) windows ending at every bar (last_only: at the last bar only)."""
        if last_only:
            return np.ascontiguousarray(x[:, -d:])[:, None, :]
        if d > n_bars:
            return np.empty((rows, 0, d))
        return sliding_window_view(x, d, axis=1)

    def place(values: np.ndarray, d: int, valid: np.ndarray) -> np.ndarray:
        values = np.where(valid, values, np.nan)
        if last_only:
            return values[:, 0]
        full = np.full((rows, n_bars), np.nan)
        full[:, d - 1:] = values
        return full

    def complete(window: np.ndarray) -> np.ndarray:
        return ~np.isnan(window).any(axis=-1)

    def constant(window: np.ndarray) -> np.ndarray:
        return (window == window[..., :1]).all(axis=-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        c = current(close)
        if any(n in wanted for n in KBAR):
            o, h, lo = current(panels["open"]), current(panels["high"]), current(panels["low"])
            span = h - lo + _EPS
            top, bottom = np.maximum(o, c), np.minimum(o, c)
            kbar = {"KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / span, "KUP": (h - top) / o,
                    "KUP2": (h - top) / span, "KLOW": (bottom - lo) / o, "KLOW2": (bottom - lo) / span,
                    "KSFT": (2.0 * c - h - lo) / o, "KSFT2": (2.0 * c - h - lo) / span}
            out.update({n: v for n, v in kbar.items() if n in wanted})
        for name, column in (("OPEN0", "open"), ("HIGH0", "high"), ("LOW0", "low"), ("VWAP0", "vwap")):
            if name in wanted:
                out[name] = current(panels[column]) / c

        rolling = [operator_of(n) for n in names if n not in out]
        by_window: dict[int, set[str]] = {}
        for operator, d in rolling:
            by_window.setdefault(d, set()).add(operator)
        change = close - _lag1(close) if any(op in _ON_CHANGES for op, _ in rolling) else None
        for d, ops in sorted(by_window.items()):
            def put(op: str, values: np.ndarray, valid: np.ndarray, span: int = d, d: int = d) -> None:
                if op in ops:
                    out[f"{op}{d}"] = place(values, span, valid)

            _close_window_ops(ops, windows, close, d, put, complete, constant)
            if ops & {"MAX", "MIN", "RSV", "IMAX", "IMIN", "IMXD"}:
                wc = windows(close, d)
                valid = complete(wc)
                cw = wc[..., -1]
                if ops & {"MAX", "RSV", "IMAX", "IMXD"}:
                    wh = windows(panels["high"], d)
                    highest = wh.max(axis=-1)
                    arg_high = wh.argmax(axis=-1)
                    put("MAX", highest / cw, valid)
                    put("IMAX", (arg_high + 1.0) / d, valid)
                if ops & {"MIN", "RSV", "IMIN", "IMXD"}:
                    wl = windows(panels["low"], d)
                    lowest = wl.min(axis=-1)
                    arg_low = wl.argmin(axis=-1)
                    put("MIN", lowest / cw, valid)
                    put("IMIN", (arg_low + 1.0) / d, valid)
                if "RSV" in ops:
                    put("RSV", (cw - lowest) / (highest - lowest + _EPS), valid)
                if "IMXD" in ops:
                    put("IMXD", (arg_high - arg_low) / float(d), valid)
            if "CORR" in ops:
                wx, wy = windows(close, d), windows(np.log(panels["volume"] + 1.0), d)
                put("CORR", _corr(wx, wy, constant), complete(wx) & complete(wy))
            if change is not None and ops & _ON_CHANGES:
                _change_ops(ops, windows, close, panels, change, d, put, complete, constant)
            if ops & {"VMA", "VSTD"}:
                wv = windows(panels["volume"], d)
                valid = complete(wv)
                denominator = wv[..., -1] + _EPS
                put("VMA", wv.mean(axis=-1) / denominator, valid)
                if "VSTD" in ops:
                    put("VSTD", _std(wv, constant) / denominator, valid)
    return {name: out[name] for name in names}


def _std(window: np.ndarray, constant: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Sample std (ddof 1) along the window, exactly 0 on a window of equal values."""
    std = window.std(axis=-1, ddof=1)
    return np.where(constant(window), 0.0, std)


def _corr(wx: np.ndarray, wy: np.ndarray, constant: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Pearson correlation along the window; NaN where either side is flat."""
    dx = wx - wx.mean(axis=-1, keepdims=True)
    dy = wy - wy.mean(axis=-1, keepdims=True)
    value = (dx * dy).sum(axis=-1) / np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    return np.where(constant(wx) | constant(wy), np.nan, value)


def _close_window_ops(ops: set[str], windows: Callable[[np.ndarray, int], np.ndarray], close: np.ndarray, d: int,
                      put: Callable[..., None], complete: Callable[[np.ndarray], np.ndarray],
                      constant: Callable[[np.ndarray], np.ndarray]) -> None:
    """ROC, MA, STD, BETA, RSQR, RESI, QTLU, QTLD, RANK: functions of the last ``d`` (ROC: ``d + 1``) closes."""
    if "ROC" in ops:
        wr = windows(close, d + 1)
        put("ROC", wr[..., 0] / wr[..., -1], complete(wr), span=d + 1)
    if not ops & {"MA", "STD", "BETA", "RSQR", "RESI", "QTLU", "QTLD", "RANK"}:
        return
    wc = windows(close, d)
    valid = complete(wc)
    cw = wc[..., -1]
    mean = wc.mean(axis=-1)
    put("MA", mean / cw, valid)
    flat = constant(wc)
    if "STD" in ops:
        put("STD", np.where(flat, 0.0, wc.std(axis=-1, ddof=1)) / cw, valid)
    if ops & {"BETA", "RSQR", "RESI"}:
        x = np.arange(d, dtype=np.float64) - (d - 1) / 2.0
        deviations = wc - mean[..., None]
        sxx = float((x * x).sum())
        sxy = (deviations * x).sum(axis=-1)
        slope = sxy / sxx
        put("BETA", slope / cw, valid)
        syy = (deviations * deviations).sum(axis=-1)
        put("RSQR", np.where(flat, np.nan, sxy * sxy / (sxx * syy)), valid)
        put("RESI", (cw - (mean + slope * x[-1])) / cw, valid)
    if ops & {"QTLU", "QTLD"}:
        ordered = np.sort(wc, axis=-1)
        for op, q in (("QTLU", 0.8), ("QTLD", 0.2)):
            position = q * (d - 1)
            below = int(np.floor(position))
            above = min(below + 1, d - 1)
            fraction = position - below
            value = ordered[..., below] + (ordered[..., above] - ordered[..., below]) * fraction
            put(op, value / cw, valid)
    if "RANK" in ops:
        less = (wc < cw[..., None]).sum(axis=-1)
        equal = (wc == cw[..., None]).sum(axis=-1)
        put("RANK", (less + (equal + 1) / 2.0) / d, valid)


def _change_ops(ops: set[str], windows: Callable[[np.ndarray, int], np.ndarray], close: np.ndarray,
                panels: dict[str, np.ndarray], change: np.ndarray, d: int, put: Callable[..., None],
                complete: Callable[[np.ndarray], np.ndarray], constant: Callable[[np.ndarray], np.ndarray]) -> None:
    """The operators on the last ``d`` one-bar changes (``d + 1`` bars: the first change of a symbol is NaN,
    so a window that reaches it is not complete)."""
    if ops & {"CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD"}:
        wd = windows(change, d)
        valid = complete(wd)
        up, down = (wd > 0).sum(axis=-1) / float(d), (wd < 0).sum(axis=-1) / float(d)
        put("CNTP", up, valid)
        put("CNTN", down, valid)
        put("CNTD", up - down, valid)
        _gain_loss_ops(("SUMP", "SUMN", "SUMD"), ops, wd, valid, put)
    if ops & {"VSUMP", "VSUMN", "VSUMD"}:
        volume = panels["volume"]
        wd = windows(volume - _lag1(volume), d)
        _gain_loss_ops(("VSUMP", "VSUMN", "VSUMD"), ops, wd, complete(wd), put)
    if "WVMA" in ops:
        weighted = np.abs(close / _lag1(close) - 1.0) * panels["volume"]
        ww = windows(weighted, d)
        put("WVMA", _std(ww, constant) / (ww.mean(axis=-1) + _EPS), complete(ww))
    if "CORD" in ops:
        volume = panels["volume"]
        previous = _lag1(volume)
        ratio = np.log(np.where(previous == 0, np.nan, volume / previous) + 1.0)
        wx, wy = windows(close / _lag1(close), d), windows(ratio, d)
        put("CORD", _corr(wx, wy, constant), complete(wx) & complete(wy))


def _gain_loss_ops(names: tuple[str, str, str], ops: set[str], wd: np.ndarray, valid: np.ndarray,
                   put: Callable[..., None]) -> None:
    if not ops & set(names):
        return
    gains = np.maximum(wd, 0.0).sum(axis=-1)
    losses = np.maximum(-wd, 0.0).sum(axis=-1)
    total = np.abs(wd).sum(axis=-1) + _EPS
    put(names[0], gains / total, valid)
    put(names[1], losses / total, valid)
    put(names[2], (gains - losses) / total, valid)
