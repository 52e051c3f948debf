"""The follower's state: bars, pending predictions and matured figures per variant, and the feature shift."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.drift import DriftParams
from alphaforge.live_monitor.figures import _bar_figures, _nanmean, degradation_z
from alphaforge.live_monitor.outcomes import _CHUNK_ROWS, _OUTCOME_RETRY_SECONDS, OutcomeSink, _stamp
from alphaforge.monitor import MonitorParams
from alphaforge.schema import DataError

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    model_version: str
    features: dict[str, float]
    prediction: float
    hedge_done: bool = False


@dataclass
class _Variant:
    requests: int = 0
    matured_rows: int = 0
    unmatchable: int = 0  # predictions for a bar the bar log skipped: they can never mature
    matured: dict[int, list[tuple[str, float, float, float]]] = field(default_factory=dict)  # bar -> rows
    figures: dict[int, tuple[float, float, float, float, int]] = field(default_factory=dict)
    features: deque[dict[str, float]] = field(default_factory=deque)  # newest served feature rows (drift)
    alerting: bool = False


class LiveMonitor:
    """The follower's state: bars, pending predictions, matured figures per variant (no I/O but the sink)."""

    def __init__(self, params: MonitorParams, *, horizon: int, cost_rate: float, drift: DriftParams | None = None,
                 reference: pd.DataFrame | None = None, outcomes: OutcomeSink | None = None,
                 history_bars: int = 252) -> None:
        if horizon < 1:
            raise ValueError(f"LiveMonitor: horizon {horizon}; rule: >= 1 bar")
        self.params = params
        self.drift = drift or DriftParams()
        self.horizon = horizon
        self.cost_rate = cost_rate
        self.outcomes = outcomes
        self.history_bars = max(history_bars, params.recent_bars + params.min_earlier_bars, params.follow_window_bars)
        self.bar_index: dict[str, dict[int, int]] = {}
        self.prices: dict[str, list[float]] = {}
        self.last_bar: dict[str, int] = {}
        self.pending: dict[tuple[str, str, int], _Pending] = {}
        self.variants: dict[str, _Variant] = {}
        self.reference: dict[str, tuple[float, float]] | None = None
        self.reference_source = "first served rows"
        self._warm_up: list[dict[str, float]] = []
        if reference is not None:
            self.reference = {c: (float(reference[c].mean()), float(reference[c].std()))
                              for c in reference.columns if c not in ("timestamp", "symbol", "prediction")
                              and pd.api.types.is_numeric_dtype(reference[c])}
            self.reference_source = "reference data"
        self.hedge: dict[str, Any] = {"sent_rows": 0, "applied_steps": 0, "last": None, "error": None}
        self._undelivered: list[tuple[int, str, dict[str, float], float]] = []  # the sink failed on these
        self._retry_at = 0.0

    # ------------------------------------------------------------------------------------- input

    def add_bars(self, bars: Sequence[tuple[int, str, float]]) -> None:
        for bar_us, symbol, price in bars:
            index = self.bar_index.setdefault(symbol, {})
            if bar_us in index:
                continue
            if bar_us < self.last_bar.get(symbol, bar_us):
                raise DataError(f"bar log: {symbol} bar {_stamp(bar_us)} after {_stamp(self.last_bar[symbol])}; "
                                "rule: each symbol's bars in time order (as `alphaforge stream` logs them)")
            index[bar_us] = len(self.prices.setdefault(symbol, []))
            self.prices[symbol].append(price)
            self.last_bar[symbol] = bar_us

    def add_requests(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Request-log rows (see :meth:`RequestTail.poll`); the latest prediction of a (variant, symbol, bar) wins."""
        for variant, version, symbol, bar_us, features_json, prediction, _ in rows:
            state = self.variants.setdefault(variant, _Variant())
            state.requests += 1
            features = {k: (math.nan if v is None else float(v)) for k, v in json.loads(features_json).items()}
            state.features.append(features)
            while len(state.features) > self.params.drift_window_rows:
                state.features.popleft()
            if self.reference is None and variant == "champion":
                self._warm_up.append(features)
            if bar_us in state.matured and any(row[0] == symbol for row in state.matured[bar_us]):
                continue  # a repeated request for a bar already scored
            self.pending[(variant, symbol, int(bar_us))] = _Pending(
                str(version), features, math.nan if prediction is None else float(prediction))
        if self.reference is None and len(self._warm_up) >= self.params.drift_window_rows:
            # no reference data given: the champion's first drift_window_rows served rows are the reference
            frame = pd.DataFrame(self._warm_up[:self.params.drift_window_rows])
            self.reference = {c: (float(frame[c].mean()), float(frame[c].std())) for c in frame.columns}
            self._warm_up = []

    # ------------------------------------------------------------------------------------- maturing

    def mature(self) -> set[str]:
        """Score every pending prediction whose label is known, send the champion's one-bar outcomes; the variants
        whose figures changed."""
        touched: set[str] = set()
        hedge_rows: list[tuple[int, str, dict[str, float], float]] = []
        done = []
        for key, item in self.pending.items():
            variant, symbol, bar_us = key
            index = self.bar_index.get(symbol, {}).get(bar_us)
            prices = self.prices.get(symbol, [])
            if index is None:
                if prices and bar_us < self.last_bar[symbol]:
                    self.variants[variant].unmatchable += 1
                    done.append(key)
                continue
            if not item.hedge_done and index + 2 < len(prices):
                item.hedge_done = True
                if variant == "champion" and self.outcomes is not None:
                    one_bar = math.log(prices[index + 2] / prices[index + 1])
                    if math.isfinite(one_bar):
                        hedge_rows.append((bar_us, symbol, item.features, one_bar))
            if index + 1 + self.horizon < len(prices):
                label = math.log(prices[index + 1 + self.horizon] / prices[index + 1])
                side = float(np.sign(item.prediction - self.params.prediction_centre))
                net = side * math.expm1(label) - (2 * self.cost_rate if side != 0 else 0.0)
                state = self.variants[variant]
                state.matured.setdefault(bar_us, []).append((symbol, item.prediction, label, net))
                state.matured_rows += 1
                state.figures.pop(bar_us, None)
                touched.add(variant)
                done.append(key)
        for key in done:
            del self.pending[key]
        if self._undelivered and time.monotonic() >= self._retry_at:  # the sink failed before: again, in order
            hedge_rows, self._undelivered = self._undelivered + hedge_rows, []
        elif self._undelivered:
            self._undelivered += hedge_rows
            hedge_rows = []
        if hedge_rows:
            self._send_outcomes(hedge_rows)
        for variant in touched:
            self._trim(self.variants[variant])
        return touched

    def _send_outcomes(self, rows: list[tuple[int, str, dict[str, float], float]]) -> None:
        """Oldest bar first, in chunks of whole bars (a restart's replay can be long; the route caps a request)."""
        rows.sort(key=lambda row: row[0])
        chunks: list[list[tuple[int, str, dict[str, float], float]]] = [[]]
        for i, row in enumerate(rows):
            if len(chunks[-1]) >= _CHUNK_ROWS and row[0] != rows[i - 1][0]:
                chunks.append([])
            chunks[-1].append(row)
        for number, chunk in enumerate(chunks):
            try:
                answer = self.outcomes.send([r[0] for r in chunk], [r[1] for r in chunk],  # type: ignore[union-attr]
                                            [r[2] for r in chunk], np.array([r[3] for r in chunk]))
            except Exception as err:  # the follower keeps scoring; kept and retried, the failure in the figures
                self._undelivered = [row for rest in chunks[number:] for row in rest]
                self._retry_at = time.monotonic() + _OUTCOME_RETRY_SECONDS
                self.hedge["error"] = f"{type(err).__name__}: {err}"
                log.error("live monitor: %d outcomes not delivered to the online weights (retried in %g s): %s",
                          len(self._undelivered), _OUTCOME_RETRY_SECONDS, err)
                return
            self.hedge.update(sent_rows=self.hedge["sent_rows"] + len(chunk), error=None,
                              applied_steps=self.hedge["applied_steps"] + int(answer.get("applied_steps", 0)),
                              last={k: answer.get(k) for k in ("weights", "n_updates", "last_timestamp", "updated_at")})

    def _trim(self, state: _Variant) -> None:
        for bar_us in sorted(state.matured)[:-self.history_bars]:
            del state.matured[bar_us]
            state.figures.pop(bar_us, None)

    # ------------------------------------------------------------------------------------- figures

    def _per_bar(self, state: _Variant) -> tuple[list[int], np.ndarray]:
        bars = sorted(state.matured)
        for bar_us in bars:
            if bar_us not in state.figures:
                rows = state.matured[bar_us]
                state.figures[bar_us] = _bar_figures(
                    np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                    self.params.prediction_centre, self.drift.min_cross_section)
        return bars, np.array([state.figures[b] for b in bars], dtype=float).reshape(len(bars), 5)

    def _drift(self, state: _Variant) -> dict[str, Any]:
        if self.reference is None or not state.features:
            return {"reference": None, "rows": len(state.features), "max_shift": None, "shifted": []}
        frame = pd.DataFrame(list(state.features))
        shifts = {}
        for name, (mean, std) in self.reference.items():
            if name in frame.columns and std > 0 and frame[name].notna().any():
                shifts[name] = float((frame[name].mean() - mean) / std)
        shifted = sorted(n for n, s in shifts.items() if abs(s) > self.params.drift_shift_threshold)
        return {"reference": self.reference_source, "rows": len(frame), "shifted": shifted,
                "max_shift": max((abs(s) for s in shifts.values()), default=None),
                "shift": {n: round(s, 6) for n, s in shifts.items()}}

    def figures(self) -> dict[str, Any]:
        """Every variant's live figures, degradation test and feature shift."""
        out = {}
        for variant, state in sorted(self.variants.items()):
            bars, table = self._per_bar(state)
            window = table[-self.params.follow_window_bars:]
            degraded = degradation_z({"rank_ic": table[:, 1], "net_pnl": table[:, 3]},
                                     recent_bars=self.params.recent_bars,
                                     min_earlier_bars=self.params.min_earlier_bars,
                                     z_threshold=self.drift.performance_z, lags=self.horizon - 1)
            out[variant] = {
                "requests": state.requests, "pending": sum(1 for k in self.pending if k[0] == variant),
                "matured_rows": state.matured_rows, "unmatchable": state.unmatchable, "window_bars": len(window),
                "last_matured_bar": str(_stamp(bars[-1])) if bars else None,
                "ic": _nanmean(window[:, 0]), "rank_ic": _nanmean(window[:, 1]), "hit_rate": _nanmean(window[:, 2]),
                "net_pnl_per_bar": _nanmean(window[:, 3]),
                "net_pnl_sum": float(np.nansum(window[:, 3])) if len(window) else None,
                "degradation": degraded, "drift": self._drift(state)}
        return out
