"""alphaforge: market data in, honest trading signals out.

All logic lives in this package; it imports neither Airflow nor BentoML, so the
stages, the tests and the services share one code path.
"""

__version__ = "0.1.0"
