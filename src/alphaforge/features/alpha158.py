"""Alpha158: equivalents of Qlib's Alpha158 factor set (``qlib/contrib/data/loader.py``, ``Alpha158DL``).

Every factor is computed by one compiled routine per symbol (:mod:`alphaforge.features.alpha158_kernels`,
numba, loaded on first use): :func:`compute_batch` runs it over each symbol's whole run of bars, in parallel over
the symbols, for the batch library (:func:`alphaforge.features.compute_features`, ``features.set: alpha158``),
and :func:`compute_latest` for the last bar of each symbol's last :data:`HISTORY` bars (the incremental engine's
ring buffers). Window sums are differences of running sums over blocks of bars, each relative to a nearby level
(the block's first bar; the incremental call is a block of one bar, relative to the current bar), O(1) per bar and
window; quantiles, ranks, extremes, flatness and counts are exact. So the two engines agree to rounding: inside
1e-9 (``tests/integration/test_featurestore.py`` checks every factor on real bars; on the benchmark's 500 x 2,500
random bars the largest gap is ~6e-11, in the R^2 of 5-bar windows, ill-conditioned whatever the summation
order). Sums of gains and losses count |change| as gains + losses, so a window with no gains has exactly 0 of
them in both engines (cross-sectional processing would otherwise amplify rounding among tied symbols). The
kernels compile once per machine into numba's cache (``__pycache__``; :func:`warm_up` loads or compiles them,
which the incremental engine does when it is built, so its first update does not pay it).

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

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
# The engines: one numba kernel (alpha158_kernels), loaded on first use
# --------------------------------------------------------------------------------------------


def _kernels() -> ModuleType:
    """The compiled kernels (importing numba takes a moment: loading the params must not pay it)."""
    import alphaforge.features.alpha158_kernels as kernels

    return kernels


@dataclass(frozen=True)
class Layout:
    """Where the wanted factors go: factor ``codes[i]`` (its position in :func:`all_names`) to output row
    ``rows[i]``; ``inputs`` the bar columns they read; ``sorted_windows`` whether QTLU/QTLD/RANK are wanted."""

    codes: np.ndarray
    rows: np.ndarray
    inputs: tuple[str, ...]
    sorted_windows: bool


def layout(names: Sequence[str], rows: Sequence[int]) -> Layout:
    """The :class:`Layout` writing factor ``names[i]`` to output row ``rows[i]``."""
    if "VWAP0" in names:
        raise ValueError("alpha158: VWAP0 needs a 'vwap' column, which the canonical bar schema does not have")
    codes = np.asarray([_codes()[name] for name in names], dtype=np.int64)
    inputs = tuple(sorted({"close", *(c for n in names for c in inputs_of(n))}))
    return Layout(codes, np.asarray(rows, dtype=np.int64).reshape(len(codes)), inputs,
                  any(operator_of(n)[0] in ("QTLU", "QTLD", "RANK") for n in names))


_BAR_COLUMNS = ("open", "high", "low", "close", "volume")  # the kernels' inputs, in their order


@functools.cache
def _codes() -> dict[str, int]:
    return {name: code for code, name in enumerate(all_names())}


def volume_logs(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log(volume + 1)`` and ``log(volume / previous volume + 1)`` (NaN where the previous volume is 0, and on
    the first bar) along axis 0, the time axis of both engines' inputs: taken here, with NumPy's vectorised log,
    for the kernels (the same call on the same values, so both engines see the same logs)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.full(volume.shape, np.nan)
        previous = volume[:-1]
        ratio[1:] = np.log(np.where(previous == 0.0, np.nan, volume[1:] / previous) + 1.0)
        return np.log(volume + 1.0), ratio


def _columns(arrays: Mapping[str, np.ndarray], inputs: tuple[str, ...]) -> list[np.ndarray]:
    """open, high, low, close, volume and the :func:`volume_logs` as the kernels take them: C-contiguous float64,
    the closes standing in for a column no wanted factor reads."""
    close = np.ascontiguousarray(arrays["close"], dtype=np.float64)
    columns = [close if c == "close" or c not in inputs else np.ascontiguousarray(arrays[c], dtype=np.float64)
               for c in _BAR_COLUMNS]
    return [*columns, *(volume_logs(columns[-1]) if "volume" in inputs else (close, close))]


def compute_batch(columns: Mapping[str, np.ndarray], starts: np.ndarray, lengths: np.ndarray, where: Layout,
                  out: np.ndarray) -> None:
    """Every bar's factors into ``out[row, bar]`` (``out``: C-contiguous float64 (rows, bars)): symbol ``s`` is
    bars ``starts[s]`` .. ``starts[s] + lengths[s] - 1`` of the long ``columns`` (finite, as validated); NaN where
    a window is not yet full."""
    _kernels().run_batch(*_columns(columns, where.inputs), np.ascontiguousarray(starts, dtype=np.int64),
                         np.ascontiguousarray(lengths, dtype=np.int64), where.codes, where.rows, out,
                         where.sorted_windows)


def compute_latest(registers: Mapping[str, np.ndarray], members: np.ndarray, where: Layout, out: np.ndarray) -> None:
    """The last bar's factors of each symbol ``i`` into ``out[row, i]``: its bars are column ``members[i]`` of the
    (:data:`HISTORY`, capacity) time-major ``registers`` (the incremental engine's ring buffers, NaN before its
    first bar); :func:`compute_batch`'s values at that bar, to rounding."""
    _kernels().latest(*_columns(registers, where.inputs), members, where.codes, where.rows, out, where.sorted_windows)


def warm_up() -> float:
    """Compile the kernels, or load them from numba's on-disk cache (``__pycache__``), so that the first real call
    does not pay it; the seconds it took (a first compile: ~10-20 s on a 2-core machine; a load: ~0.4 s)."""
    start = time.perf_counter()
    every = layout(all_names()[:12] + all_names()[13:], range(157))
    bars = np.linspace(1.0, 2.0, 2 * HISTORY)
    compute_batch(dict.fromkeys(_BAR_COLUMNS, bars), np.zeros(1, dtype=np.int64),
                  np.full(1, bars.size, dtype=np.int64), every, np.empty((157, bars.size)))
    compute_latest(dict.fromkeys(_BAR_COLUMNS, bars[:HISTORY, None].copy()), np.zeros(1, dtype=np.int64), every,
                   np.empty((157, 1)))
    return time.perf_counter() - start


def inputs_of(name: str) -> tuple[str, ...]:
    """The bar columns a factor reads."""
    return NEEDS[operator_of(name)[0]]


def describe(name: str) -> str:
    """One line saying what a factor is."""
    operator, d = operator_of(name)
    return DESCRIPTIONS[operator].format(d=d)
