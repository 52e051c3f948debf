"""The live monitor's retrain cooldown (alphaforge.live_monitor.trigger.RetrainCooldown), a pure rule over a file:
at most one retrain per cooldown, kept across a restart; a failed try is retried after a minute, not persisted."""

from __future__ import annotations

import json

from alphaforge.live_monitor import RetrainCooldown
from alphaforge.live_monitor.trigger import _RETRY_SECONDS


def test_a_trigger_waits_the_cooldown_and_a_restart_respects_it(tmp_path) -> None:
    path = tmp_path / "retrain_state.json"
    cooldown = RetrainCooldown(path, cooldown_seconds=3600.0)
    assert cooldown.due(1000.0), "nothing triggered yet: the first alert may trigger"
    cooldown.succeeded(1000.0, "run-1", "live degradation: rank_ic fell")
    assert not cooldown.due(1000.0 + 3599.0) and cooldown.due(1000.0 + 3600.0)
    assert json.loads(path.read_text())["dag_run_id"] == "run-1"

    restarted = RetrainCooldown(path, cooldown_seconds=3600.0)
    assert not restarted.due(1001.0), "a restarted follower forgot the last trigger"
    assert restarted.due(4600.0)
    restarted.succeeded(4600.0, "run-2", "again")
    assert restarted.summary() == {"last_trigger_at": 4600.0, "dag_run_id": "run-2", "error": None, "triggers": 2}


def test_a_failed_trigger_is_recorded_and_retried_after_the_retry_delay_only(tmp_path) -> None:
    path = tmp_path / "retrain_state.json"
    cooldown = RetrainCooldown(path, cooldown_seconds=60.0)
    cooldown.failed(100.0, ConnectionRefusedError("Airflow is down"))
    assert cooldown.summary()["error"] == "ConnectionRefusedError: Airflow is down"
    assert cooldown.summary()["triggers"] == 0 and not path.exists(), "a failure is not a trigger"
    assert not cooldown.due(100.0 + _RETRY_SECONDS - 1) and cooldown.due(100.0 + _RETRY_SECONDS)
