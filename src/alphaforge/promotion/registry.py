"""Rollback, crowning by hand and the registry view (:func:`show`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from alphaforge import tracking
from alphaforge.errors import RegistryError
from alphaforge.promotion.params import (
    CHAMPION,
    COMPARED_WITH_TAG,
    DECISION_TAG,
    LAST_EVENT_TAG,
    NO_VERSION,
    PREVIOUS_CHAMPION_TAG,
    ROLLED_BACK_AT_TAG,
    TAG,
    RollbackOutcome,
    _now,
    _scorecard_from_tags,
)
from alphaforge.schema import format_metric as _fmt

log = logging.getLogger("alphaforge.promotion")


# ---------------------------------------------------------------------------------------------- rollback, show


def rollback(model_name: str, *, http_max_retries: int = 1, http_timeout_seconds: int = 10) -> RollbackOutcome:
    """Point ``champion`` back at the version the current champion replaced (one alias write).

    Follows the current champion's ``alphaforge.previous_champion`` tag, so repeated rollbacks walk back
    through the promotion history. Deliberately takes no promotion lock (a rollback is the emergency exit
    and must not wait); a promotion running meanwhile notices the moved alias and refuses to switch.
    """
    started = time.perf_counter()
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        current = tracking.get_model_aliases(model_name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"rollback: {model_name} has no champion (registered: "
                                f"{tracking.get_registered_model_tags(model_name) is not None}); nothing to roll back")
        target = tracking.get_model_version(model_name, current).tags.get(PREVIOUS_CHAMPION_TAG, NO_VERSION)
        if target == NO_VERSION:
            raise RegistryError(f"rollback: champion version {current} of {model_name} was the first champion "
                                "(it replaced none); nothing to roll back to")
        tracking.set_model_alias(model_name, CHAMPION, target)
        seconds = time.perf_counter() - started
        stamp = _now()
        tracking.set_model_version_tags(model_name, current, {ROLLED_BACK_AT_TAG: stamp})
        tracking.set_registered_model_tags(model_name, {
            LAST_EVENT_TAG: json.dumps({"event": "rollback", "from": current, "to": target, "at": stamp})})
    log.info("rollback: %s champion version %s -> %s in %.3f s", model_name, current, target, seconds)
    return RollbackOutcome(model_name=model_name, from_version=current, to_version=target, seconds=seconds)


CROWNED_BY_HAND_TAG = f"{TAG}crowned_by_hand"


def crown(model_name: str, version: str, reason: str, *, http_max_retries: int = 1,
          http_timeout_seconds: int = 10) -> RollbackOutcome:
    """Make ``version`` the champion by hand, past the gate, and say so in the registry.

    For a model the gate refused (on the bundled data buy-and-hold wins, so a fresh pipeline has no champion)
    that someone still wants served, or to pin a version. ``reason`` is required and kept on the version
    (``alphaforge.crowned_by_hand``) and in the model's last event; the replaced champion is recorded as
    ``alphaforge.previous_champion``, so :func:`rollback` undoes it. The tags are written before the alias
    moves: a service that sees the new champion can already fall back. No lock, like :func:`rollback`.
    """
    reason = reason.strip()
    if not reason:
        raise RegistryError("crown: give a --reason; a champion crowned past the gate must say why")
    started = time.perf_counter()
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        try:
            tracking.get_model_version(model_name, version)
        except Exception as err:
            raise RegistryError(f"crown: {model_name} has no version {version!r} ({type(err).__name__}); see "
                                "`alphaforge registry show`") from err
        before = tracking.get_model_aliases(model_name).get(CHAMPION)
        if before == str(version):
            raise RegistryError(f"crown: version {version} of {model_name} is already the champion")
        stamp = _now()
        tracking.set_model_version_tags(model_name, version, {
            PREVIOUS_CHAMPION_TAG: before or NO_VERSION, CROWNED_BY_HAND_TAG: json.dumps({"reason": reason,
                                                                                          "at": stamp})})
        tracking.set_model_alias(model_name, CHAMPION, version)
        tracking.set_registered_model_tags(model_name, {LAST_EVENT_TAG: json.dumps(
            {"event": "crown", "from": before, "to": str(version), "at": stamp, "reason": reason})})
    seconds = time.perf_counter() - started
    log.warning("crown: %s champion %s -> %s by hand, past the gate (%s)", model_name, before or "none", version,
                reason)
    return RollbackOutcome(model_name=model_name, from_version=before or NO_VERSION, to_version=str(version),
                           seconds=seconds)


@dataclass(frozen=True)
class VersionRow:
    """One line of :func:`show`."""

    version: str
    aliases: tuple[str, ...]
    created: str
    window: str
    metrics: dict[str, float | None]
    decision: str
    compared_with: str
    previous_champion: str
    rolled_back_at: str


@dataclass(frozen=True)
class RegistryView:
    """A registered model's versions (newest first) and aliases, with the metrics promotion recorded."""

    model_name: str
    aliases: dict[str, str]
    versions: list[VersionRow]

    def table(self, metrics: tuple[str, ...] = ("sharpe", "rank_ic_mean", "ic_mean", "directional_accuracy")) -> str:
        """A plain-text table for ``alphaforge registry show``."""
        if not self.versions:
            return f"{self.model_name}: no registered versions"
        header = ["version", "aliases", "created (UTC)", "window", *metrics, "decision", "vs", "replaced",
                  "rolled back"]
        rows = [[row.version, ",".join(row.aliases) or "-", row.created, row.window,
                 *[_fmt(row.metrics.get(m)) if row.metrics else "-" for m in metrics],
                 row.decision, row.compared_with, row.previous_champion, row.rolled_back_at]
                for row in self.versions]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                 for line in [header, *rows]]
        aliases = ", ".join(f"{alias} -> v{version}" for alias, version in sorted(self.aliases.items())) or "none"
        return "\n".join([f"{self.model_name}  (aliases: {aliases})", *lines])


def show(model_name: str, *, http_max_retries: int = 1, http_timeout_seconds: int = 10) -> RegistryView:
    """Versions, aliases and recorded metrics of ``model_name`` (newest version first)."""
    with tracking.fail_fast_http(http_max_retries, http_timeout_seconds):
        aliases = tracking.get_model_aliases(model_name)
        versions = tracking.list_model_versions(model_name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for record in reversed(versions):
        card = _scorecard_from_tags(record.tags)
        rows.append(VersionRow(
            version=record.version, aliases=tuple(sorted(by_version.get(record.version, []))),
            created=datetime.fromtimestamp(record.created_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            window=str(card.window) if card else "-", metrics=card.metrics if card else {},
            decision=record.tags.get(DECISION_TAG, "-"), compared_with=record.tags.get(COMPARED_WITH_TAG, "-"),
            previous_champion=record.tags.get(PREVIOUS_CHAMPION_TAG, "-"),
            rolled_back_at=record.tags.get(ROLLED_BACK_AT_TAG, "-"),
        ))
    return RegistryView(model_name=model_name, aliases=aliases, versions=rows)
