"""Backtests that trade what could be traded: execution prices, tradability, costs and portfolio construction.

:mod:`~alphaforge.backtest.market` says, per (timestamp, symbol), what a position decided at that bar earns and
what trading it costs; :mod:`~alphaforge.backtest.portfolios` turns signals into portfolios and trades them.
"""

from alphaforge.backtest.market import BASELINE_SIGNALS, execution_prices, market_frame, resolve_execution
from alphaforge.backtest.portfolios import STRATEGIES, Panel, Simulation, build_panel, simulate

__all__ = ["BASELINE_SIGNALS", "STRATEGIES", "Panel", "Simulation", "build_panel", "execution_prices",
           "market_frame", "resolve_execution", "simulate"]
