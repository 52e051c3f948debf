"""Portfolios from signals, traded bar by bar at what could be traded, at a cost.

Everything runs on aligned (timestamp x symbol) matrices (:class:`Panel`). A strategy turns a signal matrix
into target weights; :func:`simulate` then trades towards them bar by bar:

* a name that cannot trade at its execution bar (see :mod:`alphaforge.backtest.market`) keeps yesterday's
  weight (a position is carried, never closed at a price that did not exist); a name whose future price is
  gone (delisted, end of data) is closed at its last execution price;
* a weight is capped at ``max_participation`` of the name's trailing dollar volume for a book of ``capital``;
* the weight held from bar t earns ``exec_return[t]``; the cost of reaching it is charged at t: commission plus
  half spread per unit traded, plus square-root impact.

Strategies (the same construction for every model and every baseline):

* ``long_short``: dollar-neutral, +0.5/k on the top and -0.5/k on the bottom ``quantile`` of the signal,
  held for ``holding`` bars in overlapping tranches (one tranche opens each bar; the book is their mean), so
  a signal for a 5-bar label is not churned daily.
* ``topk``: long only, Qlib's ``TopkDropoutStrategy``: hold ``topk`` names equally weighted, replace at most
  ``n_drop`` a bar (the worst held by the new ranking, by the best not held); judged by its excess return over
  the equal-weight tradeable universe (``equal_weight``).
* ``long_flat`` and ``long_short_band`` (one series per symbol): long (or short) when the signal, in units of
  its own expanding standard deviation, passes ``band``; the position changes only when it crosses the other
  side (a no-trade band).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "STRATEGIES",
    "Panel",
    "Simulation",
    "Strategy",
    "band_targets",
    "build_panel",
    "equal_weight_targets",
    "long_short_targets",
    "simulate",
    "topk_dropout_targets",
]

Strategy = Literal["long_short", "topk", "long_flat", "long_short_band"]
STRATEGIES: tuple[str, ...] = ("long_short", "topk", "long_flat", "long_short_band")


@dataclass(frozen=True)
class Panel:
    """Aligned (T x N) matrices of the out-of-sample rows and what their market allowed."""

    timestamps: pd.DatetimeIndex
    symbols: pd.Index
    fold: np.ndarray            # (T,)
    present: np.ndarray         # (T, N) bool: the row is in the out-of-sample frame
    exec_return: np.ndarray     # (T, N) NaN where no future execution price
    tradable: np.ndarray        # (T, N) bool
    stale: np.ndarray           # (T, N) bool: the exit bar did not trade
    cost_rate: np.ndarray       # (T, N) commission + half spread per unit traded
    commission_rate: float
    impact_scale: np.ndarray    # (T, N)
    weight_cap: np.ndarray      # (T, N) inf where no volume is known
    liquidity_rank: np.ndarray  # (T, N) cross-sectional pct rank of dollar volume (NaN unknown)

    def matrix(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """``column`` of a (timestamp, symbol) frame as a (T, N) matrix aligned with the panel (NaN missing)."""
        pivot = frame.pivot_table(index="timestamp", columns="symbol", values=column, aggfunc="first", dropna=False)
        return pivot.reindex(index=self.timestamps, columns=self.symbols).to_numpy(dtype=float)


def build_panel(keys: pd.DataFrame, market: pd.DataFrame, *, cost_bps: float, max_participation: float,
                capital: float) -> Panel:
    """The panel of ``keys`` (timestamp, symbol, fold: the out-of-sample rows) with ``market``'s columns."""
    rows = keys[["timestamp", "symbol", "fold"]].merge(market, on=["timestamp", "symbol"], how="left",
                                                      validate="one_to_one")
    timestamps = pd.DatetimeIndex(rows["timestamp"].unique()).sort_values()
    symbols = pd.Index(sorted(rows["symbol"].unique()))
    t_index = timestamps.get_indexer(rows["timestamp"])
    n_index = symbols.get_indexer(rows["symbol"])
    shape = (len(timestamps), len(symbols))

    def matrix(column: str, fill: float) -> np.ndarray:
        out = np.full(shape, fill, dtype=float)
        out[t_index, n_index] = rows[column].to_numpy(dtype=float)
        return out

    present = np.zeros(shape, dtype=bool)
    present[t_index, n_index] = True
    tradable = np.zeros(shape, dtype=bool)
    tradable[t_index, n_index] = rows["tradable"].fillna(False).to_numpy(dtype=bool)
    stale = np.zeros(shape, dtype=bool)
    stale[t_index, n_index] = rows["stale"].fillna(False).to_numpy(dtype=bool)
    dollar_volume = matrix("dollar_volume", np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        cap = np.where(np.isfinite(dollar_volume), max_participation * dollar_volume / capital, np.inf)
    liquidity_rank = pd.DataFrame(dollar_volume).rank(axis=1, pct=True).to_numpy(dtype=float)
    fold = rows.groupby("timestamp")["fold"].first().reindex(timestamps).to_numpy()
    return Panel(timestamps=timestamps, symbols=symbols, fold=fold, present=present,
                 exec_return=matrix("exec_return", np.nan), tradable=tradable, stale=stale,
                 cost_rate=np.nan_to_num(matrix("cost_rate", cost_bps / 1e4), nan=cost_bps / 1e4),
                 commission_rate=cost_bps / 1e4, impact_scale=np.nan_to_num(matrix("impact_scale", 0.0)),
                 weight_cap=cap, liquidity_rank=liquidity_rank)


def _eligible(panel: Panel, signal: np.ndarray) -> np.ndarray:
    return panel.present & panel.tradable & np.isfinite(signal) & np.isfinite(panel.exec_return)


def long_short_targets(panel: Panel, signal: np.ndarray, *, quantile: float, min_cross_section: int,
                       holding: int) -> np.ndarray:
    """Mean of the last ``holding`` tranches, each +0.5/k top and -0.5/k bottom k = max(1, floor(q n))."""
    eligible = _eligible(panel, signal)
    masked = np.where(eligible, signal, np.nan)
    ranks = pd.DataFrame(masked).rank(axis=1, method="first").to_numpy()
    n = eligible.sum(axis=1, keepdims=True).astype(float)
    k = np.maximum(1.0, np.floor(quantile * n + 1e-9))
    with np.errstate(invalid="ignore"):
        spread = (np.where(eligible, signal, -np.inf).max(axis=1, keepdims=True)
                  - np.where(eligible, signal, np.inf).min(axis=1, keepdims=True))
    usable = (n >= min_cross_section) & (2 * k <= n) & (spread > 0)
    tranche = np.where(ranks > n - k, 0.5 / k, np.where(ranks <= k, -0.5 / k, 0.0))
    tranche = np.where(eligible & usable, tranche, 0.0)
    if holding <= 1:
        return tranche
    cumulative = np.cumsum(tranche, axis=0)
    lagged = np.vstack([np.zeros((holding, tranche.shape[1])), cumulative[:-holding]])[: len(tranche)]
    return (cumulative - lagged) / holding


def equal_weight_targets(panel: Panel) -> np.ndarray:
    """Equal weight on every name of the universe at t that has a future price (long only, gross 1)."""
    universe = panel.present & np.isfinite(panel.exec_return)
    count = universe.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(universe & (count > 0), 1.0 / np.maximum(count, 1), 0.0)


def topk_dropout_targets(panel: Panel, signal: np.ndarray, *, topk: int, n_drop: int) -> np.ndarray:
    """Qlib's TopkDropoutStrategy: hold ``topk`` names at 1/topk, swap at most ``n_drop`` a bar.

    Only names that can trade are bought or sold; a held name that cannot be sold stays held (and counts
    towards ``topk``); a held name without a signal or a future price is sold first when it can be.
    """
    T, N = signal.shape
    eligible = _eligible(panel, signal)
    targets = np.zeros((T, N))
    held: list[int] = []
    for t in range(T):
        score = signal[t]
        can_trade = panel.tradable[t] & panel.present[t]
        alive = np.isfinite(panel.exec_return[t])
        held = [i for i in held if alive[i] and not (can_trade[i] and not np.isfinite(score[i]))]
        candidates = sorted((i for i in np.flatnonzero(eligible[t]) if i not in held), key=lambda i: -score[i])
        today = candidates[: max(n_drop + topk - len(held), 0)]
        ranked = sorted([i for i in held if np.isfinite(score[i])] + today, key=lambda i: -score[i])
        tail = set(ranked[-n_drop:]) if n_drop > 0 else set()
        sell = {i for i in held if i in tail and can_trade[i]}
        buy = today[: max(len(sell) + topk - len(held), 0)]
        held = [i for i in held if i not in sell] + buy
        if held:
            targets[t, held] = 1.0 / topk
    return targets


def band_targets(panel: Panel, signal: np.ndarray, *, band: float, long_only: bool) -> np.ndarray:
    """Per symbol: +1 (or -1) once the signal / its expanding std passes +band (-band), kept inside the band.

    Each symbol gets ``1 / N`` of capital (N symbols in the panel). A constant signal (no dispersion) trades on
    its sign alone. ``long_only``: the short side is flat.
    """
    T, N = signal.shape
    finite = np.isfinite(signal) & panel.present
    values = np.where(finite, signal, 0.0)
    count = np.cumsum(finite, axis=0)
    mean = np.cumsum(values, axis=0) / np.maximum(count, 1)
    second = np.cumsum(values**2, axis=0) / np.maximum(count, 1)
    std = np.sqrt(np.maximum(second - mean**2, 0.0) * count / np.maximum(count - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1e-300), values / std, np.sign(values) * np.inf)
    z = np.where(finite, z, np.nan)
    position = np.zeros(N)
    targets = np.zeros((T, N))
    low = 0.0 if long_only else -1.0
    for t in range(T):
        up = z[t] > band
        down = z[t] < -band
        position = np.where(up, 1.0, np.where(down, low, position))
        position = np.where(np.isnan(z[t]), 0.0, position)
        targets[t] = position / N
    return targets


@dataclass(frozen=True)
class Simulation:
    """Per-bar results (``returns``) and the per (bar, symbol) gross P&L (``pnl``) of one strategy."""

    returns: pd.DataFrame
    pnl: np.ndarray
    weights: np.ndarray


def simulate(panel: Panel, targets: np.ndarray) -> Simulation:
    """Trade towards ``targets`` bar by bar (carry what cannot trade, cap by participation, pay costs)."""
    T, N = targets.shape
    capped = np.clip(targets, -panel.weight_cap, panel.weight_cap)
    returns = np.nan_to_num(panel.exec_return)
    alive = np.isfinite(panel.exec_return)
    weights = np.zeros((T, N))
    previous = np.zeros(N)
    commission = np.zeros(T)
    spread = np.zeros(T)
    impact = np.zeros(T)
    turnover = np.zeros(T)
    for t in range(T):
        current = np.where(panel.tradable[t], capped[t], previous)
        current = np.where(alive[t], current, 0.0)
        trade = np.abs(current - previous)
        turnover[t] = trade.sum()
        commission[t] = panel.commission_rate * turnover[t]
        spread[t] = float(trade @ (panel.cost_rate[t] - panel.commission_rate))
        impact[t] = float((panel.impact_scale[t] * np.sqrt(trade)) @ trade)
        weights[t] = current
        previous = current
    pnl = weights * returns
    gross = pnl.sum(axis=1)
    cost = commission + spread + impact
    frame = pd.DataFrame({
        "timestamp": panel.timestamps,
        "fold": panel.fold,
        "gross_return": gross,
        "commission": commission,
        "spread_cost": spread,
        "impact_cost": impact,
        "cost": cost,
        "net_return": gross - cost,
        "turnover": turnover,
        "gross_exposure": np.abs(weights).sum(axis=1),
        "net_exposure": weights.sum(axis=1),
    })
    return Simulation(returns=frame, pnl=pnl, weights=weights)
