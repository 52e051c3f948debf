"""The service's requests and answers, and the handlers both transports (HTTP and gRPC) call.

Every handler takes plain values, checks them by the rules of :mod:`alphaforge.serving.model`
(raising :class:`BadRequest`, which HTTP answers with its 4xx and gRPC with ``INVALID_ARGUMENT``,
``NOT_FOUND`` or ``RESOURCE_EXHAUSTED``), and returns the pydantic answer the HTTP API serialises.
Keeping validation here, not in a transport, is what makes HTTP and gRPC answer alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, Strict

from alphaforge.schema import DataError
from alphaforge.serving.host import ModelHost, NoModel, new_request_id
from alphaforge.serving.model import BadRequest, Prediction, ServedModel, check_finite, check_keys, check_row_count

Variant = Literal["champion", "challenger"]
ServedVariant = Literal["champion", "challenger", "fallback"]  # fallback: the served model raised, another answered


class FeatureRow(BaseModel):
    """One row to predict: the bar it is for and the model's features by name."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(..., min_length=1, description="instrument, e.g. AAPL")
    timestamp: str = Field(..., description="the bar's time, ISO 8601 with a time zone, e.g. 2022-12-30T00:00:00Z")
    features: dict[str, Annotated[float, Strict()]] = Field(..., description="every feature of the model (see /model_info), finite numbers")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[FeatureRow] = Field(..., description="one or more rows (at most serving.max_batch_rows)")
    model: str | None = Field(None, description="registered model name (default: the service's main model)")
    request_id: str | None = Field(None, max_length=128, description="your id for this request (logged)")
    variant: Variant | None = Field(None, description="force champion or challenger (default: A/B routing)")


class RowsRequest(Protocol):
    """What the row path reads of a request: a :class:`PredictRequest`, or the light view of a gRPC stream
    message (:class:`alphaforge.serving.grpc_server.StreamRequest`, whose rows are the message's own). Each row
    has ``symbol``, ``timestamp`` and ``features`` (a mapping feature name -> float)."""

    @property
    def rows(self) -> Sequence[Any]: ...

    @property
    def model(self) -> str | None: ...

    @property
    def request_id(self) -> str | None: ...

    @property
    def variant(self) -> str | None: ...


class RowPrediction(BaseModel):
    symbol: str
    timestamp: str
    prediction: float | None = Field(None, description="the ensemble's forecast (null when none could be made)")
    lower: float | None = Field(None, description="lower end of the prediction interval")
    upper: float | None = Field(None, description="upper end of the prediction interval")


class RegimeReport(BaseModel):
    """The market regime at the latest bar of a request (models trained with regime features only)."""

    timestamp: str = Field(..., description="the bar the regime is as of (the request's latest timestamp)")
    regime: int = Field(..., description="the most probable regime: 0 the calmest, n_regimes - 1 the most turbulent")
    probabilities: list[float] = Field(..., description="P(regime k | market bars up to timestamp), k = 0..n-1")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    variant: ServedVariant
    feature_version: str
    target: str | None
    request_id: str
    predictions: list[RowPrediction]
    fallback_reason: str | None = Field(None, description="present when variant is fallback: which model raised "
                                        "what, and which model answered instead")
    regime: RegimeReport | None = Field(None, description="present when the model uses regime features: "
                                        "/predict_bars computes it from the bars with the model's regime model, "
                                        "/predict and /predict_symbols read it from the regime_prob_* inputs")


class Bar(BaseModel):
    """One raw bar in the canonical schema (columns a source lacks may be left out)."""

    model_config = ConfigDict(extra="forbid")

    timestamp: str
    symbol: str = Field(..., min_length=1)
    close: float
    open: float | None = None
    high: float | None = None
    low: float | None = None
    volume: float | None = None
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None


class PredictBarsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: list[Bar] = Field(..., description="each symbol's recent bars, enough history for the longest window")
    model: str | None = None
    request_id: str | None = Field(None, max_length=128)
    last_only: bool = Field(True, description="answer only each symbol's last bar (else every bar with features)")


class OutcomeRow(FeatureRow):
    """A served row whose return is now known: its features (as sent to /predict) and the realised return."""

    realised: Annotated[float, Strict()] = Field(..., description="the next-bar execution return of the row's bar "
                                                 "(forward_return_1: bar t+1's execution price to the next bar's)")


class OutcomesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[OutcomeRow] = Field(..., description="rows of one or more bars; each bar is one Hedge step")
    model: str | None = None


class SymbolsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(..., min_length=1, description="symbols whose latest stored features to predict")
    model: str | None = None
    request_id: str | None = Field(None, max_length=128)


# ---------------------------------------------------------------------------------------------- handlers


def _answer(prediction: Prediction, model: ServedModel, request_id: str, symbols: Sequence[str],
            timestamps: Sequence[Any], regime: dict[str, Any] | None = None,
            values: Sequence[dict[str, float | None]] | None = None) -> dict[str, Any]:
    """The answer as plain data in the shape of :class:`PredictResponse` (built without re-validating it);
    ``values``: the rows' ``prediction.rows()`` when already computed (a micro-batch converts them at once)."""
    rows = [{"symbol": s, "timestamp": t if isinstance(t, str) else t.isoformat(), **row_values}
            for s, t, row_values in zip(symbols, timestamps, prediction.rows() if values is None else values,
                                        strict=True)]
    answer = {"model_name": prediction.model_name, "model_version": prediction.model_version,
              "variant": prediction.variant, "feature_version": model.feature_version,
              "target": model.spec.get("target"), "request_id": request_id, "predictions": rows}
    if prediction.fallback_reason is not None:
        answer["fallback_reason"] = prediction.fallback_reason
    if regime is not None:
        answer["regime"] = regime
    return answer


def regime_report(timestamp: Any, probabilities: Sequence[float]) -> dict[str, Any] | None:
    """A :class:`RegimeReport` as plain data (None while the probabilities are undefined, e.g. short history)."""
    values = [float(v) for v in probabilities]
    if not values or not all(math.isfinite(v) for v in values):
        return None
    stamp = timestamp if isinstance(timestamp, str) else pd.Timestamp(timestamp).isoformat()
    return {"timestamp": stamp, "regime": max(range(len(values)), key=values.__getitem__), "probabilities": values}


def _regime_of_rows(model: ServedModel, rows: Sequence[Any], timestamps: Sequence[Any]
                    ) -> dict[str, Any] | None:
    """The regime of the latest row, read from its regime_prob_* inputs (a few dict lookups: the hot path)."""
    if not model.regime_positions:
        return None
    latest = 0 if len(rows) == 1 else max(range(len(rows)), key=timestamps.__getitem__)
    features = rows[latest].features
    return regime_report(rows[latest].timestamp, [features[c] for c in model.regime_columns])


def _regime_of_frame(model: ServedModel, frame: pd.DataFrame) -> dict[str, Any] | None:
    """The regime at the frame's latest timestamp (one market-wide value per timestamp), from its columns."""
    if not model.regime_positions or frame.empty or not set(model.regime_columns) <= set(frame.columns):
        return None
    stamps = pd.DatetimeIndex(frame["timestamp"])
    latest = int(np.argmax(stamps.asi8))
    return regime_report(stamps[latest], frame[model.regime_columns].iloc[latest].to_numpy(dtype=np.float64))


def to_json(answer: dict[str, Any]) -> bytes:
    """The answer's JSON body, strict JSON (the answer never holds NaN), by orjson: a tenth of ``json.dumps``'s
    cost, which was a few percent of a one-row request's."""
    return orjson.dumps(answer)


def predict_rows(host: ModelHost, request: RowsRequest, request_id: str | None = None) -> dict[str, Any]:
    """Feature rows in, predictions out (the row path for tabular ensembles); ``request_id`` overrides the
    request's own (the micro-batcher gives each request its id before routing it)."""
    request_id = request_id or request.request_id or new_request_id()
    rows = request.rows
    symbols = [row.symbol for row in rows]

    check_row_count(len(rows), host.params.max_batch_rows)
    timestamps = check_keys(symbols, [row.timestamp for row in rows])

    def build(model: ServedModel) -> tuple[np.ndarray, list[str], list[Any]]:
        # pydantic has already held every value to a strict float
        x = model.matrix_from_records([row.features for row in rows], max_rows=host.params.max_batch_rows,
                                      trusted=True)
        return x, symbols, timestamps

    prediction, model = host.predict(name=request.model, build=build, request_id=request_id, variant=request.variant)
    return answer_rows(prediction, model, request_id, request, timestamps)


def answer_rows(prediction: Prediction, model: ServedModel, request_id: str, request: RowsRequest,
                timestamps: Sequence[Any], values: Sequence[dict[str, float | None]] | None = None) -> dict[str, Any]:
    """The answer to a :class:`PredictRequest` (``timestamps``: its rows' parsed times), timestamps as sent;
    ``values``: its rows' prediction values when a batch computed them (see :func:`_answer`)."""
    rows = request.rows
    return _answer(prediction, model, request_id, [row.symbol for row in rows], [row.timestamp for row in rows],
                   _regime_of_rows(model, rows, timestamps) if model.regime_positions else None, values)


def record_outcomes(host: ModelHost, request: OutcomesRequest) -> dict[str, Any]:
    """Realised returns of served rows move the champion's online Hedge weights (serving.online_weights)."""
    rows = request.rows
    check_row_count(len(rows), host.params.max_batch_rows)
    timestamps = check_keys([row.symbol for row in rows], [row.timestamp for row in rows])
    realised = np.array([row.realised for row in rows], dtype=np.float64)
    if not np.isfinite(realised).all():
        raise BadRequest(f"row {int(np.flatnonzero(~np.isfinite(realised))[0])}, realised: not a finite number")

    def x_of(model: ServedModel) -> np.ndarray:
        return model.matrix_from_records([row.features for row in rows], max_rows=host.params.max_batch_rows,
                                         trusted=True)

    return host.record_outcomes(request.model, x_of, timestamps, realised)


def predict_columns(host: ModelHost, columns: Mapping[str, np.ndarray], symbols: Sequence[str],
                    timestamps: Sequence[Any], *, model_name: str | None = None, request_id: str | None = None,
                    variant: str | None = None) -> tuple[Prediction, ServedModel, str]:
    """Columnar input (Arrow IPC body, gRPC): feature name -> values, plus symbols and timestamps."""
    request_id = request_id or new_request_id()
    n_rows = len(symbols)

    def build(model: ServedModel) -> tuple[np.ndarray, Sequence[str], list[Any]]:
        check_row_count(n_rows, host.params.max_batch_rows)
        if len(timestamps) != n_rows:
            raise BadRequest(f"{len(timestamps)} timestamps for {n_rows} symbols; one each per row")
        stamps = check_keys(list(symbols), timestamps)
        return model.matrix_from_columns(columns, n_rows, max_rows=host.params.max_batch_rows), symbols, stamps

    prediction, model = host.predict(name=model_name, build=build, request_id=request_id, variant=variant)
    return prediction, model, request_id


def bars_frame(bars: Sequence[Bar], max_bars: int) -> pd.DataFrame:
    """The request's bars as a canonical frame sorted by symbol and time (absent columns left out)."""
    if not bars:
        raise BadRequest("no bars")
    if len(bars) > max_bars:
        raise BadRequest(f"{len(bars)} bars in one request; the limit is {max_bars} "
                         "(serving.max_bars_per_request)", status=413)
    records = [bar.model_dump() for bar in bars]
    frame = pd.DataFrame.from_records(records)
    optional = [c for c in ("open", "high", "low", "volume", "bid", "ask", "bid_size", "ask_size")
                if c in frame.columns]
    partial = [c for c in optional if frame[c].isna().any() and frame[c].notna().any()]
    if partial:
        row = int(np.flatnonzero(frame[partial[0]].isna().to_numpy())[0])
        raise BadRequest(f"bar {row}: column {partial[0]!r} is missing while other bars have it; "
                         "rule: a column is given for every bar or for none")
    frame = frame.drop(columns=[c for c in optional if frame[c].isna().all()])
    stamps = check_keys(frame["symbol"].tolist(), frame["timestamp"].tolist())
    frame["timestamp"] = stamps
    frame["symbol"] = frame["symbol"].astype(str)
    return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def _split_at_suspensions(bars: pd.DataFrame, rule: dict[str, float] | None) -> pd.DataFrame:
    """``bars`` with each series a suspension splits as its own symbol (validate's rule, recorded in the model's
    spec), so features restart there as they did in training; the caller puts the real symbols back."""
    from alphaforge.validate import ValidationParams, as_series, assign_segments

    settings = ValidationParams()
    if rule:
        settings = settings.model_copy(update={"max_gap_bars": rule["max_gap_bars"],
                                               "max_closure": f"{rule['max_closure_days']}D"})
    return as_series(bars.assign(segment=assign_segments(bars, settings))).drop(columns="segment")


def features_of_bars(model: ServedModel, bars: pd.DataFrame, default_params: Any) -> pd.DataFrame:
    """The model's features of ``bars``, computed by the training code with the model's own feature settings."""
    from alphaforge.features import FeatureParams, compute_features

    recorded = model.spec.get("feature_params")
    params = FeatureParams(**recorded) if recorded else default_params
    if params.regimes and model.regime_model is None:  # a model trained without regime features
        params = params.model_copy(update={"regimes": False})
    try:
        series = _split_at_suspensions(bars, model.spec.get("suspensions"))
        features = compute_features(series, params, regime_model=model.regime_model)
    except DataError as err:
        raise BadRequest(f"bars: {err}") from err
    features["symbol"] = bars["symbol"].to_numpy()
    missing = [f for f in model.features if f not in features.columns]
    if missing:
        raise BadRequest(f"the bars sent cannot give feature(s) {missing} the model needs "
                         "(columns the bars lack, or a single symbol where cross-sectional ranks need several)")
    return features


def predict_bars(host: ModelHost, request: PredictBarsRequest, default_feature_params: Any) -> dict[str, Any]:
    """Raw recent bars in: features computed online by the training code, then the model."""
    request_id = request.request_id or new_request_id()
    bars = bars_frame(request.bars, host.params.max_bars_per_request)
    model = host.model(request.model)
    features = features_of_bars(model, bars, default_feature_params)
    regime = _regime_of_frame(model, features)
    if regime is not None:
        model.last_regime = {**regime, "route": "predict_bars"}
    if request.last_only:
        chosen = features.groupby("symbol", sort=False).tail(1)
    else:
        chosen = features
    x_all = chosen[model.features].to_numpy(dtype=np.float64)
    complete = np.isfinite(x_all).all(axis=1)
    if model.row_wise:
        if not complete.any():
            raise BadRequest(f"no bar has every feature yet: send more history (at least "
                             f"{min_history_bars(model)} bars per symbol)")
        chosen = chosen[complete]
    symbols = chosen["symbol"].astype(str).tolist()
    timestamps = pd.DatetimeIndex(chosen["timestamp"])

    def build(served: ServedModel) -> tuple[np.ndarray, list[str], pd.DatetimeIndex]:
        if served.row_wise:
            return chosen[served.features].to_numpy(dtype=np.float64), symbols, timestamps
        return features[served.features].to_numpy(dtype=np.float64), features["symbol"].astype(str).tolist(), \
            pd.DatetimeIndex(features["timestamp"])

    prediction, served = host.predict(name=request.model, build=build, request_id=request_id, variant="champion")
    if not served.row_wise:  # the panel path predicted every bar; keep the chosen ones
        keep = features.index.isin(chosen.index)
        prediction = Prediction(prediction.prediction[keep], None if prediction.lower is None else
                                prediction.lower[keep], None if prediction.upper is None else prediction.upper[keep],
                                prediction.model_name, prediction.model_version, prediction.variant,
                                prediction.fallback_reason)
    return _answer(prediction, served, request_id, symbols, timestamps, regime)


def predict_symbols(host: ModelHost, request: SymbolsRequest, store: Any) -> dict[str, Any]:
    """Each symbol's latest features from the online store (what ``alphaforge stream`` wrote), then the model.

    A symbol never streamed (or expired) is a 404; features of another feature version a 400 (the store
    stamps every vector with its version, the model its own).
    """
    from alphaforge.featurestore.online import FeatureVersionMismatch, MissingFeatures, StoreUnavailable

    if store is None:
        raise BadRequest("no online feature store is configured (feature_store.redis_url); use /predict or "
                         "/predict_bars", status=404)
    request_id = request.request_id or new_request_id()
    model = host.model(request.model)
    symbols = list(dict.fromkeys(request.symbols))
    if len(symbols) != len(request.symbols):
        raise BadRequest("symbols repeat; ask for each symbol once")
    check_row_count(len(symbols), host.params.max_batch_rows)
    try:
        vectors = store.read(symbols, features=model.features)
        _check_stored_versions(model, vectors)
    except MissingFeatures as err:
        raise BadRequest(f"no stored features for {err.args[0] if err.args else symbols}; stream their bars first "
                         "(alphaforge stream)", status=404) from None
    except FeatureVersionMismatch as err:
        raise BadRequest(str(err)) from None
    except StoreUnavailable as err:
        raise NoModel(str(err)) from err
    except DataError as err:
        hint = ("; the model uses regime features: stream with its regime model (features.regimes on, "
                "alphaforge stream --regime-model), or use /predict_bars" if model.regime_columns else "")
        raise BadRequest(f"{err}{hint}") from None
    timestamps = [t.to_pydatetime() for t in pd.DatetimeIndex(vectors["timestamp"])]
    found = vectors["symbol"].astype(str).tolist()

    def build(served: ServedModel) -> tuple[np.ndarray, list[str], list[Any]]:
        if list(served.features) != list(model.features):
            raise BadRequest(f"model {served.name} v{served.version} uses other features than the store's vectors")
        x = vectors[served.features].to_numpy(dtype=np.float64)
        check_finite(x, served.features)
        return x, found, timestamps

    prediction, served = host.predict(name=request.model, build=build, request_id=request_id, variant="champion")
    regime = _regime_of_frame(served, vectors)
    if regime is not None:
        served.last_regime = {**regime, "route": "predict_symbols"}
    return _answer(prediction, served, request_id, found, timestamps, regime)


def _check_stored_versions(model: ServedModel, vectors: pd.DataFrame) -> None:
    """Stored vectors must be of the model's feature version and, when the model reads regime probabilities,
    filtered by the model's own regime model (:func:`alphaforge.regimes.stored_feature_version`)."""
    from alphaforge.featurestore.online import FeatureVersionMismatch
    from alphaforge.regimes import stored_feature_version

    uses_regimes = bool(model.regime_positions)
    wanted = stored_feature_version(model.feature_version, model.regime_model if uses_regimes else None)
    for symbol, version in zip(vectors["symbol"], vectors["feature_version"].astype(str), strict=True):
        if (version if uses_regimes else version.split("+", 1)[0]) != (wanted if uses_regimes else
                                                                        model.feature_version):
            why = ("their regime probabilities come from another regime model than the one this model was trained "
                   "with; re-stream with alphaforge stream --regime-model <the served model's spec.json>"
                   if uses_regimes and version.split("+", 1)[0] == model.feature_version else
                   "re-stream the bars with the matching feature definitions")
            raise FeatureVersionMismatch(f"stored features of {symbol!r} have version {version!r}; model "
                                         f"{model.name} v{model.version} needs {wanted!r}: {why}")


def min_history_bars(model: ServedModel) -> int:
    """Bars per symbol before every feature of the model's settings exists (the longest window, plus one)."""
    params = model.spec.get("feature_params") or {}
    windows = [1]
    for key, value in params.items():
        if isinstance(value, int) and not isinstance(value, bool):
            windows.append(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            windows.extend(value)
    slow = int(params.get("macd_slow", 26)) + int(params.get("macd_signal", 9))
    if model.regime_model is not None:  # the regime filter's volatility window of market returns
        windows.append(model.regime_model.params.volatility_window + 1)
    if params.get("set") in ("alpha158", "alpha360"):  # the longest window (60 bars) and the one before it
        from alphaforge.alpha158 import HISTORY

        windows.append(HISTORY)
    return max(max(windows), slow) + 1 + model.lookback


# ---------------------------------------------------------------------------------------------- Arrow IPC


ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"


def read_arrow(body: bytes) -> tuple[dict[str, np.ndarray], list[str], list[Any]]:
    """Feature columns, symbols and timestamps from an Arrow IPC stream body."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise BadRequest(f"body is not an Arrow IPC stream ({err}); send Content-Type {ARROW_MEDIA_TYPE}") from None
    for key in ("symbol", "timestamp"):
        if key not in table.column_names:
            raise BadRequest(f"Arrow body: column {key!r} is missing (need symbol, timestamp and every feature)")
    timestamp_type = table.schema.field("timestamp").type
    if not pa.types.is_timestamp(timestamp_type) or timestamp_type.tz is None:
        raise BadRequest(f"Arrow body: column 'timestamp' is {timestamp_type}; rule: a timestamp with a time zone")
    symbols = table.column("symbol").to_pylist()
    timestamps = table.column("timestamp").to_pandas().tolist()
    columns = {}
    for name in table.column_names:
        if name in ("symbol", "timestamp"):
            continue
        column = table.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise BadRequest(f"Arrow body: feature {name!r} is {column.type}; rule: numbers")
        columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return columns, symbols, timestamps


def write_arrow(prediction: Prediction) -> bytes:
    """The answer as an Arrow IPC stream: prediction, lower, upper (NaN where none)."""
    import pyarrow as pa

    n = len(prediction.prediction)
    empty = np.full(n, np.nan)
    table = pa.table({"prediction": prediction.prediction,
                      "lower": prediction.lower if prediction.lower is not None else empty,
                      "upper": prediction.upper if prediction.upper is not None else empty})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def arrow_body(frame: pd.DataFrame) -> bytes:
    """A client's request body: ``frame`` (symbol, timestamp with time zone, features) as an Arrow IPC stream."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
