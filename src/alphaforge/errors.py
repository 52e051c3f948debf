"""The errors a stage ends with a message and exit code 2 for (not a traceback): what is wrong, and how to fix it.

:class:`alphaforge.schema.DataError` (bad input data) and :class:`alphaforge.config.ConfigError` (bad params) live
beside what they check; the promotion and alerting errors live here so a stage's entry point can name them
without importing the promotion or drift machinery.
"""

from __future__ import annotations


class PromotionError(RuntimeError):
    """The promote stage failed; the message says whether the champion changed."""


class PromotionConflict(PromotionError):
    """The champion moved while this promotion ran (a rollback, or a promoter that broke the lock)."""


class RegistryError(RuntimeError):
    """A registry command (rollback, show) cannot do what was asked; the message says why."""


class AlertDeliveryError(RuntimeError):
    """An alert was recorded locally but the webhook did not accept it."""
