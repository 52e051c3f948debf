"""Overfitting, measured: the deflated Sharpe ratio and the probability of backtest overfitting.

A tuned model's out-of-sample Sharpe ratio is the best of many tries, and the best of many tries looks good
even when every try is noise. Two figures put a number on that:

* **Deflated Sharpe ratio (DSR)**, Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio". The
  probabilistic Sharpe ratio (PSR, Bailey & Lopez de Prado 2012) is the probability that the true Sharpe ratio
  exceeds a benchmark, given the sample's length, skewness and kurtosis. The DSR is the PSR against the Sharpe
  ratio that the best of ``n_trials`` skill-less trials would reach by luck (:func:`expected_max_sharpe`). A DSR
  near 1 says the edge survives the search; near 0.5 or below, it is what the search alone would produce.
* **Probability of backtest overfitting (PBO)** by combinatorially symmetric cross-validation (CSCV), Bailey,
  Borwein, Lopez de Prado & Zhu (2015), "The Probability of Backtest Overfitting". The trials' out-of-sample
  returns (T periods x N trials) are cut into S blocks; for each way of picking S/2 blocks as "in sample", the
  trial with the best in-sample Sharpe is located in the ranking of the other half. PBO is the share of splits
  where that winner lands at or below the median out of sample: ~0.5 when the winner is picked by luck, ~0 when
  picking it on one half reliably picks a good trial on the other.

Conventions: every Sharpe ratio here is per period (mean over standard deviation with ``ddof=1``, no
annualisation) unless a key says ``_annualised``; skewness and kurtosis are the sample (biased) moments, the
kurtosis non-excess (3 for a normal). Figures that the data cannot support are ``None`` with a ``reason``; bad
arguments (an odd partition count, a negative variance) raise.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from alphaforge import metrics

__all__ = [
    "EULER_GAMMA",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "overfitting_summary",
    "pbo_cscv",
    "probabilistic_sharpe_ratio",
    "sharpe_ratio",
    "trial_return_matrix",
]

EULER_GAMMA = 0.5772156649015329
# CSCV's block Sharpe ratios come from summed moments (more rounding than a direct std), and a flat trial must still
# rank (+-inf or 0, never NaN): a looser floor than alphaforge.metrics', used only there and in pbo_cscv.
_RELATIVE_DISPERSION_FLOOR = 1e-9
_ABSOLUTE_DISPERSION_FLOOR = 1e-15
# C(20, 10) = 184,756 splits is already far more than the estimate needs; more only costs memory.
MAX_PARTITIONS = 20
MIN_PSR_PERIODS = 3


# ------------------------------------------------------------------------------------------------ helpers


def _finite_returns(returns: pd.Series | np.ndarray | Sequence[float], caller: str) -> np.ndarray:
    """The finite values of a 1-d return series; NaN is dropped (no trade), infinity raises."""
    array = np.asarray(returns, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{caller}: returns have shape {array.shape}; rule: one-dimensional")
    if np.isinf(array).any():
        position = int(np.flatnonzero(np.isinf(array))[0])
        raise ValueError(f"{caller}: infinite return at position {position}; rule: finite or NaN")
    return array[np.isfinite(array)]


def _is_flat(std: float, mean: float, scale: float = 0.0) -> bool:
    floor = max(_RELATIVE_DISPERSION_FLOOR * max(abs(mean), scale), _ABSOLUTE_DISPERSION_FLOOR)
    return not np.isfinite(std) or std <= floor


def sharpe_ratio(returns: pd.Series | np.ndarray | Sequence[float]) -> float:
    """Per-period Sharpe ratio (mean / std, ``ddof=1``) of the finite returns; NaN below two or when constant."""
    return metrics.sharpe_ratio(_finite_returns(returns, "sharpe_ratio"))


def _check_count(value: int, name: str, minimum: int, caller: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{caller}: {name}={value!r}; rule: an integer >= {minimum}")
    return int(value)


def _check_variance(value: float, caller: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{caller}: trial_sharpes_variance={value!r}; rule: finite and >= 0 (per-period units)")
    return number


# ---------------------------------------------------------------------------------- PSR, E[max SR], DSR


def probabilistic_sharpe_ratio(returns: pd.Series | np.ndarray | Sequence[float],
                               benchmark_sr: float = 0.0) -> float:
    """P(true Sharpe > ``benchmark_sr``) from one sample of per-period returns (Bailey & Lopez de Prado 2012).

    ``Phi((SR - SR*) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))`` with ``SR`` the per-period
    Sharpe ratio (``ddof=1``), ``skew``/``kurt`` the sample skewness and non-excess kurtosis and ``T`` the number
    of finite returns. Fat tails and negative skew widen the Sharpe ratio's error, so they lower the PSR.
    NaN for fewer than 3 finite returns, constant returns, or a degenerate denominator.
    """
    finite = _finite_returns(returns, "probabilistic_sharpe_ratio")
    if finite.size < MIN_PSR_PERIODS:
        return math.nan
    sr = sharpe_ratio(finite)
    if not math.isfinite(sr):
        return math.nan
    skewness = float(stats.skew(finite, bias=True))
    kurtosis = float(stats.kurtosis(finite, fisher=False, bias=True))
    variance_term = 1.0 - skewness * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not variance_term > 0:
        return math.nan
    z = (sr - float(benchmark_sr)) * math.sqrt(finite.size - 1) / math.sqrt(variance_term)
    return float(stats.norm.cdf(z))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum of ``n_trials`` independent Sharpe estimates of zero-skill strategies.

    ``sqrt(V) * ((1 - gamma) * Z^-1(1 - 1/N) + gamma * Z^-1(1 - 1/(N e)))`` (the extreme-value approximation of
    Bailey & Lopez de Prado 2014), ``gamma`` the Euler-Mascheroni constant, ``V`` the variance of the trials'
    Sharpe estimates in the same units as the result (per period in, per period out). One trial: 0, nothing was
    selected. Grows with ``n_trials``: the more you try, the higher the bar.
    """
    n_trials = _check_count(n_trials, "n_trials", 1, "expected_max_sharpe")
    sr_variance = _check_variance(sr_variance, "expected_max_sharpe")
    if n_trials == 1:
        return 0.0
    quantiles = (1.0 - EULER_GAMMA) * stats.norm.ppf(1.0 - 1.0 / n_trials) \
        + EULER_GAMMA * stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(sr_variance) * quantiles)


def deflated_sharpe_ratio(returns: pd.Series | np.ndarray | Sequence[float], n_trials: int,
                          trial_sharpes_variance: float, *,
                          periods_per_year: float | None = None) -> dict[str, Any]:
    """The deflated Sharpe ratio of the selected strategy's out-of-sample per-period returns.

    ``n_trials``: how many configurations were tried to find it (every Optuna trial, pruned and failed ones
    included: they were looked at). ``trial_sharpes_variance``: the variance across trials of their per-period
    Sharpe ratios (from annualised Sharpes, divide their variance by ``periods_per_year``). ``periods_per_year``
    only fills the ``_annualised`` keys.

    Returns ``sr``, ``sr_annualised``, ``expected_max_sr``, ``expected_max_sr_annualised``, ``psr`` (vs 0),
    ``dsr`` (PSR vs ``expected_max_sr``: the probability that the true Sharpe beats the best of ``n_trials``
    lucky trials), ``skewness``, ``kurtosis``, ``n_periods``, ``n_trials``, ``trial_sharpes_variance`` and
    ``reason`` (None, or why ``dsr`` is None). JSON-able: NaN never appears, None does.
    """
    caller = "deflated_sharpe_ratio"
    n_trials = _check_count(n_trials, "n_trials", 1, caller)
    trial_sharpes_variance = _check_variance(trial_sharpes_variance, caller)
    if periods_per_year is not None and not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"{caller}: periods_per_year={periods_per_year!r}; rule: finite and > 0, or None")
    finite = _finite_returns(returns, caller)
    threshold = expected_max_sharpe(n_trials, trial_sharpes_variance)
    annualise = math.sqrt(periods_per_year) if periods_per_year else None
    result: dict[str, Any] = {
        "sr": None, "sr_annualised": None, "expected_max_sr": threshold,
        "expected_max_sr_annualised": threshold * annualise if annualise else None,
        "psr": None, "dsr": None, "skewness": None, "kurtosis": None, "n_periods": int(finite.size),
        "n_trials": n_trials, "trial_sharpes_variance": trial_sharpes_variance, "reason": None,
    }
    if finite.size < MIN_PSR_PERIODS:
        result["reason"] = f"{finite.size} finite return(s); the DSR needs at least {MIN_PSR_PERIODS}"
        return result
    sr = sharpe_ratio(finite)
    if not math.isfinite(sr):
        result["reason"] = "the returns are constant: the Sharpe ratio is undefined"
        return result
    result.update(sr=sr, sr_annualised=sr * annualise if annualise else None,
                  skewness=float(stats.skew(finite, bias=True)),
                  kurtosis=float(stats.kurtosis(finite, fisher=False, bias=True)))
    psr = probabilistic_sharpe_ratio(finite, 0.0)
    dsr = probabilistic_sharpe_ratio(finite, threshold)
    if not (math.isfinite(psr) and math.isfinite(dsr)):
        result["reason"] = "degenerate return distribution: 1 - skew*SR + (kurt-1)/4*SR^2 is not positive"
        return result
    result.update(psr=psr, dsr=dsr)
    return result


# --------------------------------------------------------------------------------------------- CSCV / PBO


def trial_return_matrix(trial_returns: Mapping[Hashable, pd.Series | pd.DataFrame], *,
                        return_column: str = "net_return") -> pd.DataFrame:
    """The T x N matrix of per-trial out-of-sample period returns, on the periods every trial has.

    ``trial_returns`` maps a trial id to its returns: a Series indexed by timestamp, or a frame as
    :func:`alphaforge.evaluate.strategy_returns` returns it (``timestamp`` and ``return_column`` columns).
    Rows are the timestamps present with a finite return in every trial (sorted); columns are the trial ids in
    the mapping's order. ``attrs["dropped_periods"]`` counts the timestamps some trial lacked. Raises on a
    duplicated timestamp, a non-numeric or infinite return, or no common period.
    """
    caller = "trial_return_matrix"
    if not trial_returns:
        raise ValueError(f"{caller}: no trials; rule: at least one trial's returns")
    columns: dict[Hashable, pd.Series] = {}
    for trial, returns in trial_returns.items():
        if isinstance(returns, pd.DataFrame):
            missing = [c for c in ("timestamp", return_column) if c not in returns.columns]
            if missing:
                raise ValueError(f"{caller}: trial {trial!r} frame lacks column(s) {missing}")
            series = returns.set_index("timestamp")[return_column]
        elif isinstance(returns, pd.Series):
            series = returns
        else:
            raise ValueError(f"{caller}: trial {trial!r} is a {type(returns).__name__}; rule: Series or DataFrame")
        if not pd.api.types.is_numeric_dtype(series):
            raise ValueError(f"{caller}: trial {trial!r} returns have dtype {series.dtype}; rule: numeric")
        values = series.to_numpy(dtype=float)
        if np.isinf(values).any():
            where = series.index[np.isinf(values)][0]
            raise ValueError(f"{caller}: trial {trial!r} has an infinite return at {where}; rule: finite or NaN")
        duplicated = series.index.duplicated()
        if duplicated.any():
            raise ValueError(f"{caller}: trial {trial!r} has timestamp {series.index[duplicated][0]} twice; "
                             "rule: one return per period")
        columns[trial] = series.astype(float)
    frame = pd.concat(columns, axis=1, join="outer", sort=True)
    complete = frame.notna().all(axis=1)
    matrix = frame.loc[complete]
    if matrix.empty:
        raise ValueError(f"{caller}: the {len(columns)} trials share no period with a finite return")
    matrix = matrix.copy()
    matrix.columns = list(columns)
    matrix.attrs["dropped_periods"] = int((~complete).sum())
    return matrix


def _block_sharpes(moments: tuple[np.ndarray, np.ndarray, np.ndarray], pick: np.ndarray, centre: np.ndarray,
                   scale: np.ndarray) -> np.ndarray:
    """Per-period Sharpe of every trial on the union of the picked blocks, one row per split (C x N).

    ``moments`` are per-block counts (S,), sums and sums of squares (S x N) of the centred returns; a constant
    trial scores 0 when its mean is 0, +-inf otherwise (never NaN, so it can be ranked).
    """
    counts, sums, squares = moments
    n = (pick @ counts)[:, None]
    total = pick @ sums
    total_sq = pick @ squares
    centred_mean = total / n
    variance = np.maximum(total_sq - total * centred_mean, 0.0) / (n - 1)
    std = np.sqrt(variance)
    mean = centred_mean + centre
    floor = np.maximum(_RELATIVE_DISPERSION_FLOOR * np.maximum(np.abs(mean), scale), _ABSOLUTE_DISPERSION_FLOOR)
    flat = std <= floor
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(flat, np.sign(mean) * np.inf, mean / np.where(flat, 1.0, std))
    sharpe[flat & (np.abs(mean) <= floor)] = 0.0
    return sharpe


def _no_pbo(reason: str, **extra: Any) -> dict[str, Any]:
    return {"pbo": None, "logits": [], "n_combinations": 0, "prob_oos_loss": None, "degradation_slope": None,
            "reason": reason, **extra}


def pbo_cscv(trial_returns: pd.DataFrame, n_partitions: int = 16) -> dict[str, Any]:
    """Probability of backtest overfitting by CSCV over a T periods x N trials matrix of returns.

    Rows are cut into ``n_partitions`` (S, even) contiguous blocks of near-equal size. For each of the
    C(S, S/2) ways to pick half the blocks as in-sample (IS), the trial with the best IS Sharpe is ranked among
    all trials on the other half (OOS): ``w = rank / (N + 1)``, ``logit = log(w / (1 - w))``. PBO is the share
    of splits with ``logit <= 0`` (the IS winner at or below the OOS median). Rows holding a NaN are dropped
    first (``n_periods_dropped``); ties rank by their average.

    Returns ``pbo``, ``logits`` (one per split), ``n_combinations``, ``n_partitions``, ``n_trials``,
    ``n_periods``, ``n_periods_dropped``, ``prob_oos_loss`` (share of splits where the IS winner's OOS Sharpe is
    negative), ``degradation_slope`` (least-squares slope of the winner's OOS on its IS Sharpe across splits;
    <= 0 is the overfitting signature) and ``reason`` (None, or why ``pbo`` is None: fewer than 2 trials,
    fewer than 2 rows per block, or no trial with varying returns).
    """
    caller = "pbo_cscv"
    if not isinstance(trial_returns, pd.DataFrame):
        raise ValueError(f"{caller}: expected a DataFrame (periods x trials), got {type(trial_returns).__name__}")
    n_partitions = _check_count(n_partitions, "n_partitions", 2, caller)
    if n_partitions % 2 or n_partitions > MAX_PARTITIONS:
        raise ValueError(f"{caller}: n_partitions={n_partitions}; rule: even and at most {MAX_PARTITIONS}")
    non_numeric = [c for c in trial_returns.columns if not pd.api.types.is_numeric_dtype(trial_returns[c])]
    if non_numeric:
        raise ValueError(f"{caller}: trial column(s) {non_numeric} are not numeric")
    values = trial_returns.to_numpy(dtype=float)
    if np.isinf(values).any():
        row, column = np.argwhere(np.isinf(values))[0]
        raise ValueError(f"{caller}: infinite return for trial {trial_returns.columns[column]!r} at "
                         f"{trial_returns.index[row]}; rule: finite or NaN")
    usable = np.isfinite(values).all(axis=1)
    values = values[usable]
    n_periods, n_trials = values.shape
    shape = {"n_partitions": n_partitions, "n_trials": int(n_trials), "n_periods": int(n_periods),
             "n_periods_dropped": int((~usable).sum())}
    if n_trials < 2:
        return _no_pbo(f"{n_trials} trial(s); PBO compares trials, so it needs at least 2", **shape)
    if n_periods < 2 * n_partitions:
        return _no_pbo(f"{n_periods} complete period(s) for {n_partitions} blocks; rule: at least 2 per block",
                       **shape)
    centre = values.mean(axis=0)
    scale = np.abs(values).max(axis=0)
    if all(_is_flat(float(values[:, j].std(ddof=1)), float(centre[j]), float(scale[j])) for j in range(n_trials)):
        return _no_pbo("no trial's returns vary: there is no Sharpe ratio to rank", **shape)

    blocks = np.array_split(np.arange(n_periods), n_partitions)
    centred = values - centre
    counts = np.array([len(b) for b in blocks], dtype=float)
    sums = np.stack([centred[b].sum(axis=0) for b in blocks])
    squares = np.stack([(centred[b] ** 2).sum(axis=0) for b in blocks])
    half = n_partitions // 2
    in_sample = np.zeros((math.comb(n_partitions, half), n_partitions))
    for row, chosen in enumerate(combinations(range(n_partitions), half)):
        in_sample[row, list(chosen)] = 1.0
    moments = (counts, sums, squares)
    is_sharpe = _block_sharpes(moments, in_sample, centre, scale)
    oos_sharpe = _block_sharpes(moments, 1.0 - in_sample, centre, scale)

    winner = np.argmax(is_sharpe, axis=1)  # first best on a tie: deterministic
    oos_rank = stats.rankdata(oos_sharpe, method="average", axis=1)[np.arange(len(winner)), winner]
    relative = oos_rank / (n_trials + 1.0)
    logits = np.log(relative / (1.0 - relative))
    winner_is = is_sharpe[np.arange(len(winner)), winner]
    winner_oos = oos_sharpe[np.arange(len(winner)), winner]
    finite_pair = np.isfinite(winner_is) & np.isfinite(winner_oos)
    slope = None
    if finite_pair.sum() >= 2 and np.ptp(winner_is[finite_pair]) > 0:
        slope = float(np.polyfit(winner_is[finite_pair], winner_oos[finite_pair], 1)[0])
    return {
        "pbo": float(np.mean(logits <= 0.0)),
        "logits": [float(v) for v in logits],
        "n_combinations": int(len(logits)),
        "prob_oos_loss": float(np.mean(winner_oos < 0.0)),
        "degradation_slope": slope,
        "reason": None,
        **shape,
    }


# ---------------------------------------------------------------------------------------------- summary


def overfitting_summary(candidate_returns: pd.Series | np.ndarray | Sequence[float],
                        trial_returns: pd.DataFrame | None, *, periods_per_year: float,
                        n_trials: int | None = None, trial_sharpes_variance: float | None = None,
                        n_partitions: int = 16) -> dict[str, Any]:
    """Both figures for one candidate, in the shape :func:`alphaforge.report.model_card` reads.

    ``candidate_returns``: the candidate's out-of-sample per-period net returns. ``trial_returns``: the T x N
    matrix from :func:`trial_return_matrix` (one column per tuning trial with out-of-sample returns), or None when
    there is none. ``n_trials``: trials tried, default the matrix's column count (pass the study's total when
    pruned or failed trials have no returns: they were tried too). ``trial_sharpes_variance`` (per period):
    default the variance (``ddof=1``) of the matrix columns' per-period Sharpe ratios.

    Returns ``{"dsr": <deflated_sharpe_ratio>, "pbo": <pbo_cscv>}``; either holds ``None`` and a ``reason`` when
    its inputs are missing.
    """
    caller = "overfitting_summary"
    n_columns = 0 if trial_returns is None else int(trial_returns.shape[1])
    tried = n_columns if n_trials is None else _check_count(n_trials, "n_trials", 1, caller)
    if n_trials is not None and tried < n_columns:
        raise ValueError(f"{caller}: n_trials={n_trials} but trial_returns has {n_columns} trial columns; "
                         "rule: n_trials counts every trial tried, so at least the columns")
    variance = trial_sharpes_variance
    variance_reason = None
    if variance is None and trial_returns is not None:
        sharpes = np.array([sharpe_ratio(trial_returns[c]) for c in trial_returns.columns], dtype=float)
        sharpes = sharpes[np.isfinite(sharpes)]
        if sharpes.size >= 2:
            variance = float(sharpes.var(ddof=1))
        else:
            variance_reason = f"{sharpes.size} trial(s) with a defined Sharpe ratio; their variance needs 2"
    if tried < 1:
        dsr: dict[str, Any] = {"dsr": None, "n_trials": 0, "reason": "no tuning trials were recorded"}
    elif variance is None:
        dsr = {"dsr": None, "n_trials": tried,
               "reason": variance_reason or "no per-trial returns and no trial_sharpes_variance given"}
    else:
        dsr = deflated_sharpe_ratio(candidate_returns, tried, variance, periods_per_year=periods_per_year)
    pbo = _no_pbo("no per-trial out-of-sample returns") if trial_returns is None \
        else pbo_cscv(trial_returns, n_partitions=n_partitions)
    return {"dsr": dsr, "pbo": pbo}
