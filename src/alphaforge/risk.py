"""Risk forecasts: next-bar volatility by GARCH and by gradient boosting, compared out of sample, and VaR backtests.

Every forecast is made at the close of bar t ("the origin") for the one-bar log return ``r[t+1]``, from
data up to t only. Parameters are estimated on the training span (origins up to ``train_end``) and then
**held fixed** over the test span ("fixed-window" forecasting): GARCH is fitted once with
``arch_model(...).fit(last_obs=...)`` and its conditional variance is then filtered forward through the
test bars with those parameters (``ARCHModelResult.forecast(start=...)``); the gradient-boosting model is
trained once. Refitting as the test span advances would use more data, at many times the cost; the fixed
scheme is what a stage that fits once per pipeline run does.

Models (variances in squared log-return units):

* ``garch``: GARCH(p, q) (the ``arch`` package), constant or zero mean, normal or Student-t errors; fitted
  on returns in percent (x100) for the optimiser's sake, converted back.
* ``lightgbm``: LightGBM on realised-volatility features known at t (log |r_t|, log of trailing sample
  variances over ``volatility_windows`` bars, log of an exponentially weighted variance), trained to
  predict ``r[t+1]^2`` with the **gamma** objective (log link): its deviance ``y/f - log(y/f) - 1`` is
  exactly QLIKE, so the model minimises the loss it is scored on, and its forecasts are always positive.
  Targets are floored at ``1e-6 x`` the median training ``r^2`` (the gamma objective needs y > 0).
* ``ewma``: the RiskMetrics exponentially weighted variance (``lambda = 0.94``), a no-estimation baseline.

Scores, on the test origins (the realised proxy for the variance of ``r[t+1]`` is ``r[t+1]^2``):

* :func:`qlike`: ``mean(s/f - log(s/f) - 1)`` with s the realised and f the forecast variance (Patton
  2011; robust to the noise in ``r^2``; lower is better; bars with ``r = 0`` are left out, log 0 being
  undefined), and :func:`mse` of the variances.
* Value at risk (:func:`value_at_risk`): the loss not exceeded with probability ``1 - alpha``,
  ``VaR = -(mu + sigma * q_alpha)`` (a positive number for a loss), with ``q_alpha`` the alpha-quantile of
  the standardised error distribution (unit-variance Student t for GARCH-t). A *breach* is
  ``r[t+1] < -VaR_t``. :func:`kupiec_test` checks the breach rate against alpha (proportion of failures,
  likelihood ratio, chi-square with 1 degree of freedom).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import stats

from alphaforge.schema import DataError

__all__ = [
    "RiskParams",
    "compare_risk_models",
    "compare_risk_panel",
    "ewma_forecast",
    "garch_forecast",
    "kupiec_test",
    "lightgbm_forecast",
    "mse",
    "qlike",
    "realised_volatility_features",
    "risk_forecasts",
    "risk_history_shortfall",
    "value_at_risk",
]

log = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("garch", "lightgbm", "ewma")
_PERCENT = 100.0


class RiskParams(BaseModel):
    """Volatility models and VaR levels of the risk comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alphas: tuple[float, ...] = Field((0.01, 0.05), min_length=1)
    garch_p: int = Field(1, ge=1)
    garch_q: int = Field(1, ge=0)
    garch_mean: Literal["constant", "zero"] = "constant"
    garch_distribution: Literal["normal", "t"] = "normal"
    ewma_lambda: float = Field(0.94, gt=0.0, lt=1.0)
    volatility_windows: tuple[int, ...] = (5, 20, 60)
    lightgbm: dict[str, Any] = Field(default_factory=lambda: {
        "n_estimators": 200, "learning_rate": 0.03, "num_leaves": 8, "min_child_samples": 100,
        "subsample": 0.8, "subsample_freq": 1, "reg_lambda": 1.0})
    min_train: int = Field(250, ge=30, description="training origins needed to fit")
    seed: int = 0

    @field_validator("lightgbm")
    @classmethod
    def _lightgbm_hyperparameters(cls, values: dict[str, Any]) -> dict[str, Any]:
        from alphaforge.models.params import check_hyperparameters

        check_hyperparameters("lightgbm", values, where="risk.lightgbm")
        return values


# ---------------------------------------------------------------------------------------------- scores


def qlike(realised_variance: np.ndarray, forecast_variance: np.ndarray) -> float:
    """QLIKE loss ``mean(s/f - log(s/f) - 1)`` over the rows with s > 0 and f > 0 (0 for a perfect forecast)."""
    s = np.asarray(realised_variance, dtype=np.float64)
    f = np.asarray(forecast_variance, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(f) & (s > 0) & (f > 0)
    if not ok.any():
        return math.nan
    ratio = s[ok] / f[ok]
    return float(np.mean(ratio - np.log(ratio) - 1.0))


def mse(realised_variance: np.ndarray, forecast_variance: np.ndarray) -> float:
    """Mean squared error of variance forecasts over the finite pairs."""
    s = np.asarray(realised_variance, dtype=np.float64)
    f = np.asarray(forecast_variance, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(f)
    return float(np.mean((s[ok] - f[ok]) ** 2)) if ok.any() else math.nan


def value_at_risk(sigma: np.ndarray | float, alpha: float, dist: Literal["normal", "t"] = "normal",
                  nu: float | None = None, mean: np.ndarray | float = 0.0) -> np.ndarray:
    """One-period VaR at level ``alpha`` as a positive loss: ``-(mean + sigma * q_alpha)``.

    ``q_alpha`` is the alpha-quantile of the standard normal, or of the Student t with ``nu`` > 2 degrees
    of freedom rescaled to unit variance (so ``sigma`` is the standard deviation in both cases).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"value_at_risk: alpha must be in (0, 1), got {alpha!r}")
    if dist == "normal":
        q = stats.norm.ppf(alpha)
    elif dist == "t":
        if nu is None or not nu > 2.0:
            raise ValueError(f"value_at_risk: the Student t needs nu > 2 for a finite variance, got {nu!r}")
        q = stats.t.ppf(alpha, nu) * math.sqrt((nu - 2.0) / nu)
    else:
        raise ValueError(f"value_at_risk: dist must be 'normal' or 't', got {dist!r}")
    return -(np.asarray(mean, dtype=np.float64) + np.asarray(sigma, dtype=np.float64) * q)


def kupiec_test(breaches: Sequence[bool] | np.ndarray, alpha: float) -> dict[str, float | int]:
    """Kupiec's proportion-of-failures test: is the breach rate consistent with ``alpha``?

    ``LR = -2 [ (n-x) log(1-alpha) + x log(alpha) - (n-x) log(1-x/n) - x log(x/n) ]`` (0 log 0 = 0),
    asymptotically chi-square(1) under the null that breaches occur with probability alpha. A small
    ``p_value`` rejects the VaR model (too many or too few breaches).
    """
    hits = np.asarray(breaches, dtype=bool)
    n = int(hits.size)
    if n == 0:
        raise ValueError("kupiec_test: no observations")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"kupiec_test: alpha must be in (0, 1), got {alpha!r}")
    x = int(hits.sum())
    rate = x / n

    def xlogy(count: float, probability: float) -> float:
        return 0.0 if count == 0 else count * math.log(probability)

    null = xlogy(n - x, 1.0 - alpha) + xlogy(x, alpha)
    alternative = xlogy(n - x, 1.0 - rate) + xlogy(x, rate)
    lr = max(-2.0 * (null - alternative), 0.0)
    return {"n": n, "breaches": x, "breach_rate": rate, "expected_rate": alpha, "lr_stat": lr,
            "p_value": float(stats.chi2.sf(lr, df=1))}


# ---------------------------------------------------------------------------------------------- forecasts


def _check_returns(returns: pd.Series, caller: str) -> pd.Series:
    if not isinstance(returns, pd.Series):
        raise DataError(f"{caller}: returns must be a pandas Series, got {type(returns).__name__}")
    values = returns.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{caller}: return {values[bad][0]!r} at {returns.index[np.flatnonzero(bad)[0]]!r}; "
                        "rule: finite (drop the first bar's missing return)")
    if not returns.index.is_monotonic_increasing or returns.index.has_duplicates:
        raise DataError(f"{caller}: the index is not strictly increasing; rule: one return per bar, in time order")
    return returns.astype(np.float64)


def _train_stop(returns: pd.Series, train_end: Any, min_train: int, caller: str) -> int:
    """Number of training origins: bars with index <= train_end (so the last training target is at train_end)."""
    stop = int(np.searchsorted(returns.index, train_end, side="right"))
    if stop < min_train:
        raise DataError(f"{caller}: {stop} returns up to train_end={train_end!r}; rule: at least {min_train}")
    if stop >= len(returns):
        raise DataError(f"{caller}: no returns after train_end={train_end!r} to forecast")
    return stop


def garch_forecast(returns: pd.Series, train_end: Any, params: RiskParams | None = None) -> pd.DataFrame:
    """One-step-ahead GARCH mean and volatility for every origin, parameters fitted on returns up to ``train_end``.

    Row t (index of ``returns``) forecasts ``r[t+1]``: columns ``mean``, ``sigma`` (and ``nu`` for
    Student-t errors). The fit uses only the returns with index <= train_end; the variance recursion then
    runs through all bars with those parameters, so the forecast at t uses data up to t only.
    """
    from arch import arch_model

    params = params or RiskParams()
    returns = _check_returns(returns, "garch_forecast")
    stop = _train_stop(returns, train_end, params.min_train, "garch_forecast")
    y = pd.Series(returns.to_numpy() * _PERCENT)
    model = arch_model(y, mean="Constant" if params.garch_mean == "constant" else "Zero", vol="GARCH",
                       p=params.garch_p, q=params.garch_q, dist=params.garch_distribution, rescale=False)
    result = model.fit(last_obs=stop, disp="off", show_warning=False)
    forecast = result.forecast(horizon=1, start=0, reindex=False)
    variance = forecast.variance["h.1"].to_numpy() / _PERCENT**2
    mean = forecast.mean["h.1"].to_numpy() / _PERCENT
    out = pd.DataFrame({"mean": mean, "sigma": np.sqrt(variance)}, index=returns.index)
    if params.garch_distribution == "t":
        out["nu"] = float(result.params["nu"])
    out.attrs["params"] = {k: float(v) for k, v in result.params.items()}
    return out


def ewma_forecast(returns: pd.Series, train_end: Any, params: RiskParams | None = None) -> pd.DataFrame:
    """RiskMetrics: ``var[t+1] = lambda var[t] + (1 - lambda) r[t]^2``, started at the training sample variance."""
    params = params or RiskParams()
    returns = _check_returns(returns, "ewma_forecast")
    stop = _train_stop(returns, train_end, params.min_train, "ewma_forecast")
    r = returns.to_numpy()
    lam = params.ewma_lambda
    variance = np.empty(len(r))
    previous = float(np.var(r[:stop], ddof=1))
    for t in range(len(r)):
        previous = lam * previous + (1.0 - lam) * r[t] * r[t]
        variance[t] = previous
    return pd.DataFrame({"mean": 0.0, "sigma": np.sqrt(variance)}, index=returns.index)


def realised_volatility_features(returns: pd.Series, windows: Sequence[int], ewma_lambda: float = 0.94
                                 ) -> pd.DataFrame:
    """Features at bar t from returns up to t: log |r_t|, log trailing variances, log EWMA variance (NaN early)."""
    r = returns.astype(np.float64)
    squared = r * r
    floor = 1e-12
    features = {"log_abs_return": np.log(np.abs(r) + math.sqrt(floor))}
    for window in windows:
        features[f"log_var_{window}"] = np.log(r.rolling(window, min_periods=window).var(ddof=1) + floor)
    ewm = squared.ewm(alpha=1.0 - ewma_lambda, adjust=False).mean()
    features["log_ewma_var"] = np.log(ewm + floor)
    return pd.DataFrame(features, index=returns.index)


def lightgbm_forecast(returns: pd.Series, train_end: Any, params: RiskParams | None = None) -> pd.DataFrame:
    """LightGBM (gamma objective) forecast of ``r[t+1]^2`` from realised-volatility features at t.

    Trained on origins whose target ``r[t+1]`` lies at or before ``train_end``; predicts every origin.
    """
    import lightgbm as lgb

    params = params or RiskParams()
    returns = _check_returns(returns, "lightgbm_forecast")
    stop = _train_stop(returns, train_end, params.min_train, "lightgbm_forecast")
    features = realised_volatility_features(returns, params.volatility_windows, params.ewma_lambda)
    target = (returns.shift(-1) ** 2).to_numpy()
    x = features.to_numpy()
    rows = np.arange(len(returns))
    train = (rows < stop - 1) & np.isfinite(target) & np.isfinite(x).all(axis=1)
    if train.sum() < params.min_train // 2:
        raise DataError(f"lightgbm_forecast: {int(train.sum())} complete training rows; rule: at least "
                        f"{params.min_train // 2} (shorten volatility_windows or add history)")
    floor = 1e-6 * float(np.median(target[train])) if np.median(target[train]) > 0 else 1e-12
    settings = {"objective": "gamma", "random_state": params.seed, "n_jobs": 2, "verbose": -1,
                **params.lightgbm}
    model = lgb.LGBMRegressor(**settings)
    model.fit(x[train], np.maximum(target[train], floor))
    variance = np.full(len(returns), np.nan)
    usable = np.isfinite(x).all(axis=1)
    variance[usable] = model.predict(x[usable])
    return pd.DataFrame({"mean": 0.0, "sigma": np.sqrt(variance)}, index=returns.index)


def risk_forecasts(returns: pd.Series, train_end: Any, params: RiskParams | None = None) -> pd.DataFrame:
    """Every model's one-step-ahead ``sigma_<model>`` (and ``mean_<model>``) per origin, plus ``next_return``."""
    params = params or RiskParams()
    returns = _check_returns(returns, "risk_forecasts")
    frames = {"garch": garch_forecast(returns, train_end, params),
              "lightgbm": lightgbm_forecast(returns, train_end, params),
              "ewma": ewma_forecast(returns, train_end, params)}
    out = pd.DataFrame({"next_return": returns.shift(-1)}, index=returns.index)
    for name, frame in frames.items():
        out[f"mean_{name}"] = frame["mean"].to_numpy()
        out[f"sigma_{name}"] = frame["sigma"].to_numpy()
    if "nu" in frames["garch"].columns:
        out["nu_garch"] = frames["garch"]["nu"].to_numpy()
    out.attrs["garch_params"] = frames["garch"].attrs.get("params", {})
    return out


def compare_risk_models(returns: pd.Series, train_end: Any, params: RiskParams | None = None
                        ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Out-of-sample comparison of the volatility models: QLIKE, MSE and VaR backtests per alpha.

    Scored on the origins after ``train_end`` that have a next return (the test span). Returns the JSON-able
    metrics (``models.<name>.{qlike, mse, var.<alpha>.{breach_rate, lr_stat, p_value, ...}}``,
    ``best_by_qlike``) and the forecasts frame of :func:`risk_forecasts`.
    """
    params = params or RiskParams()
    forecasts = risk_forecasts(returns, train_end, params)
    stop = _train_stop(_check_returns(returns, "compare_risk_models"), train_end, params.min_train,
                       "compare_risk_models")
    test = forecasts.iloc[stop - 1 : -1]
    realised = test["next_return"].to_numpy()
    models: dict[str, Any] = {}
    for name in MODELS:
        sigma = test[f"sigma_{name}"].to_numpy()
        mean = test[f"mean_{name}"].to_numpy()
        ok = np.isfinite(sigma) & np.isfinite(realised)
        dist = params.garch_distribution if name == "garch" else "normal"
        nu = float(test["nu_garch"].iloc[0]) if name == "garch" and dist == "t" else None
        var_results = {}
        for alpha in params.alphas:
            var = value_at_risk(sigma[ok], alpha, dist=dist, nu=nu, mean=mean[ok])
            var_results[str(alpha)] = kupiec_test(realised[ok] < -var, alpha)
        models[name] = {"qlike": _number(qlike(realised**2, sigma**2)), "mse": _number(mse(realised**2, sigma**2)),
                        "n": int(ok.sum()), "var": var_results}
    ranked = sorted((m for m in models if models[m]["qlike"] is not None), key=lambda m: models[m]["qlike"])
    index = forecasts.index
    metrics = {"train_end": str(index[stop - 1]), "test_start": str(index[stop]), "test_end": str(index[-1]),
               "n_test": len(test), "models": models,
               "best_by_qlike": ranked[0] if ranked else None,
               "garch_params": forecasts.attrs.get("garch_params", {})}
    return metrics, forecasts


def compare_risk_panel(bars: pd.DataFrame, train_end: Any, params: RiskParams | None = None
                       ) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`compare_risk_models` for every symbol's one-bar log returns, with the mean scores over symbols.

    Returns ``{"symbols": {symbol: metrics}, "mean": {model: {qlike, mse, var.<alpha>.breach_rate}}}`` and
    the long forecasts frame (``timestamp``, ``symbol``, ``next_return``, ``sigma_<model>`` ...).
    """
    params = params or RiskParams()
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"compare_risk_panel: missing column(s) {missing}; rule: canonical bars")
    per_symbol: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    frames = []
    # a return is taken within one series only: never across a suspension (validated bars' ``segment``)
    series = ["symbol", "segment"] if "segment" in bars.columns else ["symbol"]
    ordered = bars.sort_values(["symbol", "timestamp"], kind="stable")
    log_close = np.log(ordered["close"].astype(float))
    ordered = ordered.assign(log_return=log_close - log_close.groupby([ordered[c] for c in series], sort=False).shift())
    for symbol, rows in ordered.groupby("symbol", sort=True):
        returns = rows.set_index("timestamp")["log_return"].dropna()
        reason = risk_history_shortfall(returns, train_end, params.min_train)
        if reason is not None:
            skipped[str(symbol)] = reason
            log.info("risk: %s skipped: %s", symbol, reason)
            continue
        metrics, forecasts = compare_risk_models(returns, train_end, params)
        per_symbol[str(symbol)] = metrics
        frames.append(forecasts.rename_axis("timestamp").reset_index().assign(symbol=str(symbol)))
    if skipped:
        log.warning("risk: %d of %d symbol(s) skipped for too little history around train_end=%s: %s",
                    len(skipped), len(skipped) + len(per_symbol), train_end, sorted(skipped))
    if not per_symbol:
        raise DataError(f"compare_risk_panel: no symbol has at least {params.min_train} returns up to "
                        f"train_end={train_end} and one after it; rule: risk.min_train. Skipped: {skipped}")
    mean: dict[str, Any] = {}
    for name in MODELS:
        blocks = [m["models"][name] for m in per_symbol.values()]
        mean[name] = {
            "qlike": _number(np.nanmean([b["qlike"] if b["qlike"] is not None else np.nan for b in blocks])),
            "mse": _number(np.nanmean([b["mse"] if b["mse"] is not None else np.nan for b in blocks])),
            "var": {a: {"breach_rate": _number(np.mean([b["var"][a]["breach_rate"] for b in blocks])),
                        "share_rejected_5pct": _number(np.mean([b["var"][a]["p_value"] < 0.05 for b in blocks]))}
                    for a in blocks[0]["var"]},
        }
    ranked = sorted((m for m in mean if mean[m]["qlike"] is not None), key=lambda m: mean[m]["qlike"])
    forecasts = pd.concat(frames, ignore_index=True)
    columns = ["timestamp", "symbol", *[c for c in forecasts.columns if c not in ("timestamp", "symbol")]]
    return {"symbols": per_symbol, "mean": mean, "best_by_qlike": ranked[0] if ranked else None,
            "n_symbols": len(per_symbol), "n_skipped": len(skipped), "skipped": skipped}, forecasts[columns]


def risk_history_shortfall(returns: pd.Series, train_end: Any, min_train: int) -> str | None:
    """Why a symbol's returns cannot be modelled with a fit up to ``train_end`` (None when they can).

    A symbol that lists late has too few returns before ``train_end``; one delisted before it has none after.
    """
    stop = int(np.searchsorted(returns.index, train_end, side="right"))
    if stop < min_train:
        return f"{stop} returns up to train_end (risk.min_train={min_train}): listed too late"
    if stop >= len(returns):
        return "no returns after train_end to forecast: delisted or suspended before the test span"
    return None


def _number(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
