"""Where studies live: the Optuna RDB storage URL (SQLite by default, PostgreSQL for several workers), redacted for
logs, opened with heartbeats and retries.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from typing import TYPE_CHECKING, Any

from alphaforge.tune.settings import TuneParams

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("alphaforge.tune")


# ------------------------------------------------------------------------------------------------ storage


def storage_url(tune: TuneParams) -> str:
    """``tune.storage`` (``$ALPHAFORGE_OPTUNA_STORAGE`` sets it, through alphaforge.config), else the SQLite file
    in the state folder."""
    from alphaforge.tracking import state_dir

    url = tune.storage
    if url:
        if "://" not in url:
            raise ValueError(f"tune.storage {url!r} is not a database URL (sqlite:///path.db, "
                             "postgresql://user@host/db); set it or ${STORAGE_ENV}")
        return url
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL with any password masked, for logs and reports."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not parseable as a database URL: show the scheme only
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, tune: TuneParams) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, and a retry of each trial whose worker died."""
    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # several processes on one file: wait for the write lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    import sqlalchemy.exc

    attempts = 4
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=tune.heartbeat_seconds,
                    grace_period=tune.grace_period_seconds,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=tune.max_retry),
                )
        except sqlalchemy.exc.DatabaseError as err:
            # Workers that start together on an empty database race to create Optuna's tables; the
            # loser sees "table already exists" or a duplicate key. The tables are there by now, so
            # connecting again works; any other database error repeats and is raised as it is.
            if attempt == attempts:
                raise
            log.info("tune: opening %s failed (%s); retrying, another process may be creating the tables",
                     redact(url), type(err.orig).__name__ if err.orig is not None else type(err).__name__)
            time.sleep(0.2 * attempt + random.random() * 0.3)
    raise AssertionError("unreachable")
