"""Significance tests for the promotion gate: autocorrelation-robust t-statistics and trial-count adjustment.

Overlapping labels (a 5-bar return every bar) and overlapping portfolio tranches make consecutive observations
dependent, so a plain ``mean / (std / sqrt(n))`` overstates significance. :func:`newey_west` uses the
Newey-West (1987) heteroskedasticity- and autocorrelation-consistent (HAC) standard error with Bartlett
weights; the default lag is the usual ``floor(4 (n / 100) ^ (2/9))`` and never below the dependence the caller
knows of (``min_lags``: the label horizon, say).

A decision that picks the best of many trials must pay for them: :func:`adjusted_p_value` applies the
Bonferroni bound (``p * n_trials``, at most 1), the conservative count López de Prado's "number of trials"
asks for when the trials' correlation is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["HACTest", "adjusted_p_value", "default_lags", "newey_west"]


@dataclass(frozen=True)
class HACTest:
    """Mean of a series with its Newey-West standard error; ``p_value`` is one-sided (H1: mean > 0)."""

    mean: float
    std_error: float
    t_stat: float
    p_value: float
    n: int
    lags: int

    def as_dict(self) -> dict[str, float | int | None]:
        def clean(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {"mean": clean(self.mean), "std_error": clean(self.std_error), "t_stat": clean(self.t_stat),
                "p_value": clean(self.p_value), "n": self.n, "lags": self.lags}


def default_lags(n: int) -> int:
    """The Newey-West rule of thumb ``floor(4 (n / 100) ^ (2/9))``."""
    return int(math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))


def newey_west(values: np.ndarray | list[float], *, min_lags: int = 0, lags: int | None = None) -> HACTest:
    """HAC t-test of ``mean(values) > 0`` over the finite values (in order).

    NaN everywhere for fewer than three values or no dispersion (a constant series has nothing to test).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    chosen = max(default_lags(n) if lags is None else int(lags), int(min_lags), 0)
    chosen = min(chosen, max(n - 1, 0))
    if n < 3:
        return HACTest(math.nan, math.nan, math.nan, math.nan, n, chosen)
    mean = float(x.mean())
    centred = x - mean
    variance = float(centred @ centred) / n
    for lag in range(1, chosen + 1):
        weight = 1.0 - lag / (chosen + 1.0)
        variance += 2.0 * weight * float(centred[lag:] @ centred[:-lag]) / n
    if not math.isfinite(variance) or variance <= 1e-30 * max(mean * mean, 1e-300):
        return HACTest(mean, math.nan, math.nan, math.nan, n, chosen)
    std_error = math.sqrt(variance / n)
    t_stat = mean / std_error
    p_value = float(_scipy_stats.norm.sf(t_stat))
    return HACTest(mean, std_error, t_stat, p_value, n, chosen)


def adjusted_p_value(p_value: float, n_trials: int) -> float:
    """Bonferroni: the chance that the best of ``n_trials`` tries looks this good by luck is at most ``p * n``."""
    if not math.isfinite(p_value):
        return math.nan
    return min(1.0, p_value * max(int(n_trials), 1))
