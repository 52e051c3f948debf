"""Market regimes: a Gaussian hidden Markov model (or mixture) over return and volatility, causal by construction.

**Inputs** per bar (:func:`regime_inputs`): the one-bar log return and the log of its trailing
``volatility_window``-bar standard deviation (logged because volatility is close to log-normal, which a
Gaussian state density fits far better). For a panel the series is the equal-weight "market" return, the
mean of the symbols' one-bar log returns at each timestamp (:func:`market_returns`), because a regime is a
property of the market, not of one stock. Inputs are standardised with the training rows' mean and std.

**Fitting** uses training rows only (``fit`` is handed the training span; the regimes stage fits on the
first walk-forward fold's training window, so that no fold's test window is ever seen, see
:func:`regime_features`). The features stage then merges the probabilities as model features
(``alphaforge.features.compute_features(..., regime_model=...)``), the trained model's spec carries
:meth:`RegimeModel.to_json`, and the online store filters one timestamp at a time (:class:`RegimeFilter`).

**Probabilities are causal.** For the HMM, ``predict_proba`` returns the *forward-filtered* probabilities
P(state_t | inputs_1..t), computed with the fitted parameters by the forward recursion, not hmmlearn's
``predict_proba``, which is the *smoothed* posterior P(state_t | inputs_1..T) and so looks into the future.
The probabilities at bar t therefore do not change when later bars are appended (the tests check this
exactly). The mixture (``method="gmm"``) scores each bar on its own inputs, which are causal already.
Bars whose inputs are not yet defined (the first ``volatility_window`` bars) get NaN; the HMM filter
starts from the fitted start probabilities at the first bar with defined inputs, and carries its state
across any later undefined bar with the transition matrix alone.

**Label switching** is removed by sorting the fitted states by the mean of their volatility input: regime 0
is always the calmest, regime ``n_regimes - 1`` the most turbulent, on every refit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import logsumexp

from alphaforge.schema import DataError

__all__ = [
    "RegimeFilter",
    "RegimeModel",
    "RegimeParams",
    "apply_regime_features",
    "current_regime",
    "market_returns",
    "plot_regimes",
    "regime_columns",
    "regime_features",
    "regime_inputs",
    "stored_feature_version",
]

INPUT_COLUMNS: tuple[str, ...] = ("return", "log_volatility")


class RegimeParams(BaseModel):
    """The regime model: how many regimes, which model, and the volatility window of its input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_regimes: int = Field(2, ge=2, le=6)
    method: Literal["hmm", "gmm"] = "hmm"
    volatility_window: int = Field(20, ge=2)
    covariance_type: Literal["full", "diag"] = "full"
    n_iter: int = Field(200, ge=1, description="EM iterations per start")
    n_init: int = Field(3, ge=1, description="EM starts (different seeds); the best likelihood wins")
    seed: int = 0
    min_train_rows: int = Field(100, ge=10, description="training bars with defined inputs needed to fit")


def regime_columns(n_regimes: int) -> list[str]:
    """The feature columns :func:`regime_features` adds: ``regime``, ``regime_prob_0`` .. ``regime_prob_{k-1}``."""
    return ["regime", *[f"regime_prob_{k}" for k in range(n_regimes)]]


def market_returns(bars: pd.DataFrame) -> pd.Series:
    """Equal-weight market one-bar log return per timestamp: the mean over symbols of log(close_t / close_t-1).

    A symbol's first bar has no return and is left out of that timestamp's mean; the first timestamp's
    value is NaN when no symbol has a return there.
    """
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"market_returns: missing column(s) {missing}; rule: canonical bars")
    close = bars["close"].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(close) & (close > 0))
    if bad.any():
        row = bars.index[np.flatnonzero(bad)[0]]
        raise DataError(f"market_returns column 'close': value {bars.at[row, 'close']!r} at row {row!r}; "
                        "rule: finite and > 0")
    ordered = bars.sort_values(["symbol", "timestamp"], kind="stable")
    log_close = np.log(ordered["close"].astype(float))
    returns = log_close.groupby(ordered["symbol"].to_numpy(), sort=False).diff()
    frame = pd.DataFrame({"timestamp": ordered["timestamp"].to_numpy(), "r": returns.to_numpy()})
    series = frame.groupby("timestamp", sort=True)["r"].mean()
    series.index = pd.DatetimeIndex(series.index)
    return series.rename("market_return")


def regime_inputs(returns: pd.Series, volatility_window: int) -> pd.DataFrame:
    """Per bar: ``return`` and ``log_volatility`` (log of the trailing sample std of returns); NaN until defined."""
    values = pd.Series(np.asarray(returns, dtype=np.float64), index=returns.index)
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        raise DataError(f"regime_inputs: infinite return at {values.index[np.flatnonzero(infinite)[0]]!r}; "
                        "rule: finite or NaN")
    volatility = values.rolling(volatility_window, min_periods=volatility_window).std(ddof=1)
    with np.errstate(divide="ignore"):
        log_volatility = np.log(volatility.where(volatility > 0))
    return pd.DataFrame({"return": values, "log_volatility": log_volatility}, index=returns.index)


class RegimeModel:
    """A regime model fitted on training returns; causal regime probabilities for any later series.

    ``fit(returns)`` takes the training span only; ``predict_proba(returns)`` takes a series that starts
    where the fitted history should start (usually the whole history up to now).
    """

    def __init__(self, params: RegimeParams | None = None) -> None:
        self.params = params or RegimeParams()
        self.fitted_ = False

    # -- fitting

    def fit(self, returns: pd.Series) -> RegimeModel:
        """Fit on the training returns (standardised inputs), then order the states from calm to turbulent."""
        p = self.params
        inputs = regime_inputs(returns, p.volatility_window)
        valid = inputs.notna().all(axis=1).to_numpy()
        if valid.sum() < p.min_train_rows:
            raise DataError(f"RegimeModel.fit: {int(valid.sum())} training bars with defined inputs "
                            f"(return and {p.volatility_window}-bar volatility); rule: at least {p.min_train_rows}")
        x = inputs.to_numpy()[valid]
        self.center_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        z = (x - self.center_) / self.scale_
        if p.method == "hmm":
            self._fit_hmm(z, valid)
        else:
            self._fit_gmm(z)
        order = np.argsort(self.means_[:, 1], kind="stable")
        self.means_ = self.means_[order]
        self.covars_ = self.covars_[order]
        self.startprob_ = self.startprob_[order]
        self.weights_ = self.weights_[order]
        if self.transmat_ is not None:
            self.transmat_ = self.transmat_[np.ix_(order, order)]
        self.train_start_ = inputs.index[0]
        self.train_end_ = inputs.index[-1]
        self.fitted_ = True
        return self

    def _fit_hmm(self, z: np.ndarray, valid: np.ndarray) -> None:
        from hmmlearn.hmm import GaussianHMM

        p = self.params
        # Split the training rows into contiguous runs of defined inputs (only the leading window, usually).
        breaks = np.flatnonzero(np.diff(np.flatnonzero(valid)) > 1) + 1
        lengths = np.diff(np.concatenate([[0], breaks, [len(z)]])).astype(int)
        best, best_score = None, -math.inf
        for start in range(p.n_init):
            model = GaussianHMM(n_components=p.n_regimes, covariance_type=p.covariance_type, n_iter=p.n_iter,
                                random_state=p.seed + start, tol=1e-4, min_covar=1e-4)
            model.fit(z, lengths=lengths)
            score = model.score(z, lengths=lengths)
            if np.isfinite(score) and score > best_score:
                best, best_score = model, score
        if best is None:
            raise DataError("RegimeModel.fit: the HMM's likelihood was not finite for any start")
        self.means_ = np.asarray(best.means_, dtype=np.float64)
        self.covars_ = np.asarray(best.covars_, dtype=np.float64)
        self.startprob_ = np.asarray(best.startprob_, dtype=np.float64)
        self.transmat_ = np.asarray(best.transmat_, dtype=np.float64)
        self.weights_ = _stationary(self.transmat_)
        self.log_likelihood_ = float(best_score)

    def _fit_gmm(self, z: np.ndarray) -> None:
        from sklearn.mixture import GaussianMixture

        p = self.params
        model = GaussianMixture(n_components=p.n_regimes, covariance_type=p.covariance_type, n_init=p.n_init,
                                max_iter=p.n_iter, random_state=p.seed, reg_covar=1e-4)
        model.fit(z)
        covars = model.covariances_
        if p.covariance_type == "diag":
            covars = np.stack([np.diag(c) for c in covars])
        self.means_ = np.asarray(model.means_, dtype=np.float64)
        self.covars_ = np.asarray(covars, dtype=np.float64)
        self.weights_ = np.asarray(model.weights_, dtype=np.float64)
        self.startprob_ = self.weights_.copy()
        self.transmat_ = None
        self.log_likelihood_ = float(model.score(z) * len(z))

    # -- prediction

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise RuntimeError("RegimeModel: call fit() first")

    def _log_emission(self, z: np.ndarray) -> np.ndarray:
        """log N(z | mean_k, cov_k) per row and state (rows with NaN give NaN)."""
        k = len(self.means_)
        out = np.empty((len(z), k))
        for state in range(k):
            cov = self.covars_[state]
            chol = np.linalg.cholesky(cov)
            diff = z - self.means_[state]
            solved = np.linalg.solve(chol, diff.T).T
            log_det = 2.0 * np.sum(np.log(np.diag(chol)))
            out[:, state] = -0.5 * (np.sum(solved**2, axis=1) + log_det + z.shape[1] * math.log(2 * math.pi))
        return out

    def predict_proba(self, returns: pd.Series) -> pd.DataFrame:
        """Causal regime probabilities per bar (columns ``regime_prob_k``; NaN where inputs are undefined).

        HMM: forward filtering P(state_t | bars up to t) from the fitted start probabilities at the
        series' first bar. GMM: each bar's own posterior.
        """
        self._check_fitted()
        inputs = regime_inputs(returns, self.params.volatility_window)
        z = (inputs.to_numpy() - self.center_) / self.scale_
        valid = np.isfinite(z).all(axis=1)
        log_b = np.full((len(z), len(self.means_)), np.nan)
        if valid.any():
            log_b[valid] = self._log_emission(z[valid])
        probs = np.full_like(log_b, np.nan)
        if self.transmat_ is None:
            log_post = np.log(self.weights_) + log_b[valid]
            probs[valid] = np.exp(log_post - logsumexp(log_post, axis=1, keepdims=True))
        else:
            filled = np.where(valid[:, None], log_b, 0.0)
            likelihood = np.exp(filled - filled.max(axis=1, keepdims=True))
            state: np.ndarray | None = None
            for t in range(len(z)):
                state, probs[t] = self._filter_step(state, likelihood[t] if valid[t] else None)
        return pd.DataFrame(probs, index=returns.index, columns=[f"regime_prob_{k}" for k in range(len(self.means_))])

    def _filter_step(self, state: np.ndarray | None, likelihood: np.ndarray | None
                     ) -> tuple[np.ndarray | None, np.ndarray]:
        """One step of the HMM's forward filter: (new state, this bar's probabilities; NaN without inputs).

        ``likelihood``: the bar's emission likelihoods rescaled to a maximum of 1 (so the recursion runs in
        plain probabilities), None where its inputs are undefined. The fitted start probabilities belong to
        the first bar with defined inputs (the fit saw only those); after it, a bar without inputs advances
        the state by the transition alone. The batch filter and :class:`RegimeFilter` share this step.
        """
        prior = self.startprob_ if state is None else state @ self.transmat_
        if likelihood is not None:
            posterior = np.maximum(prior, 1e-300) * likelihood
            state = posterior / posterior.sum()
            return state, state
        return (None if state is None else prior), np.full(len(self.means_), np.nan)

    def predict(self, returns: pd.Series) -> pd.Series:
        """The most probable regime per bar (causal), as float with NaN where undefined."""
        return pd.Series(_most_probable(self.predict_proba(returns).to_numpy()), index=returns.index, name="regime")

    def describe(self) -> dict[str, Any]:
        """What reports and the service say about the model: size, kind, input window and the span it was fitted on."""
        self._check_fitted()
        return {"n_regimes": self.params.n_regimes, "method": self.params.method,
                "volatility_window": self.params.volatility_window, "fit_start": str(self.train_start_),
                "fit_end": str(self.train_end_)}

    # -- persistence

    def to_json(self) -> dict[str, Any]:
        """Everything needed to filter new bars (the service loads this)."""
        self._check_fitted()
        return {"params": self.params.model_dump(), "center": self.center_.tolist(), "scale": self.scale_.tolist(),
                "means": self.means_.tolist(), "covars": self.covars_.tolist(),
                "startprob": self.startprob_.tolist(), "weights": self.weights_.tolist(),
                "transmat": None if self.transmat_ is None else self.transmat_.tolist(),
                "train_start": str(self.train_start_), "train_end": str(self.train_end_),
                "log_likelihood": self.log_likelihood_}

    def save(self, path: str | Path) -> Path:
        from alphaforge.io import write_json_atomic

        return write_json_atomic(self.to_json(), path)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RegimeModel:
        model = cls(RegimeParams.model_validate(payload["params"]))
        model.center_ = np.asarray(payload["center"], dtype=np.float64)
        model.scale_ = np.asarray(payload["scale"], dtype=np.float64)
        model.means_ = np.asarray(payload["means"], dtype=np.float64)
        model.covars_ = np.asarray(payload["covars"], dtype=np.float64)
        model.startprob_ = np.asarray(payload["startprob"], dtype=np.float64)
        model.weights_ = np.asarray(payload["weights"], dtype=np.float64)
        model.transmat_ = None if payload["transmat"] is None else np.asarray(payload["transmat"], dtype=np.float64)
        model.train_start_ = pd.Timestamp(payload["train_start"])
        model.train_end_ = pd.Timestamp(payload["train_end"])
        model.log_likelihood_ = float(payload["log_likelihood"])
        model.fitted_ = True
        return model

    @classmethod
    def load(cls, path: str | Path) -> RegimeModel:
        return cls.from_json(json.loads(Path(path).read_text()))


class RegimeFilter:
    """The fitted model's causal regime probabilities one timestamp at a time (the online feature store).

    :meth:`update` takes the market return of the next timestamp (the mean of the symbols' one-bar log
    returns, NaN when no symbol has one, as :func:`market_returns` gives) and returns that timestamp's
    probabilities: the batch :meth:`RegimeModel.predict_proba` on the same history, to rounding, because
    the inputs are the same rolling window (two-pass sample std of the last ``volatility_window`` returns)
    and the filter runs the same step (:meth:`RegimeModel._filter_step`). The state is the window of
    returns and the filter's probabilities (:meth:`state` / :meth:`restore`).
    """

    def __init__(self, model: RegimeModel) -> None:
        model._check_fitted()
        self.model = model
        self.returns_ = np.full(model.params.volatility_window, np.nan)  # oldest first
        self.filtered_: np.ndarray | None = None

    def update(self, market_return: float) -> np.ndarray:
        model = self.model
        window = self.returns_
        window[:-1] = window[1:]
        window[-1] = market_return
        log_volatility = np.nan
        if np.isfinite(window).all():
            volatility = float(np.sqrt(np.sum((window - window.mean()) ** 2) / (len(window) - 1)))
            if volatility > 0:
                log_volatility = math.log(volatility)
        z = (np.array([market_return, log_volatility]) - model.center_) / model.scale_
        if not np.isfinite(z).all():
            if model.transmat_ is None:
                return np.full(len(model.means_), np.nan)
            self.filtered_, probs = model._filter_step(self.filtered_, None)
            return probs
        log_b = model._log_emission(z[None, :])[0]
        if model.transmat_ is None:
            log_post = np.log(model.weights_) + log_b
            return np.exp(log_post - logsumexp(log_post))
        self.filtered_, probs = model._filter_step(self.filtered_, np.exp(log_b - log_b.max()))
        return probs

    def state(self) -> dict[str, np.ndarray]:
        """The arrays to save (NaN filter probabilities: not started yet)."""
        filtered = np.full(len(self.model.means_), np.nan) if self.filtered_ is None else self.filtered_
        return {"regime_returns": self.returns_.copy(), "regime_filtered": filtered.copy()}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.returns_ = np.asarray(arrays["regime_returns"], dtype=np.float64).copy()
        filtered = np.asarray(arrays["regime_filtered"], dtype=np.float64)
        self.filtered_ = None if np.isnan(filtered).all() else filtered.copy()


def _most_probable(probabilities: np.ndarray) -> np.ndarray:
    """Row-wise argmax as float, NaN where the probabilities are undefined."""
    defined = np.isfinite(probabilities).all(axis=1)
    regime = np.full(len(probabilities), np.nan)
    regime[defined] = np.argmax(probabilities[defined], axis=1)
    return regime


def _stationary(transmat: np.ndarray) -> np.ndarray:
    """The stationary distribution of a transition matrix (left eigenvector for eigenvalue 1)."""
    values, vectors = np.linalg.eig(transmat.T)
    vector = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    vector = np.abs(vector)
    return vector / vector.sum()


def regime_features(bars: pd.DataFrame, params: RegimeParams, fit_end: pd.Timestamp
                    ) -> tuple[RegimeModel, pd.DataFrame]:
    """Fit on the market returns up to ``fit_end`` (inclusive) and give every bar its causal regime features.

    Returns the model and :func:`apply_regime_features`'s frame. Pick ``fit_end`` as the end of the first
    walk-forward training window, e.g. ``WalkForward(...).split(timestamps)[0].train_end``, so no test
    window is ever used in fitting.
    """
    returns = market_returns(bars)
    train = returns[returns.index <= pd.Timestamp(fit_end)]
    model = RegimeModel(params).fit(train)
    return model, apply_regime_features(bars, model)


def apply_regime_features(bars: pd.DataFrame, model: RegimeModel) -> pd.DataFrame:
    """A fitted model's causal regime features for every bar (serving: load the model, no refit).

    A frame aligned with ``bars`` (same index and order) holding ``timestamp``, ``symbol`` and
    :func:`regime_columns`: one market-wide regime per timestamp, repeated for each symbol. The filter
    runs from the first bar of ``bars``, so hand it the whole history, not only the bars to score.
    """
    returns = market_returns(bars)
    table = model.predict_proba(returns)
    table.insert(0, "regime", _most_probable(table.to_numpy()))
    aligned = table.reindex(pd.DatetimeIndex(bars["timestamp"]))
    out = pd.DataFrame({"timestamp": bars["timestamp"].to_numpy(), "symbol": bars["symbol"].to_numpy()},
                       index=bars.index)
    for column in regime_columns(model.params.n_regimes):
        out[column] = aligned[column].to_numpy()
    return out


def current_regime(model: RegimeModel, returns: pd.Series) -> dict[str, Any]:
    """The regime and its probabilities at the last bar of ``returns`` (for the service to report)."""
    probs = model.predict_proba(returns)
    last = probs.iloc[-1]
    if not np.isfinite(last.to_numpy()).all():
        raise DataError(f"current_regime: inputs at {probs.index[-1]!r} are undefined; rule: at least "
                        f"{model.params.volatility_window + 1} bars of returns")
    return {"timestamp": str(probs.index[-1]), "regime": int(np.argmax(last.to_numpy())),
            "probabilities": [float(v) for v in last.to_numpy()]}


def plot_regimes(returns: pd.Series, model: RegimeModel, path: str | Path, *, title: str = "Market regimes") -> Path:
    """The market's cumulative log return shaded by the most probable (causal) regime, and below it each
    regime's filtered probability; the fitting window is marked. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alphaforge.io import atomic_write

    probabilities = model.predict_proba(returns)
    regime = _most_probable(probabilities.to_numpy())
    cumulative = returns.fillna(0.0).cumsum()
    colours = plt.get_cmap("RdYlGn_r")(np.linspace(0.15, 0.85, model.params.n_regimes))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[2, 1])
    top.plot(cumulative.index, cumulative.to_numpy(), color="black", linewidth=0.8)
    index = cumulative.index
    for k in range(model.params.n_regimes):  # one shaded span per run of bars in regime k
        inside = np.concatenate([[False], regime == k, [False]])
        starts, ends = np.flatnonzero(~inside[:-1] & inside[1:]), np.flatnonzero(inside[:-1] & ~inside[1:])
        for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
            top.axvspan(index[start], index[min(end, len(index) - 1)], color=colours[k], alpha=0.3, linewidth=0,
                        label=f"regime {k}" if number == 0 else None)
    stacked = probabilities.fillna(0.0).to_numpy().T  # stacked: the band heights are the probabilities
    bottom.stackplot(index, stacked, colors=colours, alpha=0.8, labels=[f"P(regime {k})"
                                                                       for k in range(model.params.n_regimes)])
    for axes in (top, bottom):
        axes.axvline(model.train_end_, color="#3b75af", linestyle="--", linewidth=1.0)
    top.set_ylabel("cumulative log return")
    top.set_title(f"{title}: {model.params.method.upper()}, {model.params.n_regimes} regimes, fitted up to "
                  f"{pd.Timestamp(model.train_end_).date()} (dashed); 0 = calmest")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_ylabel("filtered probability")
    bottom.set_ylim(-0.02, 1.02)
    bottom.legend(loc="upper left", fontsize=8, ncol=model.params.n_regimes)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda target: figure.savefig(target, format="png", dpi=100))
    finally:
        plt.close(figure)


def stored_feature_version(feature_version: str, regime_model: RegimeModel | None) -> str:
    """The version the online store stamps on vectors: the feature version, plus the identity of the regime
    model that filtered their ``regime_prob_*`` (a hash of its parameters), so the service never reads
    regime probabilities another regime model computed: ``"1"`` or ``"1+regimes-3f2a9c41d0be"``."""
    if regime_model is None:
        return str(feature_version)
    import hashlib

    digest = hashlib.sha256(json.dumps(regime_model.to_json(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{feature_version}+regimes-{digest}"
