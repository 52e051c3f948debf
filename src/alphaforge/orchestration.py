"""What the Airflow DAGs need from the project, without the DAGs importing it.

The DAG files in ``dags/`` import only Airflow and the standard library, so they cannot read ``params.yaml``
(YAML) or ``dvc.yaml``. This module, run with the project's own interpreter, bridges the two:

* ``python -m alphaforge.orchestration export`` writes ``.alphaforge/airflow/settings.json``: the ``airflow:``
  section of params.yaml (schedules, retries, timeouts, service URL, ...), the stage order of ``dvc.yaml``, the
  project's ``bin`` folder, the alerts log path and the choices the UI's run parameters offer. The DAGs read that
  JSON with the standard library when Airflow parses them. ``make airflow-setup`` writes it, and so does the first
  task of every ``nightly_retrain`` run, so an edit of params.yaml reaches the DAGs at the next parse.
* ``python -m alphaforge.orchestration prepare --overrides JSON`` writes one run's settings into params.yaml
  before ingest runs: ``ingest.end`` from the run's data interval, and whatever the user chose in the UI (data
  source, date range, model families, trial budget). Values are checked by the same loader every stage uses, the
  file keeps its comments, and it is rewritten only when a value changes, so DVC sees exactly what changed and a
  re-run of the same interval skips every stage (no new registry version, no new alert line). Keys a previous run
  overrode are put back to their earlier values first, unless someone edited them since, so a one-off manual run
  does not leak into the next nightly run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alphaforge.io import write_json_atomic, write_text_atomic
from alphaforge.runtime import AirflowParams  # noqa: F401  (re-exported; the class lives with the runtime settings)

log = logging.getLogger(__name__)

STATE_DIR = Path(".alphaforge/airflow")
SETTINGS_PATH = STATE_DIR / "settings.json"
OVERRIDES_STATE_PATH = STATE_DIR / "overrides.json"
OPTIONAL_STAGES = ("rl",)  # in dvc.yaml, not in the nightly chain

# run parameter (the DAG's Param name) -> the params.yaml keys it sets
RUN_PARAMETER_KEYS: dict[str, tuple[str, ...]] = {
    "source": ("ingest.source",),
    "start": ("ingest.start",),
    "end": ("ingest.end",),
    "families": ("train.families", "tune.families"),
    "n_trials": ("tune.n_trials",),
}


def _dvc_stage_order(dvc_yaml: Path) -> list[str]:
    import yaml

    stages = list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {})
    if not stages:
        raise ValueError(f"{dvc_yaml}: no stages; the nightly DAG needs the pipeline's stage order")
    return stages


def settings_document(params_path: Path = Path("params.yaml"), dvc_yaml: Path | None = None) -> dict[str, Any]:
    """Everything the DAG files read at parse time, as plain JSON types (``dvc.yaml`` beside params.yaml)."""
    from alphaforge.config import load_params
    from alphaforge.data.ingest import SOURCES
    from alphaforge.models.registry import FAMILIES

    params = load_params(params_path)
    stages = _dvc_stage_order(dvc_yaml or params_path.parent / "dvc.yaml")
    return {
        "airflow": params.airflow.model_dump(mode="json"),
        "venv_bin": str(Path(sys.executable).parent),
        "stages": [s for s in stages if s not in OPTIONAL_STAGES],
        "optional_stages": [s for s in stages if s in OPTIONAL_STAGES],
        "alerts_path": params.drift.alerts_path,
        "decision_path": "reports/promotion/decision.json",
        "monitor_alert_path": f"{params.monitor.out_dir}/alert.json",
        "monitor_log_dir": params.monitor.log_dir,
        "choices": {"source": sorted(SOURCES), "families": list(FAMILIES)},
        "current": {"source": params.ingest.source, "families": list(params.train.families),
                    "n_trials": params.tune.n_trials},
    }


def export_settings(params_path: Path = Path("params.yaml"), out: Path = SETTINGS_PATH) -> Path:
    """Write :func:`settings_document` to ``out`` (atomically; the DAG processor may be reading it)."""
    return write_json_atomic(settings_document(params_path), out, sort_keys=True)


# --------------------------------------------------------------------------------------------- run overrides


def overrides_from_run(run_parameters: Mapping[str, Any], interval_end: str | None) -> dict[str, Any]:
    """The params.yaml keys one DAG run sets: the UI's choices (``None`` = keep params.yaml) and the interval.

    ``ingest.end`` is the run's ``end`` parameter when given, else the data interval's end (inclusive, UTC);
    a run without a data interval (a manual run in Airflow 3) and no ``end`` leaves it as params.yaml says.
    """
    unknown = sorted(set(run_parameters) - set(RUN_PARAMETER_KEYS))
    if unknown:
        raise ValueError(f"run parameters {unknown} are unknown; known: {sorted(RUN_PARAMETER_KEYS)}")
    overrides: dict[str, Any] = {}
    for name, value in run_parameters.items():
        if value is None or value == [] or value == "":
            continue
        for key in RUN_PARAMETER_KEYS[name]:
            overrides[key] = list(value) if isinstance(value, (list, tuple)) else value
    if "ingest.end" not in overrides and interval_end:
        overrides["ingest.end"] = _utc_naive(interval_end)
    return overrides


def _utc_naive(stamp: str) -> str:
    """An ISO time as naive UTC seconds (what ``ingest.end`` compares against)."""
    from datetime import datetime, timezone

    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def _get(document: Mapping[str, Any], key: str) -> Any:
    node: Any = document
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(document: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = document
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain lists/dicts, for comparisons and JSON."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flow(value: Any) -> str:
    """One value as YAML on one line: null, a number, a plain or quoted string, [a, b]."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def _edit_lines(text: str, document: Any, values: Mapping[str, Any]) -> str | None:
    """``text`` with each key's one-line value replaced in place (comments and layout untouched); None if a key
    is missing or its value spans lines."""
    lines = text.splitlines(keepends=True)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = document
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or leaf not in node or not hasattr(node, "lc"):
            return None
        row, column = node.lc.value(leaf)
        line = lines[row]
        body, newline = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
        comment = body.find(" #", column)
        old = body[column:] if comment < 0 else body[column:comment]
        new = _flow(value)
        if isinstance(node[leaf], (list, dict)) and not old.strip().startswith(("[", "{")):
            return None  # a block-style list or mapping: not a one-line value
        padded = new if comment < 0 else new.ljust(len(old))  # a trailing comment stays where it was
        lines[row] = body[:column] + padded + ("" if comment < 0 else body[comment:]) + newline
    return "".join(lines)


def apply_overrides(overrides: Mapping[str, Any], params_path: Path = Path("params.yaml"),
                    state_path: Path = OVERRIDES_STATE_PATH) -> dict[str, Any]:
    """Write one run's ``overrides`` into params.yaml (comments kept); return what changed, key -> [old, new].

    First undoes the previous run's overrides whose value is still the one that run wrote (a key someone edited
    since is theirs and stays); then sets the new ones. Values are replaced on their own lines, so the rest of the
    file stays byte for byte (a key params.yaml lacks is added by a comment-keeping YAML round trip). The result
    is checked with the stages' loader before it replaces params.yaml, and the file is only rewritten when a value
    differs.
    """
    from io import StringIO

    import yaml as pyyaml
    from ruamel.yaml import YAML

    from alphaforge.config import ConfigError, load_params

    yaml = YAML()  # round-trip: comments, order and flow style survive
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.representer.add_representer(  # `null`, as params.yaml writes it, not an empty value
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    text = params_path.read_text()
    document = yaml.load(text) or {}
    previous = json.loads(state_path.read_text()) if state_path.exists() else {}
    before = {key: _plain(_get(document, key)) for key in {*previous, *overrides}}

    wanted = dict(before)
    originals: dict[str, Any] = {}
    for key, record in previous.items():
        if before[key] == record["written"]:
            wanted[key] = record["original"]
    for key, value in overrides.items():
        originals[key] = wanted[key]
        wanted[key] = _plain(value)
    changed = {key: [before[key], wanted[key]] for key in sorted(before) if before[key] != wanted[key]}

    if changed:
        values = {key: new for key, (_, new) in changed.items()}
        edited = _edit_lines(text, document, values)
        parsed = pyyaml.safe_load(edited) if edited is not None else None
        if edited is None or any(_get(parsed, key) != value for key, value in values.items()):
            for key, value in values.items():
                _set(document, key, value)
            buffer = StringIO()
            yaml.dump(document, buffer)
            edited = buffer.getvalue()
        candidate = params_path.with_name(f".{params_path.name}.candidate")
        candidate.write_text(edited)
        try:
            load_params(candidate)
        except ConfigError as err:
            raise ConfigError(f"this run's settings {dict(overrides)} make params.yaml invalid; nothing written:\n"
                              f"{str(err).replace(str(candidate), str(params_path))}") from err
        finally:
            candidate.unlink(missing_ok=True)
        write_text_atomic(edited, params_path)
    state = {key: {"original": originals[key], "written": _plain(value)} for key, value in overrides.items()}
    write_json_atomic(state, state_path, sort_keys=True)
    for key, (old, new) in changed.items():
        log.info("params.yaml: %s %r -> %r", key, old, new)
    if not changed:
        log.info("params.yaml: unchanged for this run (%d override(s) already in place)", len(overrides))
    return changed


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``export`` the DAG settings, or ``prepare`` one run (overrides, then export)."""
    from alphaforge.config import ConfigError
    from alphaforge.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m alphaforge.orchestration", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export", help=f"write {SETTINGS_PATH} for the DAG files")
    prepare = commands.add_parser("prepare", help="write one run's settings into params.yaml, then export")
    prepare.add_argument("--run-parameters", default="{}", help="JSON: the DAG run's params (source, start, ...)")
    prepare.add_argument("--interval-end", default=None, help="the run's data interval end (ISO); '' or None: none")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "prepare":
            interval_end = args.interval_end if args.interval_end not in (None, "", "None") else None
            overrides = overrides_from_run(json.loads(args.run_parameters), interval_end)
            apply_overrides(overrides, args.params, args.params.parent / OVERRIDES_STATE_PATH)
        out = export_settings(args.params, args.params.parent / SETTINGS_PATH)
        log.info("airflow settings: %s", out)
    except (ConfigError, ValueError) as err:
        print(f"alphaforge orchestration: failed\n{err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
