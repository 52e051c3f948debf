"""Alpha158 (``features.set: alpha158``): every factor against a slow, obvious pandas definition of Qlib's
formula, the flat-window rules, the skipped families, and cross-sectional processing.

The batch==incremental and causality checks for alpha158 live beside the basic set's, in
``tests/integration/test_featurestore.py`` and ``tests/code/test_features.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import percentileofscore

from alphaforge import alpha158
from alphaforge.features import FeatureParams, compute_features, feature_columns, process_rows
from alphaforge.schema import DataError

ALPHA158 = FeatureParams(set="alpha158", cross_sectional_ranks=(), regimes=False, calendar=False)
TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


@pytest.fixture(scope="module")
def ohlcv(bokeh_bars: pd.DataFrame) -> pd.DataFrame:
    """Real daily OHLCV 2011-2013 (ragged: FB from 2012)."""
    sliced = bokeh_bars[bokeh_bars["timestamp"] >= pd.Timestamp("2011-06-01", tz="UTC")]
    return sliced.reset_index(drop=True)


@pytest.fixture(scope="module")
def batch(ohlcv: pd.DataFrame) -> pd.DataFrame:
    return compute_features(ohlcv, ALPHA158)


# --------------------------------------------------------------------------------------------
# The slow reference: Qlib's formulas, one symbol at a time, with pandas rolling windows
# --------------------------------------------------------------------------------------------


def _apply(series: pd.Series, d: int, function) -> pd.Series:
    return series.rolling(d).apply(function, raw=True)


def _slope(y: np.ndarray) -> float:
    return float(np.polyfit(np.arange(len(y)), y, 1)[0])


def _rsquare(y: np.ndarray) -> float:
    return float(np.corrcoef(np.arange(len(y)), y)[0, 1] ** 2)


def _residual(y: np.ndarray) -> float:
    x = np.arange(len(y))
    return float(y[-1] - np.polyval(np.polyfit(x, y, 1), x[-1]))


def _reference(bars: pd.DataFrame, operator: str, d: int) -> pd.Series:
    """The factor ``operator`` over ``d`` bars of one symbol's bars, straight from Qlib's expression (NaN until
    the window is full; one-bar changes are NaN on the first bar, so windows of changes need d + 1 bars)."""
    o, h, lo, c, v = (bars[k] for k in ("open", "high", "low", "close", "volume"))
    change = c.diff()
    volume_change = v.diff()
    eps = 1e-12
    kbar = {
        "KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / (h - lo + eps),
        "KUP": (h - np.maximum(o, c)) / o, "KUP2": (h - np.maximum(o, c)) / (h - lo + eps),
        "KLOW": (np.minimum(o, c) - lo) / o, "KLOW2": (np.minimum(o, c) - lo) / (h - lo + eps),
        "KSFT": (2 * c - h - lo) / o, "KSFT2": (2 * c - h - lo) / (h - lo + eps),
        "OPEN0": o / c, "HIGH0": h / c, "LOW0": lo / c,
    }
    if operator in kbar:
        return kbar[operator]
    gains, losses = change.clip(lower=0).rolling(d).sum(), (-change).clip(lower=0).rolling(d).sum()
    total = change.abs().rolling(d).sum() + eps
    volume_gains = volume_change.clip(lower=0).rolling(d).sum()
    volume_losses = (-volume_change).clip(lower=0).rolling(d).sum()
    volume_total = volume_change.abs().rolling(d).sum() + eps
    weighted = (c / c.shift(1) - 1).abs() * v
    up = (change > 0).astype(float).where(change.notna()).rolling(d).mean()
    down = (change < 0).astype(float).where(change.notna()).rolling(d).mean()
    definitions = {
        "ROC": lambda: c.shift(d) / c,
        "MA": lambda: c.rolling(d).mean() / c,
        "STD": lambda: c.rolling(d).std() / c,
        "BETA": lambda: _apply(c, d, _slope) / c,
        "RSQR": lambda: _apply(c, d, _rsquare),
        "RESI": lambda: _apply(c, d, _residual) / c,
        "MAX": lambda: h.rolling(d).max() / c,
        "MIN": lambda: lo.rolling(d).min() / c,
        "QTLU": lambda: c.rolling(d).quantile(0.8) / c,
        "QTLD": lambda: c.rolling(d).quantile(0.2) / c,
        "RANK": lambda: _apply(c, d, lambda y: percentileofscore(y, y[-1]) / 100.0),
        "RSV": lambda: (c - lo.rolling(d).min()) / (h.rolling(d).max() - lo.rolling(d).min() + eps),
        "IMAX": lambda: (_apply(h, d, np.argmax) + 1) / d,
        "IMIN": lambda: (_apply(lo, d, np.argmin) + 1) / d,
        "IMXD": lambda: (_apply(h, d, np.argmax) - _apply(lo, d, np.argmin)) / d,
        "CORR": lambda: c.rolling(d).corr(np.log(v + 1)),
        "CORD": lambda: (c / c.shift(1)).rolling(d).corr(np.log(v / v.shift(1) + 1)),
        "CNTP": lambda: up,
        "CNTN": lambda: down,
        "CNTD": lambda: up - down,
        "SUMP": lambda: gains / total,
        "SUMN": lambda: losses / total,
        "SUMD": lambda: (gains - losses) / total,
        "VMA": lambda: v.rolling(d).mean() / (v + eps),
        "VSTD": lambda: v.rolling(d).std() / (v + eps),
        "WVMA": lambda: weighted.rolling(d).std() / (weighted.rolling(d).mean() + eps),
        "VSUMP": lambda: volume_gains / volume_total,
        "VSUMN": lambda: volume_losses / volume_total,
        "VSUMD": lambda: (volume_gains - volume_losses) / volume_total,
    }
    return definitions[operator]()


def _factor_names(operator: str) -> list[str]:
    return [operator] if operator in alpha158.KBAR + alpha158.PRICE else [f"{operator}{d}" for d in alpha158.WINDOWS]


@pytest.mark.parametrize("operator", [*alpha158.KBAR, "OPEN0", "HIGH0", "LOW0", *alpha158.ROLLING])
def test_every_factor_matches_a_direct_pandas_definition(operator: str, ohlcv: pd.DataFrame,
                                                         batch: pd.DataFrame) -> None:
    for name in _factor_names(operator):
        _, d = alpha158.operator_of(name)
        expected = pd.concat([_reference(group, operator, d) for _, group in ohlcv.groupby("symbol", sort=False)])
        actual = batch[name]
        assert actual.notna().sum() > 0.5 * len(actual), f"{name} is mostly NaN"
        np.testing.assert_allclose(actual.to_numpy(), expected.loc[ohlcv.index].to_numpy(), equal_nan=True,
                                   err_msg=name, **TOLERANCE)


def test_the_kernels_number_the_factors_as_the_names_do() -> None:
    """The compiled kernels know the operators and windows by position: they must be alpha158's, in its order."""
    from alphaforge.features import alpha158_kernels

    assert alpha158_kernels.OPERATORS == alpha158.ROLLING and alpha158_kernels.WINDOWS == alpha158.WINDOWS
    assert alpha158_kernels.HISTORY == alpha158.HISTORY
    assert alpha158_kernels.N_CODES == len(alpha158.all_names())
    assert alpha158.all_names()[alpha158_kernels.N_SHAPE] == "ROC5"


def test_the_set_is_qlibs_158_less_vwap_in_qlibs_order(batch: pd.DataFrame) -> None:
    names = feature_columns(batch)
    assert len(alpha158.all_names()) == 158
    assert names == [n for n in alpha158.all_names() if n != "VWAP0"]
    assert names[:12] == ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2", "OPEN0", "HIGH0",
                          "LOW0"]
    assert names[12:17] == ["ROC5", "ROC10", "ROC20", "ROC30", "ROC60"]
    assert batch.attrs["skipped"] == ["features: skipping VWAP0: the bars have no 'vwap' column"]


def test_a_window_is_nan_until_full_and_changes_need_one_bar_more(batch: pd.DataFrame, ohlcv: pd.DataFrame) -> None:
    first = batch[ohlcv["symbol"] == "FB"].reset_index(drop=True)
    assert first["MA20"].iloc[:19].isna().all() and first["MA20"].iloc[19:].notna().all()
    assert first["ROC20"].iloc[:20].isna().all() and first["ROC20"].iloc[20:].notna().all()
    assert first["SUMP20"].iloc[:20].isna().all() and first["SUMP20"].iloc[20:].notna().all()
    assert first["KMID"].notna().all()


def _flat_then_moving() -> pd.DataFrame:
    close = np.r_[np.full(8, 50.0), 50.0 * np.exp(np.cumsum(np.linspace(-0.02, 0.03, 62)))]
    n = len(close)
    return pd.DataFrame({
        "timestamp": pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC"), "symbol": "FLAT",
        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": np.full(n, 1000.0),
    })


def test_flat_windows_give_zero_std_and_no_r_squared_or_correlation() -> None:
    features = compute_features(_flat_then_moving(), ALPHA158)
    at = 7  # bars 0..7 are equal: the 5-bar windows ending at 4..7 are flat
    assert features.loc[at, "STD5"] == 0.0 and features.loc[at, "VSTD5"] == 0.0
    assert np.isnan(features.loc[at, "RSQR5"]) and np.isnan(features.loc[at, "CORR5"])
    assert features.loc[at, "RANK5"] == pytest.approx(0.6)  # five ties: average rank 3 of 5
    assert features.loc[at, "SUMP5"] == 0.0 and features.loc[at, "CNTD5"] == 0.0
    assert np.isnan(features["CORR20"]).iloc[25:].all()  # a constant volume never correlates
    finite = features[feature_columns(features)].to_numpy()
    assert not np.isinf(finite).any()


def test_close_only_data_keeps_the_close_factors_and_lists_the_rest(skfolio_bars: pd.DataFrame,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    bars = skfolio_bars[skfolio_bars["timestamp"] >= pd.Timestamp("2022-01-01", tz="UTC")].reset_index(drop=True)
    with caplog.at_level(logging.INFO, logger="alphaforge.features"):
        features = compute_features(bars, ALPHA158)
    names = feature_columns(features)
    assert "ROC5" in names and "RANK60" in names and "CNTD30" in names
    assert not {"KMID", "OPEN0", "MAX5", "RSV5", "IMXD5", "CORR5", "VMA5", "VSUMD60"} & set(names)
    skipped = " ".join(features.attrs["skipped"])
    for family in ("KMID", "OPEN0", "VWAP0", "MAX60", "IMAX5", "CORR5", "WVMA20", "VSUMD60"):
        assert family in skipped
    assert "the bars have no 'open' column" in skipped
    assert "skipping KMID" in caplog.text


def test_a_bad_open_is_refused_naming_the_row(ohlcv: pd.DataFrame) -> None:
    bars = ohlcv.copy()
    bars.loc[7, "open"] = 0.0
    with pytest.raises(DataError, match=r"column 'open', row 7"):
        compute_features(bars, ALPHA158)
    compute_features(bars, FeatureParams(regimes=False))  # the basic set never reads the open


def test_the_basic_set_stays_the_default_and_alpha158_needs_its_own_ranks() -> None:
    assert FeatureParams().set == "basic" and FeatureParams().processing == "none"
    with pytest.raises(ValueError, match="log_return_5"):
        FeatureParams(set="alpha158")  # the default ranks name basic features
    assert FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5", "STD20")).set == "alpha158"


# --------------------------------------------------------------------------------------------
# Cross-sectional processing
# --------------------------------------------------------------------------------------------


def test_processing_rows_by_hand() -> None:
    block = np.array([[3.0, 1.0, np.nan, 2.0], [5.0, 5.0, 5.0, np.nan], [np.nan, np.nan, np.nan, np.nan]])
    ranked = process_rows(block, "cs_rank")
    np.testing.assert_allclose(ranked[0], [(1.0 - 0.5) * 3.46, (1 / 3 - 0.5) * 3.46, 0.0, (2 / 3 - 0.5) * 3.46])
    np.testing.assert_allclose(ranked[1], [(2 / 3 - 0.5) * 3.46] * 3 + [0.0])
    assert (ranked[2] == 0.0).all()
    zscored = process_rows(block, "cs_zscore")
    np.testing.assert_allclose(zscored[0], [1.0, -1.0, 0.0, 0.0])  # mean 2, sample std 1
    assert (zscored[1] == 0.0).all() and (zscored[2] == 0.0).all()  # flat or empty: no spread, filled with 0


@pytest.mark.parametrize("processing", ["cs_rank", "cs_zscore"])
def test_processing_is_per_timestamp_and_leaves_market_wide_columns(processing: str, ohlcv: pd.DataFrame) -> None:
    params = FeatureParams(set="alpha158", cross_sectional_ranks=("ROC5",), regimes=False, processing=processing)
    features = compute_features(ohlcv, params)
    raw = compute_features(ohlcv, params.model_copy(update={"processing": "none"}))
    assert not features["ROC20"].isna().any() and not features["CORD60"].isna().any()  # Fillna
    for column in ("day_of_week", "month", "ROC5_cs_rank"):
        pd.testing.assert_series_equal(features[column], raw[column])
    by_time = features.groupby("timestamp")["MA10"]
    if processing == "cs_zscore":
        full = raw.groupby("timestamp")["MA10"].transform(lambda x: (x - x.mean()) / x.std()).fillna(0.0)
        np.testing.assert_allclose(features["MA10"], full, atol=1e-12)
        assert by_time.mean().abs().max() < 1e-12
    else:
        full = raw.groupby("timestamp")["MA10"].transform(lambda x: (x.rank(pct=True) - 0.5) * 3.46).fillna(0.0)
        np.testing.assert_allclose(features["MA10"], full, atol=1e-12)


def test_processing_one_symbol_is_refused(ohlcv: pd.DataFrame) -> None:
    params = FeatureParams(set="alpha158", cross_sectional_ranks=(), regimes=False, processing="cs_rank")
    with pytest.raises(DataError, match="one symbol"):
        compute_features(ohlcv[ohlcv["symbol"] == "AAPL"].reset_index(drop=True), params)


@pytest.mark.parametrize("processing", ["cs_rank", "cs_zscore"])
def test_processing_on_a_cross_sectional_market_never_reaches_across_timestamps(processing: str) -> None:
    """A market whose edge lives in the cross-sectional order of a known-at-t signal (gate_markets): the processed
    features, and the normalised label, of every timestamp up to a cut are the same when everything after the cut
    is removed, and the processed features keep the cross-sectional order they were given."""
    from gate_markets import tradeable_market

    from alphaforge.features import compute_labels, normalised_label

    market = tradeable_market(n_symbols=25, n_bars=160, seed=2)
    bars = market.drop(columns=["signal"]).sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    params = FeatureParams(set="alpha158", cross_sectional_ranks=(), regimes=False, calendar=False,
                           processing=processing)
    full = compute_features(bars, params)
    raw = compute_features(bars, params.model_copy(update={"processing": "none"}))
    label = compute_labels(bars, 5)["forward_return"]
    full_label = normalised_label(label, bars["timestamp"], "cs_zscore")
    for cut in np.sort(bars["timestamp"].unique())[[70, 120]]:
        kept = (bars["timestamp"] <= cut).to_numpy()
        truncated = compute_features(bars[kept], params)
        np.testing.assert_array_equal(truncated[feature_columns(full)].to_numpy(),
                                      full.loc[kept, feature_columns(full)].to_numpy())
        cut_label = normalised_label(label[kept], bars.loc[kept, "timestamp"], "cs_zscore")
        pd.testing.assert_series_equal(cut_label, full_label[kept])
    last = (bars["timestamp"] == bars["timestamp"].max()).to_numpy()
    order = np.argsort(raw.loc[last, "ROC5"].to_numpy())
    assert (np.diff(full.loc[last, "ROC5"].to_numpy()[order]) >= 0).all()
