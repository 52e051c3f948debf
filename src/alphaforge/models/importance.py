"""Permutation importance for every model family, scored by rank IC, and a bar chart.

Built-in importances (split gain, impurity, coefficients) differ between families and are
measured on the *training* rows; permutation importance is the same yardstick for all of them
and is measured *out of sample*: shuffle one feature across the rows of the out-of-fold test
slice, predict again, and see how much the metric drops (Breiman 2001; Fisher et al. 2019).
A feature the model ignores, or one it overfitted to, scores about zero; a negative score means
the model did better with the feature shuffled.

Only the masked rows are shuffled; rows outside the mask keep their values, so a sequence model
still sees the true history before the test slice. The shuffle is across all masked rows (all
timestamps and symbols), so it breaks both the cross-sectional and the time-series information
a feature carries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from alphaforge.models.base import KEY_COLUMNS, Forecaster
from alphaforge.models.tabular import row_mask

log = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
MIN_CROSS_SECTION = 3


def per_timestamp_rank_ic(prediction: np.ndarray, target: np.ndarray, timestamps: np.ndarray) -> pd.Series:
    """Spearman correlation of prediction and target among the rows of each timestamp (ties averaged).

    Only timestamps with at least 3 rows where both are finite count; a timestamp where either
    side is constant gives NaN. Indexed by timestamp, in time order. Vectorised: one ``lexsort``
    per side and a few ``bincount`` sums, no loop over timestamps.
    """
    p, y, t = _aligned(prediction, target, timestamps)
    codes, uniques = pd.factorize(t, sort=True)
    sizes = np.bincount(codes, minlength=len(uniques))
    kept = sizes[codes] >= MIN_CROSS_SECTION
    if not kept.any():
        return pd.Series(dtype=np.float64, name="rank_ic")
    codes, p, y = codes[kept], p[kept], y[kept]
    n = sizes[codes].astype(np.float64)
    centre = (n + 1.0) / 2.0  # the mean rank of a group of n rows, ties or not
    dp = grouped_average_ranks(codes, p) - centre
    dy = grouped_average_ranks(codes, y) - centre
    groups = len(uniques)
    covariance = np.bincount(codes, dp * dy, minlength=groups)
    variance_p = np.bincount(codes, dp * dp, minlength=groups)
    variance_y = np.bincount(codes, dy * dy, minlength=groups)
    present = np.bincount(codes, minlength=groups) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = covariance / np.sqrt(variance_p * variance_y)
    ic[(variance_p <= 0) | (variance_y <= 0)] = np.nan
    return pd.Series(ic[present], index=pd.Index(uniques[present], name="timestamp"), name="rank_ic")


def grouped_average_ranks(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` within each group of ``codes``, ties given their average rank.

    The same numbers as ``groupby(codes).rank(method="average")``, from one ``lexsort`` and a few
    cumulative sums (several times faster on a few thousand rows, which matters when permutation
    importance scores ~100 shuffles).
    """
    order = np.lexsort((values, codes))
    sorted_values, sorted_codes = values[order], codes[order]
    n = len(order)
    position = np.arange(n)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = sorted_codes[1:] != sorted_codes[:-1]
    new_run = new_group.copy()
    new_run[1:] |= sorted_values[1:] != sorted_values[:-1]
    rank_in_group = position - np.maximum.accumulate(np.where(new_group, position, 0)) + 1.0
    run = np.cumsum(new_run) - 1
    average = np.bincount(run, rank_in_group) / np.bincount(run)
    ranks = np.empty(n)
    ranks[order] = average[run]
    return ranks


def rank_ic(prediction: np.ndarray, target: np.ndarray, timestamps: np.ndarray) -> float:
    """Mean cross-sectional rank IC when most rows sit in timestamps of 3+ symbols, else pooled Spearman.

    "Most" means at least half of the rows with a finite prediction and target (the same rule as
    the training report); a single-symbol series always gets the pooled Spearman correlation.
    NaN when fewer than 3 such rows exist.
    """
    p, y, t = _aligned(prediction, target, timestamps)
    if len(p) < 3:
        return float("nan")
    codes, _ = pd.factorize(t)
    sizes = np.bincount(codes)
    if (sizes[codes] >= MIN_CROSS_SECTION).sum() >= 0.5 * len(p):
        per_timestamp = per_timestamp_rank_ic(p, y, t).dropna()
        return float(per_timestamp.mean()) if len(per_timestamp) else float("nan")
    ranked_p = pd.Series(p).rank().to_numpy()
    ranked_y = pd.Series(y).rank().to_numpy()
    if ranked_p.std() == 0 or ranked_y.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranked_p, ranked_y)[0, 1])


def _aligned(
    prediction: np.ndarray, target: np.ndarray, timestamps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three as flat arrays of equal length, restricted to rows where prediction and target are finite."""
    p = np.asarray(prediction, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    t = np.asarray(timestamps).reshape(-1)
    if not (len(p) == len(y) == len(t)):
        raise ValueError(f"prediction, target and timestamps differ in length: {len(p)}, {len(y)}, {len(t)}")
    known = np.isfinite(p) & np.isfinite(y)
    return p[known], y[known], t[known]


def permutation_importance(
    forecaster: Forecaster,
    frame: pd.DataFrame,
    target: pd.Series | np.ndarray,
    *,
    predict_mask: np.ndarray,
    metric: Metric = rank_ic,
    n_repeats: int = 3,
    seed: int = 0,
    features: list[str] | None = None,
) -> pd.DataFrame:
    """How much ``metric`` drops when each feature is shuffled across the ``predict_mask`` rows.

    ``metric(prediction, target, timestamps) -> float``, higher is better (default: :func:`rank_ic`);
    ``target`` is aligned with ``frame``. Each feature (default: the forecaster's ``feature_names_``)
    is shuffled ``n_repeats`` times with a generator seeded by ``seed``. Returns one row per feature,
    ``feature``, ``importance_mean``, ``importance_std`` (population std over repeats), sorted by
    ``importance_mean`` descending; ``table.attrs["baseline"]`` holds the unshuffled score.

    The metric is handed the timestamps as integer codes in time order (same grouping, cheaper).
    Cost: ``1 + n_features * n_repeats`` predictions of the masked rows; for a row-wise (tabular)
    forecaster only those rows are copied, otherwise the whole frame is (sequence models need the
    history before the masked rows).
    """
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    rows = row_mask(predict_mask, len(frame), "predict_mask")
    if not rows.any():
        raise ValueError("predict_mask selects no rows to measure importance on")
    if len(target) != len(frame):
        raise ValueError(f"target has {len(target)} rows, frame has {len(frame)}")
    names = list(features) if features is not None else list(forecaster.feature_names_)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the feature column(s) {missing}")
    y = np.asarray(target, dtype=np.float64)[rows]
    # Integer codes in time order stand in for the timestamps: same grouping, far cheaper to group by.
    timestamps = pd.factorize(frame["timestamp"].to_numpy()[rows], sort=True)[0]
    if getattr(forecaster, "row_wise", False):
        # A row-wise model needs nothing but the rows it predicts: work on those alone.
        work = frame.loc[rows, list(dict.fromkeys([*KEY_COLUMNS, *forecaster.feature_names_, *names]))].copy()
        work_rows = np.ones(len(work), dtype=bool)
    else:
        work = frame.copy()
        work_rows = rows
    positions = np.flatnonzero(work_rows)
    baseline = float(metric(forecaster.predict(work, predict_mask=work_rows), y, timestamps))
    if not np.isfinite(baseline):
        raise ValueError(
            f"the metric is not finite ({baseline}) on the unshuffled predict_mask rows; nothing to compare against"
        )
    rng = np.random.default_rng(seed)
    scores = np.empty((len(names), n_repeats))
    for i, name in enumerate(names):
        original = work[name].to_numpy(copy=True)
        shuffled = original.copy()
        for repeat in range(n_repeats):
            shuffled[positions] = original[positions[rng.permutation(len(positions))]]
            work[name] = shuffled
            scores[i, repeat] = metric(forecaster.predict(work, predict_mask=work_rows), y, timestamps)
        work[name] = original
    drops = baseline - scores
    table = pd.DataFrame(
        {"feature": names, "importance_mean": drops.mean(axis=1), "importance_std": drops.std(axis=1)}
    ).sort_values("importance_mean", ascending=False, kind="stable").reset_index(drop=True)
    table.attrs["baseline"] = baseline
    return table


def plot_importance(table: pd.DataFrame | pd.Series, path: str | Path, title: str, *, top: int = 25) -> Path:
    """A horizontal bar chart (PNG) of the ``top`` features, largest at the top; error bars when the table
    has ``importance_std``. Accepts a :func:`permutation_importance` table or a ``feature_importance()``
    series. Draws on a private Agg canvas, so the global matplotlib backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(table, pd.Series):
        values = table.astype(np.float64)
        errors = None
    else:
        needed = [c for c in ("feature", "importance_mean") if c not in table.columns]
        if needed:
            raise KeyError(f"importance table lacks column(s) {needed}")
        values = table.set_index("feature")["importance_mean"].astype(np.float64)
        errors = table.set_index("feature")["importance_std"] if "importance_std" in table.columns else None
    shown = values.sort_values(ascending=False, kind="stable").head(top)[::-1]
    figure = Figure(figsize=(7.0, max(3.0, 0.28 * len(shown) + 1.0)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(
        [str(name) for name in shown.index], shown.to_numpy(), color="#3b75af",
        xerr=None if errors is None else errors.reindex(shown.index).to_numpy(),
    )
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_title(title)
    if isinstance(table, pd.Series) and table.name:
        axes.set_xlabel(str(table.name))
    elif not isinstance(table, pd.Series):
        axes.set_xlabel("drop in metric when shuffled")
    figure.tight_layout()
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output
