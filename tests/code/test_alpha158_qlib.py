"""Alpha158 against Qlib itself: the same real bars written in Qlib's binary format (``calendars/day.txt``,
``instruments/all.txt``, ``features/<symbol>/<field>.day.bin``: float32, the first value the calendar index of the
symbol's first bar, as Qlib's ``dump_bin`` writes them) and run through Qlib's expression engine with Qlib's own
Alpha158 definitions (``pyqlib``, installed without its dependencies by ``make venv``; it runs in a subprocess).

Qlib stores float32 and computes in float32, so the bars are rounded to float32 for both engines and the values
agree to float32 precision: within 1e-4 relative (correlations, a ratio of two float32 differences, within 5e-3).
Where our window is full, Qlib has a value too; Qlib also fills partial windows (``min_periods=1``), which ours
leave NaN on purpose (``alphaforge.features.alpha158``), so only our full windows are compared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphaforge import alpha158
from alphaforge.features import FeatureParams, compute_features

FIELDS = ("open", "high", "low", "close", "volume")


def write_qlib_binary(bars: pd.DataFrame, root: Path) -> list[str]:
    """The bars as a Qlib data folder (daily); the instruments written."""
    days = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    (root / "calendars" / "day.txt").write_text("\n".join(f"{d:%Y-%m-%d}" for d in days) + "\n")
    lines = []
    for symbol, group in bars.groupby("symbol"):
        first, last = days.get_loc(group["timestamp"].min()), days.get_loc(group["timestamp"].max())
        frame = group.set_index("timestamp").reindex(days[first:last + 1])
        lines.append(f"{symbol}\t{days[first]:%Y-%m-%d}\t{days[last]:%Y-%m-%d}")
        folder = root / "features" / symbol.lower()
        folder.mkdir(parents=True)
        for field in FIELDS:
            np.hstack([[first], frame[field].to_numpy()]).astype("<f4").tofile(folder / f"{field}.day.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")
    return sorted(bars["symbol"].unique())


@pytest.fixture(scope="module")
def both(bokeh_bars: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Ours and Qlib's Alpha158 on five real symbols, 2008-2013 (FB from 2012), one row per (symbol, day)."""
    bars = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2008-01-01", tz="UTC")].reset_index(drop=True)
    bars[list(FIELDS)] = bars[list(FIELDS)].astype(np.float32).astype(np.float64)  # what Qlib stores
    root = tmp_path_factory.mktemp("qlib")
    symbols = write_qlib_binary(bars, root / "data")
    subprocess.run([sys.executable, str(Path(__file__).with_name("qlib_alpha158.py")), str(root / "data"),
                    str(root / "qlib.parquet"), *symbols], check=True, capture_output=True, timeout=600)
    theirs = pd.read_parquet(root / "qlib.parquet").reset_index()
    theirs = theirs.rename(columns={"instrument": "symbol", "datetime": "timestamp"})
    theirs["timestamp"] = pd.to_datetime(theirs["timestamp"]).dt.tz_localize("UTC")
    theirs = theirs.rename(columns={c: f"{c}_qlib" for c in theirs.columns if c not in ("symbol", "timestamp")})
    ours = compute_features(bars, FeatureParams(set="alpha158", cross_sectional_ranks=(), regimes=False,
                                                calendar=False))
    merged = ours.merge(theirs, on=["symbol", "timestamp"], how="left", validate="one_to_one")
    assert len(merged) == len(ours) == len(bars)
    return merged


def test_qlib_computes_the_same_158_less_vwap(both: pd.DataFrame) -> None:
    names = [c[: -len("_qlib")] for c in both.columns if c.endswith("_qlib")]
    assert names == alpha158.all_names()  # Qlib's own list and order
    assert "VWAP0" not in both.columns and both["VWAP0_qlib"].isna().all()  # no vwap column: skipped (Qlib: NaN)


@pytest.mark.parametrize("operator", [*alpha158.KBAR, *alpha158.PRICE[:3], *alpha158.ROLLING])
def test_every_factor_equals_qlibs_own_expression_where_our_window_is_full(both: pd.DataFrame, operator: str) -> None:
    names = [operator] if operator in alpha158.KBAR or operator in alpha158.PRICE else [
        f"{operator}{d}" for d in alpha158.WINDOWS]
    tolerance = 5e-3 if operator in ("CORR", "CORD") else 1e-4
    for name in names:
        ours, theirs = both[name].to_numpy(), both[f"{name}_qlib"].to_numpy()
        full = np.isfinite(ours)
        assert full.sum() > 0.9 * len(ours), name
        assert np.isfinite(theirs[full]).all(), f"{name}: Qlib has no value where ours has one"
        error = np.abs(ours[full] - theirs[full]) / (np.abs(theirs[full]) + 1e-3)
        worst = np.flatnonzero(full)[error.argmax()]
        assert error.max() < tolerance, f"{name}: largest gap {error.max():.2e} at {both.loc[worst, 'symbol']} " \
            f"{both.loc[worst, 'timestamp']:%Y-%m-%d}: ours {ours[worst]!r}, Qlib's {theirs[worst]!r}"
