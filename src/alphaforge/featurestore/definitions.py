"""Feature definitions as data: what each feature is, what it needs, and how much history.

The names and their order come from :func:`alphaforge.features.feature_plan`, the same plan
:func:`~alphaforge.features.compute_features` follows; this module only attaches metadata to
each planned name (an unknown name raises, so a feature added to the batch library without a
definition fails the tests instead of going unlisted).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from alphaforge import alpha158, alpha360
from alphaforge.features import FEATURE_VERSION, FeatureParams, feature_plan, processed_columns
from alphaforge.featurestore.exogenous import SERIES

if TYPE_CHECKING:
    from alphaforge.regimes import RegimeModel

#: The bar columns any feature can use, beyond the keys.
ALL_BAR_COLUMNS: frozenset[str] = frozenset(
    {"open", "high", "low", "close", "volume", "bid", "ask", "bid_size", "ask_size"}
)
_ALPHA158: frozenset[str] = frozenset(alpha158.all_names())
_ALPHA360: frozenset[str] = frozenset(alpha360.all_names())


@dataclass(frozen=True)
class FeatureDefinition:
    """One feature: ``window`` is the bars of a symbol's history (the current one included) needed
    before the first value exists; ``recursive`` features (exponential and Wilder averages) keep
    memory of every bar since the symbol's first, so only the engine's saved state (or the
    symbol's whole history) reproduces them exactly."""

    name: str
    description: str
    dtype: str
    inputs: tuple[str, ...]
    window: int
    recursive: bool
    cross_sectional: bool
    group: str
    version: str

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["inputs"] = list(self.inputs)
        return out


def _base_definition(name: str, params: FeatureParams) -> tuple[str, tuple[str, ...], int, bool, str]:
    """(description, inputs, window, recursive, group) of a per-symbol feature."""
    close = ("close",)
    if match := re.fullmatch(r"log_return_(\d+)", name):
        h = int(match[1])
        return f"log(close / close {h} bars earlier)", close, h + 1, False, "returns"
    if match := re.fullmatch(r"sma_ratio_(\d+)", name):
        w = int(match[1])
        return f"close / simple moving average of {w} closes - 1", close, w, False, "trend"
    if match := re.fullmatch(r"ema_ratio_(\d+)", name):
        w = int(match[1])
        return f"close / exponential moving average (span {w}, from the first close) - 1", close, w, True, "trend"
    if match := re.fullmatch(r"volatility_(\d+)", name):
        w = int(match[1])
        return f"sample std of the last {w} one-bar log returns", close, w + 1, False, "volatility"
    macd_window = params.macd_slow
    signal_window = params.macd_slow + params.macd_signal - 1
    fixed: dict[str, tuple[str, tuple[str, ...], int, bool, str]] = {
        "rsi": (f"Wilder RSI over {params.rsi_window} bars (0..100; 50 without movement)", close,
                params.rsi_window + 1, True, "momentum"),
        "macd": (f"(EMA {params.macd_fast} - EMA {params.macd_slow}) / close", close, macd_window, True, "momentum"),
        "macd_signal": (f"EMA {params.macd_signal} of the MACD line / close", close, signal_window, True,
                        "momentum"),
        "macd_hist": ("macd - macd_signal", close, signal_window, True, "momentum"),
        "bollinger_position": (f"(close - SMA {params.bollinger_window}) / ({params.bollinger_k} x population std); "
                               "0 on a flat window", close, params.bollinger_window, False, "volatility"),
        "atr_ratio": (f"Wilder average true range over {params.atr_window} bars / close", ("high", "low", "close"),
                      params.atr_window + 1, True, "volatility"),
        "stochastic_k": (f"(close - lowest low) / (highest high - lowest low) over {params.stochastic_window} bars",
                         ("high", "low", "close"), params.stochastic_window, False, "momentum"),
        "stochastic_d": (f"mean of the last {params.stochastic_smooth} stochastic_k", ("high", "low", "close"),
                         params.stochastic_window + params.stochastic_smooth - 1, False, "momentum"),
        "volume_ratio": (f"volume / mean volume of {params.volume_window} bars", ("volume",), params.volume_window,
                         False, "liquidity"),
        "log_dollar_volume": (f"log of the mean close x volume over {params.volume_window} bars",
                              ("close", "volume"), params.volume_window, False, "liquidity"),
        "spread": ("(ask - bid) / mid", ("bid", "ask"), 1, False, "microstructure"),
        "order_imbalance": ("(bid_size - ask_size) / (bid_size + ask_size); 0 when both are 0",
                            ("bid_size", "ask_size"), 1, False, "microstructure"),
        "day_of_week": ("day of the week of the bar, UTC (Monday 0)", ("timestamp",), 1, False, "calendar"),
        "month": ("month of the bar, UTC (1..12)", ("timestamp",), 1, False, "calendar"),
        "hour": ("hour of the bar, UTC (intraday data only)", ("timestamp",), 1, False, "calendar"),
    }
    if name in _ALPHA158:
        operator, d = alpha158.operator_of(name)
        needs = tuple(c for c in ("open", "high", "low", "close", "volume", "vwap") if c in alpha158.NEEDS[operator])
        return (f"Alpha158 {name}: " + alpha158.DESCRIPTIONS[operator].format(d=d), needs, alpha158.window_of(name),
                False, "alpha158")
    if name in _ALPHA360:
        return (f"Alpha360 {name}: " + alpha360.describe(name), alpha360.inputs_of(name), alpha360.window_of(name),
                False, "alpha360")
    if name.startswith("exo_") and name.removeprefix("exo_") in SERIES:
        return (SERIES[name.removeprefix("exo_")][0] + ", as of the bar", ("timestamp",), 1, False, "exogenous")
    if name == "sentiment_lm_polarity":
        return ("mean Loughran-McDonald polarity (-1..1) of the symbol's headlines since its previous bar; NaN "
                "without any", ("timestamp", "headlines"), 1, False, "sentiment")
    if name == "sentiment_headline_count":
        return ("number of the symbol's headlines since its previous bar", ("timestamp", "headlines"), 1, False,
                "sentiment")
    if name not in fixed:
        raise KeyError(f"feature {name!r} is planned by alphaforge.features but has no definition here")
    return fixed[name]


def _regime_definition(name: str, regime_model: RegimeModel) -> FeatureDefinition:
    p = regime_model.params
    k = int(name.removeprefix("regime_prob_"))
    description = (f"P(market regime {k} of {p.n_regimes} | market bars up to t), forward-filtered {p.method} "
                   f"(regime 0 the calmest; market = mean one-bar log return of the symbols, {p.volatility_window}-bar "
                   f"volatility); fitted {regime_model.train_start_:%Y-%m-%d}..{regime_model.train_end_:%Y-%m-%d}")
    return FeatureDefinition(name=name, description=description, dtype="float64", inputs=("close",),
                             window=p.volatility_window + 1, recursive=p.method == "hmm", cross_sectional=False,
                             group="regime", version=FEATURE_VERSION)


def feature_definitions(
    params: FeatureParams,
    *,
    columns: frozenset[str] | set[str] = ALL_BAR_COLUMNS,
    multi_symbol: bool = True,
    intraday: bool = False,
    regime_model: RegimeModel | None = None,
) -> list[FeatureDefinition]:
    """The definitions of every feature ``compute_features`` would produce for such bars (and ``regime_model``),
    in its order. A regime probability's ``window`` counts market timestamps (the filter's volatility window)."""
    out = []
    n_regimes = regime_model.params.n_regimes if regime_model is not None else 0
    planned = feature_plan(params, columns=columns, multi_symbol=multi_symbol, intraday=intraday, n_regimes=n_regimes)
    processed = set(processed_columns(planned)) if params.per_timestamp_processing != "none" else set()
    for name in feature_plan(params, columns=columns, multi_symbol=multi_symbol, intraday=intraday,
                             n_regimes=n_regimes):
        if regime_model is not None and name.startswith("regime_prob_"):
            out.append(_regime_definition(name, regime_model))
            continue
        base = name.removesuffix("_cs_rank")
        description, inputs, window, recursive, group = _base_definition(base, params)
        cross_sectional = base != name
        if cross_sectional:
            description = f"percentile rank of {base} among the symbols at the same timestamp (ties averaged)"
            group = "cross_sectional"
        elif name in processed:
            description += f"; then {params.processing} among the symbols at the same timestamp, NaN -> 0"
            cross_sectional = True
        out.append(FeatureDefinition(
            name=name, description=description, dtype="float64", inputs=inputs, window=window,
            recursive=recursive, cross_sectional=cross_sectional, group=group, version=FEATURE_VERSION,
        ))
    return out
