"""Out-of-sample evaluation: every model against naive baselines, traded as it could have been traded.

Input is the out-of-fold (OOF) prediction frame the train stage writes (one row per (timestamp, symbol) in a
test fold, with the columns in :data:`OOF_COLUMNS`) and the market frame of the validated bars
(:func:`alphaforge.backtest.market_frame`): execution prices, tradability, costs and the baseline signals.
Every number comes from those rows only, so nothing the model saw in training leaks into the scores.

Two evaluation modes, picked once from the data (:func:`evaluation_mode`):

* ``cross_sectional`` when the median number of symbols per timestamp is at least ``min_cross_section``: the
  information coefficient (IC) is the correlation across symbols at each timestamp; strategies ``long_short``
  (quantile tranches held for the label horizon) and ``topk`` (long only, top-k with dropout, judged against
  the equal-weight universe).
* ``single_series`` otherwise: one time-series IC per fold; strategies ``long_flat`` (judged against buy and
  hold) and ``long_short_band``.

Signals: each model, and the baselines ``equal_weight`` (the tradeable universe, equally weighted: buy and hold),
``momentum_20``, ``momentum_12_1``, ``reversal_1``, ``reversal_5`` and ``low_volatility``, each put through the
same construction, execution, tradability and costs as the models (:mod:`alphaforge.backtest.portfolios`).

Conventions that matter when reading the numbers:

* A weight decided at bar t is traded at bar t+1's open (``execution: next_open``) or close (``next_close``)
  and earns the execution price's return to the next bar; costs (commission, half spread, impact) are charged
  on every change of weight. Positions carry across fold boundaries: the OOF history is traded as one
  continuous strategy, and a fold's metrics are that strategy's bars inside the fold.
* IC t-statistics are Newey-West (HAC) with at least ``horizon - 1`` lags: overlapping labels are dependent.
* Degenerate cases give NaN, never inf; NaN becomes ``null`` in :meth:`Evaluation.to_metrics_json`.
"""

from alphaforge.evaluate.ic import information_coefficients
from alphaforge.evaluate.inputs import evaluation_mode
from alphaforge.evaluate.output import LEADERBOARD_COLUMNS, leaderboard, metrics_json_text, write_plots
from alphaforge.evaluate.params import (
    BASELINES,
    BENCHMARK,
    BENCHMARKED,
    DEFAULT_MODELS,
    METRICS,
    MIN_TIME_SERIES_PAIRS,
    MODEL_SIGNAL,
    NUMERIC_OOF_COLUMNS,
    OOF_COLUMNS,
    SIGNAL_METRICS,
    STRATEGY_METRICS,
    Evaluation,
    EvaluationParams,
    Mode,
)
from alphaforge.evaluate.scoring import evaluate_oof
from alphaforge.evaluate.strategies import (
    load_market_frame,
    market_for,
    market_from_labels,
    strategies_for,
    strategy_returns,
)
from alphaforge.evaluate.volatility import evaluate_volatility
from alphaforge.metrics import infer_periods_per_year

__all__ = [
    "BASELINES",
    "BENCHMARK",
    "METRICS",
    "MODEL_SIGNAL",
    "OOF_COLUMNS",
    "SIGNAL_METRICS",
    "STRATEGY_METRICS",
    "Evaluation",
    "EvaluationParams",
    "Mode",
    "evaluate_oof",
    "evaluation_mode",
    "infer_periods_per_year",
    "information_coefficients",
    "leaderboard",
    "load_market_frame",
    "market_for",
    "market_from_labels",
    "metrics_json_text",
    "strategies_for",
    "strategy_returns",
    "write_plots",
]
