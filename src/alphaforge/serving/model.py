"""A registered ensemble loaded for serving: validated input in, prediction + interval + version out.

:class:`ServedModel` wraps the same :class:`alphaforge.ensemble.PanelEnsemble` the MLflow pyfunc runs
(built by :func:`alphaforge.pyfunc.load_panel_ensemble` from the model folder's artifacts), so the
service and ``mlflow.pyfunc.load_model`` predict with one code path. On top of it sits a **row path**
for ensembles whose members are all row-wise (tabular) models: each family becomes a function of a
float64 matrix (LightGBM boosters called with one thread, the linear models folded into one affine
map, conformal and quantile intervals as offsets), and the combiner's :meth:`predict_matrix` joins
them. A one-row prediction then costs a few tens of microseconds instead of a pandas round trip; the
tests hold it equal to the pyfunc's predictions. Ensembles with sequence members (which need each
symbol's history) go through the panel path.

Input rules (each broken rule raises :class:`BadRequest` naming row, column and rule; the service
turns it into a 4xx): every feature the model was trained on, by name, and no other; finite numbers
only (no NaN or infinity: a client sends complete rows); at most ``max_rows`` rows; ``symbol`` a
non-empty string and ``timestamp`` a time-zone-aware time; one row per (symbol, timestamp).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.schema import DataError

log = logging.getLogger(__name__)

RowFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]


class BadRequest(DataError):
    """Input the service refuses; ``status`` is the HTTP status it answers with (400, 404, 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Prediction:
    """One answer: arrays aligned with the request's rows (NaN where no prediction could be made)."""

    prediction: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    model_name: str
    model_version: str
    variant: str = "champion"  # or challenger, or fallback (another model answered: the served one raised)
    fallback_reason: str | None = None

    def rows(self) -> list[dict[str, float | None]]:
        """JSON-able per-row values (None for NaN)."""
        def column(values: np.ndarray | None) -> list[float | None]:
            if values is None:
                return [None] * len(self.prediction)
            return [v if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]

        return [{"prediction": p, "lower": lo, "upper": hi} for p, lo, hi in
                zip(column(self.prediction), column(self.lower), column(self.upper), strict=True)]


# ------------------------------------------------------------------------------------------ the row path


def _linear_function(pipeline_model: Any, task: str) -> RowFunction | None:
    """Impute -> standardise -> linear model (-> target scaler) folded into ``x @ w + b`` (sigmoid for classes)."""
    try:
        if task == "classification":
            pipeline, target_scale, target_mean = pipeline_model, 1.0, 0.0
        else:
            pipeline = pipeline_model.regressor_
            target_scale = float(np.ravel(pipeline_model.transformer_.scale_)[0])
            target_mean = float(np.ravel(pipeline_model.transformer_.mean_)[0])
        fill = np.asarray(pipeline.named_steps["impute"].statistics_, dtype=np.float64)
        scaler = pipeline.named_steps["scale"]
        estimator = pipeline.named_steps["model"]
        mean = np.asarray(scaler.mean_, dtype=np.float64)
        scale = np.asarray(scaler.scale_, dtype=np.float64)
        coef = np.asarray(estimator.coef_, dtype=np.float64).reshape(-1)
        intercept = float(np.ravel(estimator.intercept_)[0])
    except (AttributeError, KeyError, IndexError):
        return None
    if not (len(fill) == len(mean) == len(coef)):
        return None
    weights = coef / scale * target_scale
    bias = (intercept - float(np.sum(coef * mean / scale))) * target_scale + target_mean

    def linear(x: np.ndarray) -> tuple[np.ndarray, None, None]:
        if np.isnan(x).any():
            x = np.where(np.isnan(x), fill, x)
        z = x @ weights + bias
        return (1.0 / (1.0 + np.exp(-z)) if task == "classification" else z), None, None

    return linear


class _LightGBMRows:
    """A booster's predictions: through its compiled code when the package has it (see
    :mod:`alphaforge.models.compiled`; checked equal at load), else one-row calls through LightGBM's
    single-row fast C API (its config, one thread, prepared once) and larger batches through
    ``Booster.predict(num_threads=1)``. Equal to ``Booster.predict``."""

    def __init__(self, booster: Any, compiled: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        import ctypes
        import threading
        import weakref

        from lightgbm.basic import _LIB, _c_str, _safe_call

        self.booster = booster
        self.compiled = compiled
        self.n_features = int(booster.num_feature())
        self._lock = threading.Lock()
        self._out = np.empty(1)
        self._out_len = ctypes.c_int64(0)
        self._config = ctypes.c_void_p()
        self._ctypes = ctypes
        self._predict_fast = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._safe_call = _safe_call
        try:  # predict type 0 (normal, transformed), all iterations, float64 rows
            _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(1),
                ctypes.c_int32(self.n_features), _c_str("num_threads=1"), ctypes.byref(self._config)))
        except Exception:  # an older or different LightGBM build: the plain path still works
            self._config = None
        else:
            weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled(x)
        if self._config is None or x.shape[0] != 1:
            return self.booster.predict(x, num_threads=1)
        row = np.ascontiguousarray(x[0], dtype=np.float64)
        with self._lock:  # one fast config, one output buffer
            self._safe_call(self._predict_fast(self._config, row.ctypes.data_as(self._ctypes.c_void_p),
                                               self._ctypes.byref(self._out_len), self._out_pointer))
            return self._out.copy()


def _point_function(model: Any, compiled: Callable[[np.ndarray], np.ndarray] | None = None) -> RowFunction | None:
    """A row function of a plain tabular forecaster (no interval), or None if it has no row path."""
    from alphaforge.models.tabular import LightGBMForecaster, TabularForecaster, _ScaledForecaster

    if isinstance(model, LightGBMForecaster):
        rows = _LightGBMRows(model.booster_, compiled)
        return lambda x: (rows(x), None, None)
    if isinstance(model, _ScaledForecaster) and model.family in ("ridge", "elastic_net"):
        linear = _linear_function(model.model_, model.task)
        if linear is not None:
            return linear
    if isinstance(model, TabularForecaster):
        return lambda x: (np.asarray(model._predict_matrix(x), dtype=np.float64).reshape(-1), None, None)
    return None


def row_function(model: Any, compiled: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None
                 ) -> RowFunction | None:
    """The family's prediction (and interval) as a function of its feature matrix; None when it needs history.

    ``compiled``: the family's compiled boosters by role (:func:`alphaforge.models.compiled.load_compiled`)."""
    from alphaforge.models.uncertainty import ConformalRegressor, QuantileLightGBM

    compiled = compiled or {}
    if isinstance(model, ConformalRegressor):
        inner = _point_function(model.model_, compiled.get("base"))
        if inner is None:
            return None
        half = float(model.residual_quantile_)

        def conformal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            point = inner(x)[0]
            return point, point - half, point + half

        return conformal
    if isinstance(model, QuantileLightGBM):
        point, lower, upper = (_LightGBMRows(getattr(model, f"{role}_").booster_, compiled.get(role))
                               for role in ("point", "lower", "upper"))

        def quantile(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            low, high = lower(x), upper(x)
            return point(x), np.minimum(low, high), np.maximum(low, high)

        return quantile
    if hasattr(model, "predict_with_uncertainty"):  # sequence models
        return None
    return _point_function(model, compiled.get("model"))


def _linear_combiner(combiner: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """``b + base @ w`` for the linear combiners (NaN in, NaN out, as their ``predict_matrix``), else None."""
    if combiner.kind == "voting" or getattr(combiner, "meta_learner", None) == "nnls_ridge":
        weights = np.array([combiner.weights_[f] for f in combiner.families], dtype=np.float64)
        intercept = float(getattr(combiner, "intercept_", 0.0)) if combiner.kind != "voting" else 0.0
        return lambda base: intercept + base @ weights
    return None


# ------------------------------------------------------------------------------------------ the model


@dataclass
class ServedModel:
    """An ensemble ready to answer (see the module docstring)."""

    name: str
    version: str
    ensemble: Any  # alphaforge.ensemble.PanelEnsemble
    source_dir: Path
    load_seconds: float = 0.0
    size_bytes: int = 0
    loaded_at: float = field(default_factory=time.time)
    _row_functions: list[tuple[np.ndarray, RowFunction]] | None = field(default=None, repr=False)
    compiled: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)  # (family, role) -> booster code
    # serving.online_weights: Hedge weights over the families replace the combiner (serving/online_weights.py)
    online: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.features: list[str] = list(self.ensemble.features)
        self.feature_index: dict[str, int] = {name: i for i, name in enumerate(self.features)}
        self._feature_set = set(self.features)
        self.spec: dict[str, Any] = dict(self.ensemble.spec)
        functions = []
        for family, model in self.ensemble.base_models.items():
            function = row_function(model, {role: code for (f, role), code in self.compiled.items() if f == family})
            if function is None:
                functions = None
                break
            columns = np.array([self.feature_index[n] for n in getattr(model, "feature_names_", self.features)])
            functions.append((columns, function))
        self._row_functions = functions
        # the panel path without pandas: row functions for the tabular members, the sequence members' array
        # method (same windows and seeded dropout masks as the frame method); None: the pandas panel path
        panel: list[tuple[np.ndarray, RowFunction | None, Any]] | None = None
        if functions is None:
            panel = []
            for family, model in self.ensemble.base_models.items():
                columns = np.array([self.feature_index[n] for n in getattr(model, "feature_names_", self.features)])
                function = row_function(model, {r: c for (f, r), c in self.compiled.items() if f == family})
                if function is not None:
                    panel.append((columns, function, None))
                elif hasattr(model, "predict_arrays_with_uncertainty") and getattr(model.params, "dropout", 0) > 0:
                    panel.append((columns, None, model))
                else:
                    panel = None
                    break
        self._panel_functions = panel
        self.combiner = self.ensemble.combiner
        weights = self.combiner.interval_weights()
        self._interval_weights = [weights[f] for f in self.combiner.families]
        self._combine = _linear_combiner(self.combiner) or self.combiner.predict_matrix
        self._init_regimes()

    # ------------------------------------------------------------------------------------- regimes

    def _init_regimes(self) -> None:
        """The regime model recorded in the spec (``regime_model``, the train stage's copy of
        models/regimes/model.json), so regime features come from raw bars without the repository's files."""
        from alphaforge.regimes import RegimeModel

        recorded = self.spec.get("regime_model")
        self.regime_model: Any = RegimeModel.from_json(recorded) if recorded else None
        self.regime_columns: list[str] = [f"regime_prob_{k}" for k in range(self.regime_model.params.n_regimes)] \
            if self.regime_model is not None else []
        # positions of the regime probabilities among the features (empty when the model does not use them)
        self.regime_positions: list[int] = ([self.feature_index[c] for c in self.regime_columns]
                                            if all(c in self.feature_index for c in self.regime_columns) else [])
        # the last regime the service reported from bars (predict_bars) or the online store (predict_symbols)
        self.last_regime: dict[str, Any] | None = None

    def regime_info(self) -> dict[str, Any] | None:
        """The regime model (size, kind, fit window) and the last regime computed, for ``/model_info``."""
        if self.regime_model is None:
            return None
        return {**self.regime_model.describe(), "features": self.regime_columns, "last": self.last_regime}

    @property
    def feature_version(self) -> str:
        return str(self.spec["feature_version"])

    @property
    def row_wise(self) -> bool:
        """Whether each row is predicted from its own features alone (every member tabular)."""
        return self._row_functions is not None

    @property
    def lookback(self) -> int:
        """Bars of history a sequence member needs before the row it predicts (0 when row-wise)."""
        return max((int(getattr(getattr(m, "params", None), "lookback", 0) or 0)
                    for m in self.ensemble.base_models.values()), default=0)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "families": list(self.ensemble.base_models),
                "combiner": self.combiner.kind, "features": self.features, "feature_version": self.feature_version,
                "target": self.spec.get("target"), "task": self.spec.get("task"), "horizon": self.spec.get("horizon"),
                "row_wise": self.row_wise, "lookback": self.lookback, "load_seconds": round(self.load_seconds, 4),
                "compiled_trees": sorted(f"{family}.{role}" for family, role in self.compiled),
                "size_bytes": self.size_bytes, "regimes": self.regime_info(),
                "online_weights": None if self.online is None else self.online.info()}

    # ----------------------------------------------------------------------------------- predicting

    def predict_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Prediction, lower, upper for a rows x features matrix in :attr:`features` order (row-wise models)."""
        if self._row_functions is None:
            raise BadRequest(f"model {self.name} v{self.version} has sequence members: send each symbol's last "
                             f"{self.lookback + 1} bars with symbol and timestamp, not independent rows")
        return self._combine_outputs([function(x[:, columns]) for columns, function in self._row_functions])

    def family_predictions(self, x: np.ndarray) -> np.ndarray:
        """Each family's prediction of the rows of ``x`` (rows x families, in :attr:`families` order; row path)."""
        if self._row_functions is None:
            raise BadRequest(f"model {self.name} v{self.version} has sequence members: per-family predictions of "
                             "independent rows need the row path")
        return np.column_stack([function(x[:, columns])[0] for columns, function in self._row_functions])

    @property
    def families(self) -> list[str]:
        return list(self.ensemble.base_models)

    def _combine_outputs(self, outputs: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The combiner over the members' predictions; the interval as the weighted members' offsets."""
        base = np.column_stack([out[0] for out in outputs])
        online = self.online.vector() if self.online is not None else None
        prediction = self._combine(base) if online is None else base @ online
        if all(out[1] is not None for out in outputs):
            weights = self._interval_weights if online is None else online.tolist()
            lower_offset = sum(w * (out[1] - out[0]) for w, out in zip(weights, outputs, strict=True))
            upper_offset = sum(w * (out[2] - out[0]) for w, out in zip(weights, outputs, strict=True))
            return prediction, prediction + lower_offset, prediction + upper_offset
        return prediction, None, None

    def predict_panel(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The panel path (any ensemble): ``frame`` holds timestamp, symbol and the features, any row order."""
        order = np.lexsort((frame["timestamp"].to_numpy(), frame["symbol"].astype(str).to_numpy()))
        ordered = frame.iloc[order].reset_index(drop=True)
        out = self.ensemble.predict(ordered)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        prediction = out["prediction"].to_numpy(dtype=np.float64)[inverse]
        if "lower" in out.columns:
            return (prediction, out["lower"].to_numpy(dtype=np.float64)[inverse],
                    out["upper"].to_numpy(dtype=np.float64)[inverse])
        return prediction, None, None

    def predict_panel_matrix(self, x: np.ndarray, symbols: Sequence[str],
                             timestamps: Sequence[datetime] | pd.DatetimeIndex
                             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`predict_panel` on arrays: rows sorted by (symbol, time), each member on its columns, combined."""
        names = np.asarray([str(s) for s in symbols])
        order = np.lexsort((pd.DatetimeIndex(timestamps).asi8, names))
        ordered = x[order]
        _, codes = np.unique(names[order], return_inverse=True)
        outputs = []
        for columns, function, sequence in self._panel_functions or ():
            if function is not None:
                outputs.append(function(ordered[:, columns]))
            else:
                outputs.append(sequence.predict_arrays_with_uncertainty(ordered[:, columns], codes))
        combined = self._combine_outputs(outputs)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return tuple(None if part is None else part[inverse] for part in combined)  # type: ignore[return-value]

    def predict(self, x: np.ndarray, symbols: Sequence[str], timestamps: Sequence[datetime] | pd.DatetimeIndex
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Validated rows in, the row path when possible, else the panel path."""
        if self.row_wise:
            return self.predict_matrix(x)
        if self._panel_functions is not None:
            return self.predict_panel_matrix(x, symbols, timestamps)
        frame = pd.DataFrame(x, columns=self.features)
        frame.insert(0, "symbol", list(symbols))
        frame.insert(0, "timestamp", pd.DatetimeIndex(timestamps))
        return self.predict_panel(frame)

    def warm_up(self) -> None:
        """One prediction on a zero row (row-wise) so the first real request pays no lazy initialisation; a model
        over Alpha158 also loads (or compiles) the feature kernels that ``/predict_bars`` runs."""
        if self.row_wise:
            self.predict_matrix(np.zeros((1, len(self.features))))
        if (self.spec.get("feature_params") or {}).get("set") == "alpha158":
            from alphaforge import alpha158

            log.info("serving: Alpha158 feature kernels ready in %.2f s", alpha158.warm_up())

    # ----------------------------------------------------------------------------------- input checks

    def matrix_from_records(self, rows: Sequence[Mapping[str, Any]], *, max_rows: int, trusted: bool = False
                            ) -> np.ndarray:
        """The float64 matrix of ``rows`` (each a mapping feature name -> number), checked by the input rules.

        ``trusted``: every value is already known to be a float (a strict pydantic model parsed the request),
        so only the names and finiteness are checked.
        """
        check_row_count(len(rows), max_rows)
        features, wanted = self.features, self.feature_index
        expected = self._feature_set
        if trusted:  # dicts or other mappings (a gRPC feature map) of floats: only the names to check
            values = [self.feature_values(row) for row in rows]
            if None not in values:
                x = np.array(values, dtype=np.float64)
                check_finite(x, features)
                return x
        elif all(type(row) is dict and row.keys() == expected for row in rows):
            try:  # the common case: exactly the model's features, numbers only
                x = np.array([[row[name] for name in features] for row in rows], dtype=np.float64)
            except (TypeError, ValueError):
                x = None
            if x is not None and all(type(v) in (float, int) for row in rows for v in row.values()):
                check_finite(x, features)
                return x
        x = np.empty((len(rows), len(self.features)))
        for r, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise BadRequest(f"row {r}: features must be an object of feature name -> number, "
                                 f"got {type(row).__name__}")
            if len(row) != len(wanted) or any(name not in wanted for name in row):
                missing = [n for n in self.features if n not in row]
                unknown = [n for n in row if n not in wanted]
                raise BadRequest(
                    f"row {r}: wrong features for model {self.name} v{self.version} (feature version "
                    f"{self.feature_version}, {len(self.features)} features): "
                    + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                                  f"unknown {unknown}" if unknown else "") if part))
            for name, value in row.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise BadRequest(f"row {r}, feature {name!r}: {value!r} is not a number")
                x[r, wanted[name]] = value
        check_finite(x, self.features)
        return x

    def feature_values(self, row: Mapping[str, Any]) -> list[Any] | None:
        """The row's values in :attr:`features` order when it holds exactly the model's features (names only are
        checked: the caller knows the values are floats), else None (:meth:`matrix_from_records` then says what
        is wrong). For dicts and for other mappings, such as a gRPC message's feature map, without copying."""
        if type(row) is dict:
            return [row[name] for name in self.features] if row.keys() == self._feature_set else None
        values = list(map(row.get, self.features))  # one bound get for all names: half a comprehension's cost
        return values if len(row) == len(values) and None not in values else None

    def matrix_from_columns(self, columns: Mapping[str, np.ndarray], n_rows: int, *, max_rows: int) -> np.ndarray:
        """The matrix of a columnar body (Arrow, gRPC): same rules as :meth:`matrix_from_records`."""
        check_row_count(n_rows, max_rows)
        missing = [n for n in self.features if n not in columns]
        unknown = [n for n in columns if n not in self.feature_index]
        if missing or unknown:
            raise BadRequest(
                f"wrong features for model {self.name} v{self.version} (feature version {self.feature_version}, "
                f"{len(self.features)} features): "
                + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                              f"unknown {unknown}" if unknown else "") if part))
        x = np.empty((n_rows, len(self.features)))
        for name, i in self.feature_index.items():
            values = columns[name]
            if values.dtype.kind not in "fiu":
                raise BadRequest(f"feature {name!r}: expected numbers, got {values.dtype}")
            if len(values) != n_rows:
                raise BadRequest(f"feature {name!r}: {len(values)} values for {n_rows} rows")
            x[:, i] = values
        check_finite(x, self.features)
        return x


def check_row_count(n_rows: int, max_rows: int) -> None:
    if n_rows == 0:
        raise BadRequest("no rows to predict")
    if n_rows > max_rows:
        raise BadRequest(f"{n_rows} rows in one request; the limit is {max_rows} (serving.max_batch_rows): "
                         "split the batch", status=413)


def check_finite(x: np.ndarray, features: Sequence[str]) -> None:
    """Refuse NaN or infinite inputs, naming the first bad row and feature."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = (int(v[0]) for v in np.nonzero(bad))
        raise BadRequest(f"row {row}, feature {features[column]!r}: {x[row, column]} is not a finite number; "
                         "send complete rows (no NaN or infinity)")


# ISO text -> its UTC time, for check_keys: every row of a bar repeats the bar's time, and a one-row request (the
# gRPC stream's) spends more on parsing it than on the rest of its keys' checks; bounded, emptied when full
_PARSED: dict[str, datetime] = {}
_PARSED_LIMIT = 4096


def _iso_time(r: int, stamp: str) -> datetime:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        raise BadRequest(f"row {r}, timestamp: {stamp!r} is not an ISO 8601 time") from None


def _utc(r: int, stamp: Any, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadRequest(f"row {r}, timestamp: {stamp!r} has no time zone; send e.g. 2024-01-02T00:00:00Z")
    return value.astimezone(UTC)


def check_keys(symbols: Sequence[Any], timestamps: Sequence[Any]) -> list[datetime]:
    """Symbols non-empty strings, timestamps time-zone-aware, one row per (symbol, timestamp); UTC datetimes back."""
    parsed: list[datetime] = []
    for r, (symbol, stamp) in enumerate(zip(symbols, timestamps, strict=True)):
        if not isinstance(symbol, str) or not symbol:
            raise BadRequest(f"row {r}, symbol: {symbol!r} is not a non-empty string")
        if isinstance(stamp, str):
            value = _PARSED.get(stamp)
            if value is None:
                value = _utc(r, stamp, _iso_time(r, stamp))
                if len(_PARSED) >= _PARSED_LIMIT:
                    _PARSED.clear()
                _PARSED[stamp] = value
            parsed.append(value)
        elif isinstance(stamp, datetime):
            parsed.append(_utc(r, stamp, stamp))
        else:
            raise BadRequest(f"row {r}, timestamp: {stamp!r} is not a time")
    if len(parsed) > 1:
        seen: set[tuple[str, datetime]] = set()
        for symbol, value in zip(symbols, parsed, strict=True):
            if (symbol, value) in seen:
                raise BadRequest(f"rows repeat (symbol, timestamp) {symbol!r}, {value.isoformat()}; "
                                 "rule: one row per symbol and bar")
            seen.add((symbol, value))
    return parsed


# ------------------------------------------------------------------------------------------ loading


def model_artifacts(model_dir: Path) -> dict[str, str]:
    """The pyfunc artifact mapping (name -> local path) recorded in a model folder's ``MLmodel`` file."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{mlmodel} is missing: {model_dir} is not an MLflow model folder")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~1 ms, the Python parser ~20 ms
    flavors = (yaml.load(mlmodel.read_text(), Loader=loader) or {}).get("flavors", {})
    artifacts = (flavors.get("python_function", {}) or {}).get("artifacts") or {}
    if not artifacts:
        raise FileNotFoundError(f"{mlmodel}: the python_function flavor lists no artifacts; not an alphaforge "
                                "ensemble")
    return {key: str(model_dir / entry["path"]) for key, entry in artifacts.items()}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_served_model(model_dir: str | Path, *, name: str, version: str, torch_threads: int = 0) -> ServedModel:
    """A :class:`ServedModel` from a local MLflow model folder (downloaded from the registry), warmed up.

    ``torch_threads`` > 0 sets torch's intra-op threads when the ensemble has a torch member: one request's
    windows are too small to gain from a thread pool, whose spinning threads took the CPU from the
    service's other work (a 2-core machine: mean 110 ms per one-window request with torch's default, see
    benchmarks/serving.py)."""
    from alphaforge.models.compiled import load_compiled
    from alphaforge.pyfunc import COMPILED_ARTIFACT, load_panel_ensemble

    folder = Path(model_dir)
    started = time.perf_counter()
    artifacts = model_artifacts(folder)
    ensemble = load_panel_ensemble(artifacts)
    compiled = load_compiled(artifacts.get(COMPILED_ARTIFACT), ensemble.base_models)
    model = ServedModel(name=name, version=str(version), ensemble=ensemble, source_dir=folder,
                        size_bytes=folder_bytes(folder), compiled=compiled)
    if torch_threads > 0 and not model.row_wise:
        import torch

        torch.set_num_threads(torch_threads)
    model.warm_up()
    model.load_seconds = time.perf_counter() - started
    log.info("serving: loaded %s v%s (%s, %d features, %s path, %d compiled boosters) in %.1f ms", name, version,
             "+".join(model.ensemble.base_models), len(model.features), "row" if model.row_wise else "panel",
             len(compiled), model.load_seconds * 1000)
    return model
