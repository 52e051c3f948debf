"""Logging set-up shared by the ``alphaforge`` command, the stage entry points and the Airflow helpers."""

from __future__ import annotations

import logging
import sys

NOISY = ("great_expectations", "alembic", "mlflow", "urllib3", "matplotlib", "numexpr", "git")


def setup_logging(verbose: bool = False) -> None:
    """One line per event on stderr; quiet the chatty libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
