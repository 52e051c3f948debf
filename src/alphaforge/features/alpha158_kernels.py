"""Alpha158's numba kernels: every factor of one symbol's bars in one compiled routine (:func:`_symbol`).

Both engines call that one routine: :func:`batch` on each symbol's whole run of bars (in parallel over the
symbols), :func:`latest` on each symbol's last :data:`HISTORY` bars for its last bar only (the incremental
engine's ring buffers). The routine walks the bars in blocks of :data:`BLOCK`. Per block it takes running
(prefix) sums, over the block's bars and the 60 before them, of every series the formulas sum (closes, their
squares and index-weighted values, log volumes, gains and losses, ...), each relative to its value at the
block's first bar: a nearby level, so second moments of prices far from 0 do not cancel, and no running sum
spans more than ``BLOCK + 60`` bars, so nothing drifts with a series' length. A window's sum is the difference
of two prefix sums: O(1) per bar and window. The incremental engine's call is a block of one bar, whose sums are
relative to that bar itself, so batch and incremental agree to rounding (at most ~6e-11 on the benchmark's
500 x 2,500 random bars, in R^2 of 5-bar windows; the tests hold them to 1e-9). Everything else is exact, so the
same in both:

* quantiles read each window's closes kept sorted (sorted by insertion, then moved one bar at a time), and the
  rank of the close is its place there (the first among equal closes; ties averaged);
* extremes and their first occurrence, counted from the window's oldest bar, come from one pass back over the
  last 60 bars, read off at each window length;
* flat windows (every value equal), up and down bars and missing values are counted (running counts of the bars
  whose value differs from the previous one, ...);
* ``|close / previous close - 1| x volume`` (WVMA) is heavy-tailed, one bar's value dwarfing a window's spread,
  so its mean and spread are summed over the window itself, in two passes.

Factor codes are positions in :func:`alphaforge.alpha158.all_names` (K-bar 0-8, prices 9-12, then each operator
of :data:`OPERATORS` over each of :data:`WINDOWS`); the kernels take the wanted codes and their output rows. Each
block's factors go to a small tile, then row by row to the output; the batch output is written with non-temporal
stores (it is 1.6 GB for 500 x 2,500 bars and 162 columns, written once). This module imports numba, so
:mod:`alphaforge.alpha158` loads it on first use only.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, set_parallel_chunksize, types
from numba.core import cgutils
from numba.extending import intrinsic

WINDOWS: tuple[int, ...] = (5, 10, 20, 30, 60)
HISTORY: int = 61  # the longest window of one-bar changes: 60 changes span 61 bars
BLOCK: int = 32  # bars whose window sums come from one set of prefix sums
#: The rolling operators in alpha158.ROLLING's order (a test holds the two equal).
OPERATORS: tuple[str, ...] = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV", "IMAX", "IMIN", "IMXD",
    "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)
N_SHAPE = 13  # K-bar (9) and price (4) factors come first
N_CODES = N_SHAPE + len(OPERATORS) * len(WINDOWS)
(ROC, MA, STD, BETA, RSQR, RESI, MAX, MIN, QTLU, QTLD, RANK, RSV, IMAX, IMIN, IMXD, CORR, CORD, CNTP, CNTN, CNTD,
 SUMP, SUMN, SUMD, VMA, VSTD, WVMA, VSUMP, VSUMN, VSUMD) = range(len(OPERATORS))
_LONGEST = WINDOWS[-1]
_SYMBOLS_PER_TASK = 4  # symbols a thread of the batch kernel takes at a time
_EPS = 1e-12
# The summed series (rows of the prefix sums). x: close, y: log(volume + 1), r: close / previous close,
# q: log(volume / previous volume + 1) (NaN where the previous volume is 0: counted as missing, summed as 0),
# v: volume; each relative to its value at the block's first bar. *_MOVES count the bars whose value differs from
# the previous bar's (a window of d values is flat when none of its last d - 1 does); w is |r - 1| x volume.
(_X, _XX, _IX, _Y, _YY, _XY, _GAIN, _LOSS, _UP, _DOWN, _V_GAIN, _V_LOSS, _R, _RR, _Q, _QQ, _RQ, _MISSING, _V, _VV,
 _X_MOVES, _Y_MOVES, _W_MOVES, _R_MOVES, _Q_MOVES, _V_MOVES) = range(26)
_N_SUMS = 26
# per window: 1/d, 1/(d - 1), (d - 1)/2 and 1/sxx (sxx: the summed squared deviations of the bar index 0..d-1)
_INV_D = np.array([1.0 / d for d in WINDOWS])
_INV_D1 = np.array([1.0 / (d - 1) for d in WINDOWS])
_HALF_D1 = np.array([(d - 1) / 2.0 for d in WINDOWS])
_INV_SXX = np.array([12.0 / (d * (d * d - 1.0)) for d in WINDOWS])
# the operators on one-bar changes (and ROC): their window of d changes spans d + 1 bars
_ON_CHANGES = np.array([op in (ROC, CORD, CNTP, CNTN, CNTD, SUMP, SUMN, SUMD, WVMA, VSUMP, VSUMN, VSUMD)
                        for op in range(len(OPERATORS))])


_X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def _stream(typingctx, array, row, column, value):
    """``array[row, column] = value`` as a non-temporal store on x86 (a plain store elsewhere): the batch output is
    written once and not read here again, so its cache lines need not be fetched first (half the memory traffic
    of a normal store). Call :func:`_store_fence` before the output is read."""
    def codegen(context, builder, signature, args):
        kind = signature.args[0]
        ary = context.make_array(kind)(context, builder, args[0])
        pointer = cgutils.get_item_pointer2(context, builder, data=ary.data,
                                            shape=cgutils.unpack_tuple(builder, ary.shape),
                                            strides=cgutils.unpack_tuple(builder, ary.strides), layout=kind.layout,
                                            inds=[args[1], args[2]], wraparound=False)
        store = builder.store(args[3], pointer)
        if _X86:
            store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(array, row, column, array.dtype), codegen


@intrinsic
def _store_fence(typingctx):
    """Order the non-temporal stores before what follows (``sfence`` on x86; nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse.sfence")
            builder.call(fence, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _roll(tile, operator, window, j, value):
    tile[j, N_SHAPE + operator * len(WINDOWS) + window] = value


@njit(cache=True, error_model="numpy", nogil=True)
def _nan_windows(tile, window, j, changes_only):
    """NaN for the factors of window ``window`` (only those on one-bar changes: ``changes_only``)."""
    for operator in range(len(OPERATORS)):
        if _ON_CHANGES[operator] or not changes_only:
            _roll(tile, operator, window, j, np.nan)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _one(condition):
    return 1.0 if condition else 0.0


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _anchor(x, j, n):
    """The level a block's sums of the series of changes ``x`` (``n`` bars) are taken from: its value at bar ``j``,
    or at bar 1 in the first block (a symbol's first bar has no change), or 0 where there is none."""
    j = max(j, 1)
    return x[j] if j < n and np.isfinite(x[j]) else 0.0


@njit(cache=True, error_model="numpy", nogil=True)
def _prefix(c, v, log_volume, relative, log_ratio, weighted, start, anchor_bar, stop, sums):
    """Prefix sums over bars ``start`` .. ``stop - 1`` into ``sums[1:]`` (``sums[i]``: the bars before
    ``start + i``), relative to the values at ``anchor_bar``; a symbol's first bar has no change (its change
    terms are 0: no full window of changes reads it)."""
    ac, ay, av = c[anchor_bar], log_volume[anchor_bar], v[anchor_bar]
    n = c.shape[0]
    ar, aq = _anchor(relative, anchor_bar, n), _anchor(log_ratio, anchor_bar, n)
    terms = np.zeros(_N_SUMS)  # a symbol's first bar: no change terms
    sums[0, :] = 0.0
    for j in range(start, stop):
        x, y, z = c[j] - ac, log_volume[j] - ay, v[j] - av
        terms[_X], terms[_XX], terms[_IX] = x, x * x, (j - anchor_bar) * x
        terms[_Y], terms[_YY], terms[_XY] = y, y * y, x * y
        terms[_V], terms[_VV] = z, z * z
        if j > 0:
            step, volume_step = c[j] - c[j - 1], v[j] - v[j - 1]
            terms[_GAIN], terms[_LOSS] = max(step, 0.0), max(-step, 0.0)
            terms[_UP], terms[_DOWN] = _one(step > 0.0), _one(step < 0.0)
            terms[_V_GAIN], terms[_V_LOSS] = max(volume_step, 0.0), max(-volume_step, 0.0)
            r = relative[j] - ar
            terms[_R], terms[_RR] = r, r * r
            q = log_ratio[j] - aq
            missing = np.isnan(q)
            terms[_MISSING] = _one(missing)
            terms[_Q], terms[_QQ], terms[_RQ] = (0.0, 0.0, 0.0) if missing else (q, q * q, r * q)
            terms[_X_MOVES] = _one(c[j] != c[j - 1])
            terms[_Y_MOVES] = _one(log_volume[j] != log_volume[j - 1])
            terms[_V_MOVES] = _one(v[j] != v[j - 1])
            terms[_W_MOVES] = _one(weighted[j] != weighted[j - 1])
            terms[_R_MOVES] = _one(relative[j] != relative[j - 1])
            terms[_Q_MOVES] = _one(log_ratio[j] != log_ratio[j - 1])
        i = j - start + 1
        for k in range(_N_SUMS):
            sums[i, k] = sums[i - 1, k] + terms[k]


@njit(cache=True, error_model="numpy", nogil=True)
def _sort_windows(c, t, ordered):
    """Each full window's closes ending at bar ``t``, sorted, into ``ordered[window, :d]`` (one insertion sort
    back over the last 60 closes, read off at each window length)."""
    longest = len(WINDOWS) - 1
    for k in range(min(t + 1, _LONGEST)):
        value, p = c[t - k], k
        while p > 0 and ordered[longest, p - 1] > value:
            ordered[longest, p] = ordered[longest, p - 1]
            p -= 1
        ordered[longest, p] = value
        for window in range(longest):
            if k + 1 == WINDOWS[window]:
                for i in range(k + 1):
                    ordered[window, i] = ordered[longest, i]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _move_sorted(ordered, window, d, old, new):
    """Replace ``old`` by ``new`` in the sorted ``ordered[window, :d]``, keeping it sorted; the place of ``new`` (the
    first among equal values)."""
    p = 0
    while ordered[window, p] != old:
        p += 1
    while p + 1 < d and ordered[window, p + 1] < new:
        ordered[window, p] = ordered[window, p + 1]
        p += 1
    while p > 0 and ordered[window, p - 1] >= new:
        ordered[window, p] = ordered[window, p - 1]
        p -= 1
    ordered[window, p] = new
    return p


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _place(ordered, window, d, value):
    """How many of the sorted ``ordered[window, :d]`` are below ``value``."""
    p = 0
    while p < d and ordered[window, p] < value:
        p += 1
    return p


@njit(cache=True, error_model="numpy", nogil=True)
def _extremes(h, lo, t, high, high_back, low, low_back):
    """Per window ending at bar ``t``: the highest high and lowest low, and how many bars back their first
    occurrence (counted from the window's oldest bar) is: one pass back over the last 60 bars, read off at each
    window length (with selects, so it runs without data-dependent branches)."""
    highest, lowest = -np.inf, np.inf
    k_high = k_low = 0
    k = 0
    for window in range(len(WINDOWS)):
        if WINDOWS[window] > t + 1:
            break
        while k < WINDOWS[window]:
            x, y = h[t - k], lo[t - k]
            higher, lower = x >= highest, y <= lowest  # ties: the older bar
            highest, k_high = (x, k) if higher else (highest, k_high)
            lowest, k_low = (y, k) if lower else (lowest, k_low)
            k += 1
        high[window], high_back[window], low[window], low_back[window] = highest, k_high, lowest, k_low


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _quantile(ordered, window, d, q):
    """The ``q`` quantile of the sorted ``ordered[window, :d]``, interpolated linearly (pandas)."""
    position = q * (d - 1)
    below = int(np.floor(position))
    above = min(below + 1, d - 1)
    return ordered[window, below] + (ordered[window, above] - ordered[window, below]) * (position - below)


@njit(cache=True, error_model="numpy", nogil=True)
def _workspace(n):
    """The scratch arrays of :func:`_symbol` for up to ``n`` bars (allocated once per call of the kernels' loops,
    not once per symbol's last bar)."""
    windows = len(WINDOWS)
    return (np.empty(n), np.empty(n), np.empty((BLOCK + _LONGEST + 1, _N_SUMS)), np.empty((BLOCK, N_CODES)),
            np.empty((windows, _LONGEST)), np.zeros(windows, dtype=np.int64), np.empty(windows),
            np.zeros(windows, dtype=np.int64), np.empty(windows), np.zeros(windows, dtype=np.int64))


@njit(cache=True, error_model="numpy", nogil=True)
def _symbol(o, h, lo, c, v, log_volume, log_ratio, first, codes, rows, out, column0, sorted_windows, stream, work):
    """The factors ``codes`` of one symbol's bars ``first``.. (``c`` its closes, all finite; ``o``/``h``/``lo``/``v``
    the other columns, or the closes where a column is absent and no wanted factor reads it; ``log_volume`` and
    ``log_ratio`` as :func:`alphaforge.alpha158.volume_logs` gives them) into
    ``out[rows[i], column0 + t - first]``. ``sorted_windows``: whether QTLU/QTLD/RANK are wanted. Each block's
    factors go to a small tile first, then row by row to ``out`` (contiguous runs, not one value per row)."""
    n = c.shape[0]
    begin = max(first - _LONGEST, 0)  # the oldest bar a window of bars first.. reads
    # close / previous close, and |that - 1| x volume (no value on the first bar); the prefix sums; the block's
    # factors; each window's closes sorted and how many are below the current one; the windows' extremes
    relative, weighted, sums, tile, ordered, below, high, high_back, low, low_back = work
    relative[0] = weighted[0] = np.nan
    for j in range(max(begin, 1), n):
        relative[j] = c[j] / c[j - 1]
        weighted[j] = abs(relative[j] - 1.0) * v[j]
    start = anchor = 0
    for t in range(first, n):
        j = (t - first) % BLOCK
        if j == 0:  # a new block: prefix sums from 60 bars before it
            anchor, start = t, max(t - _LONGEST, 0)
            _prefix(c, v, log_volume, relative, log_ratio, weighted, start, anchor, min(t + BLOCK, n), sums)
        ct, ot, ht, lt = c[t], o[t], h[t], lo[t]
        top, bottom = max(ot, ct), min(ot, ct)
        per_open, per_span, per_close, per_volume = 1.0 / ot, 1.0 / (ht - lt + _EPS), 1.0 / ct, 1.0 / (v[t] + _EPS)
        for code, value in enumerate(((ct - ot) * per_open, (ht - lt) * per_open, (ct - ot) * per_span,
                                      (ht - top) * per_open, (ht - top) * per_span, (bottom - lt) * per_open,
                                      (bottom - lt) * per_span, (2.0 * ct - ht - lt) * per_open,
                                      (2.0 * ct - ht - lt) * per_span, ot * per_close, ht * per_close,
                                      lt * per_close)):
            tile[j, code] = value
        if sorted_windows:
            rebuild = t == first or t + 1 in WINDOWS
            if rebuild:  # (re)build every full window
                _sort_windows(c, t, ordered)
            for window in range(len(WINDOWS)):  # where the close sits in each window (the first among equals)
                d = WINDOWS[window]
                if rebuild and t + 1 >= d:
                    below[window] = _place(ordered, window, d, ct)
                elif t >= d:  # move the window by one bar (it was full at the previous bar too)
                    below[window] = _move_sorted(ordered, window, d, c[t - d], ct)
        hi = t - start + 1
        _extremes(h, lo, t, high, high_back, low, low_back)
        for window in range(len(WINDOWS)):
            d = WINDOWS[window]
            if d > t + 1:
                _nan_windows(tile, window, j, False)
                continue
            _window(tile, window, d, j, t, c, v, per_close, per_volume, sums, hi, anchor, high[window],
                    high_back[window], low[window], low_back[window], ordered, below[window], sorted_windows)
            if d > t:  # d one-bar changes need d + 1 bars
                _nan_windows(tile, window, j, True)
            else:
                _changes(tile, window, d, j, t, c, per_close, weighted, sums, hi)
        if j == BLOCK - 1 or t == n - 1:  # the block's tile into the output rows
            column = column0 + t - first - j
            for i in range(codes.shape[0]):
                code, row = codes[i], rows[i]
                for k in range(j + 1):
                    if stream:
                        _stream(out, row, column + k, tile[k, code])
                    else:
                        out[row, column + k] = tile[k, code]
    if stream:
        _store_fence()


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _sum(sums, row, hi, d):
    return sums[hi, row] - sums[hi - d, row]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _flat(sums, row, hi, d):
    """Whether the window's d values are all equal: none of its last d - 1 differs from the one before."""
    return sums[hi, row] - sums[hi - d + 1, row] == 0.0


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _window(tile, window, d, j, t, c, v, per_close, per_volume, sums, hi, anchor, highest, k_highest, lowest,
            k_lowest, ordered, less, sorted_windows):
    """The factors of the full window of the ``d`` bars ending at ``t`` (``k_*``: bars back to the extremes)."""
    per_d = _INV_D[window]
    ct = c[t]
    s1, s2 = _sum(sums, _X, hi, d), _sum(sums, _XX, hi, d)
    flat = _flat(sums, _X_MOVES, hi, d)
    mean = s1 * per_d  # relative to the anchor's close
    _roll(tile, MA, window, j, (c[anchor] + mean) * per_close)
    spread = max(s2 - s1 * mean, 0.0)
    _roll(tile, STD, window, j, (0.0 if flat else np.sqrt(spread * _INV_D1[window])) * per_close)
    oldest = t - d + 1 - anchor
    covariance = _sum(sums, _IX, hi, d) - (oldest + _HALF_D1[window]) * s1  # with the bar index in the window
    slope = covariance * _INV_SXX[window]
    _roll(tile, BETA, window, j, slope * per_close)
    _roll(tile, RSQR, window, j, np.nan if flat else covariance * slope / spread)
    _roll(tile, RESI, window, j, (ct - c[anchor] - mean - slope * _HALF_D1[window]) * per_close)
    value = np.nan
    if not flat and not _flat(sums, _Y_MOVES, hi, d):
        sy = _sum(sums, _Y, hi, d)
        spread_y = max(_sum(sums, _YY, hi, d) - sy * sy * per_d, 0.0)
        value = (_sum(sums, _XY, hi, d) - s1 * sy * per_d) / np.sqrt(spread * spread_y)
    _roll(tile, CORR, window, j, value)
    _roll(tile, MAX, window, j, highest * per_close)
    _roll(tile, MIN, window, j, lowest * per_close)
    _roll(tile, RSV, window, j, (ct - lowest) / (highest - lowest + _EPS))
    _roll(tile, IMAX, window, j, (d - k_highest) * per_d)
    _roll(tile, IMIN, window, j, (d - k_lowest) * per_d)
    _roll(tile, IMXD, window, j, (k_lowest - k_highest) * per_d)
    if sorted_windows:
        _roll(tile, QTLU, window, j, _quantile(ordered, window, d, 0.8) * per_close)
        _roll(tile, QTLD, window, j, _quantile(ordered, window, d, 0.2) * per_close)
        equal = 1
        while less + equal < d and ordered[window, less + equal] == ct:
            equal += 1
        _roll(tile, RANK, window, j, (less + (equal + 1) * 0.5) * per_d)
    s1, s2 = _sum(sums, _V, hi, d), _sum(sums, _VV, hi, d)
    _roll(tile, VMA, window, j, (v[anchor] + s1 * per_d) * per_volume)
    std = 0.0 if _flat(sums, _V_MOVES, hi, d) else np.sqrt(max(s2 - s1 * s1 * per_d, 0.0) * _INV_D1[window])
    _roll(tile, VSTD, window, j, std * per_volume)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _changes(tile, window, d, j, t, c, per_close, weighted, sums, hi):
    """The factors of the last ``d`` one-bar changes (and ROC) at bar ``t``."""
    per_d = _INV_D[window]
    _roll(tile, ROC, window, j, c[t - d] * per_close)
    up, down = _sum(sums, _UP, hi, d), _sum(sums, _DOWN, hi, d)
    _roll(tile, CNTP, window, j, up * per_d)
    _roll(tile, CNTN, window, j, down * per_d)
    _roll(tile, CNTD, window, j, up * per_d - down * per_d)
    for operator, gain_row in ((SUMP, _GAIN), (VSUMP, _V_GAIN)):
        gains, losses = _sum(sums, gain_row, hi, d), _sum(sums, gain_row + 1, hi, d)
        per_total = 1.0 / (gains + losses + _EPS)
        _roll(tile, operator, window, j, gains * per_total)
        _roll(tile, operator + 1, window, j, losses * per_total)
        _roll(tile, operator + 2, window, j, (gains - losses) * per_total)
    # |change| x volume is heavy-tailed (one bar's can dwarf a window's spread), so its moments come from the
    # window's own values, in two passes, not from differences of running sums
    mean = 0.0
    for k in range(d):
        mean += weighted[t - k]
    mean *= per_d
    spread = 0.0
    for k in range(d):
        deviation = weighted[t - k] - mean
        spread += deviation * deviation
    std = 0.0 if _flat(sums, _W_MOVES, hi, d) else np.sqrt(spread * _INV_D1[window])
    _roll(tile, WVMA, window, j, std / (mean + _EPS))
    value = np.nan
    if _sum(sums, _MISSING, hi, d) == 0.0 and not _flat(sums, _R_MOVES, hi, d) and not _flat(sums, _Q_MOVES, hi, d):
        r1, q1 = _sum(sums, _R, hi, d), _sum(sums, _Q, hi, d)
        spread = (max(_sum(sums, _RR, hi, d) - r1 * r1 * per_d, 0.0)
                  * max(_sum(sums, _QQ, hi, d) - q1 * q1 * per_d, 0.0))
        value = (_sum(sums, _RQ, hi, d) - r1 * q1 * per_d) / np.sqrt(spread)
    _roll(tile, CORD, window, j, value)


@njit(cache=True, error_model="numpy", parallel=True)
def batch(o, h, lo, c, v, log_volume, log_ratio, starts, lengths, codes, rows, out, sorted_windows):
    """Every bar of every symbol: symbol ``s`` is rows ``starts[s]``.. (``lengths[s]`` bars) of the long columns;
    factor ``codes[i]`` goes to ``out[rows[i], bar]``."""
    for s in prange(starts.shape[0]):
        a, b = starts[s], starts[s] + lengths[s]
        _symbol(o[a:b], h[a:b], lo[a:b], c[a:b], v[a:b], log_volume[a:b], log_ratio[a:b], 0, codes, rows, out, a,
                sorted_windows, True, _workspace(b - a))


def run_batch(*args: object) -> None:
    """:func:`batch`, its threads taking :data:`_SYMBOLS_PER_TASK` symbols at a time (not an equal share each, so
    a thread slowed by other work on its core does not hold the call up)."""
    previous = set_parallel_chunksize(_SYMBOLS_PER_TASK)
    try:
        batch(*args)
    finally:
        set_parallel_chunksize(previous)


@njit(cache=True, error_model="numpy", nogil=True)
def latest(o, h, lo, c, v, log_volume, log_ratio, members, codes, rows, out, sorted_windows):
    """The last bar of each symbol ``i`` of ``members``, from column ``members[i]`` of the (:data:`HISTORY`,
    capacity) time-major ring buffers (NaN before a symbol's first bar): factor ``codes[k]`` into
    ``out[rows[k], i]``."""
    bars, work = np.empty((7, HISTORY)), _workspace(HISTORY)
    for i in range(members.shape[0]):
        m = members[i]
        known = 0  # the bars since the last gap
        while known < HISTORY and not np.isnan(c[HISTORY - 1 - known, m]):
            known += 1
        for j in range(known):
            row = HISTORY - known + j
            bars[0, j], bars[1, j], bars[2, j], bars[3, j] = o[row, m], h[row, m], lo[row, m], c[row, m]
            bars[4, j], bars[5, j], bars[6, j] = v[row, m], log_volume[row, m], log_ratio[row, m]
        _symbol(bars[0, :known], bars[1, :known], bars[2, :known], bars[3, :known], bars[4, :known],
                bars[5, :known], bars[6, :known], known - 1, codes, rows, out, i, sorted_windows, False, work)
