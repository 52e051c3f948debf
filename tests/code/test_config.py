"""The one loader: params.yaml, runtime.yaml and search_spaces.yaml beside it, the ALPHAFORGE_* overrides, and
hyperparameters checked per family at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alphaforge.config import ENV_OVERRIDES, ConfigError, load_params
from alphaforge.tune import default_search_spaces

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, content: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(("content", "message"), [
    ({"train": {"models": {"lightgbm": {"n_estimator": 3}}}}, r"train\.models\.lightgbm\.n_estimator: Extra inputs"),
    ({"train": {"models": {"lgbm": {}}}}, r"train\.models\.lgbm: unknown model family"),
    ({"train": {"models": {"gru": {"hidden_size": 0}}}}, r"train\.models\.gru\.hidden_size: Input should be greater"),
    ({"risk": {"lightgbm": {"learning_rate": -1}}}, r"risk\.lightgbm\.learning_rate"),
    ({"rl": {"algo_kwargs": {"ppo": {"nsteps": 5}}}}, r"rl\.algo_kwargs\.ppo: unknown argument\(s\) \['nsteps'\]"),
])
def test_a_hyperparameter_typo_fails_at_load_with_its_key_path(tmp_path: Path, content: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path, "params.yaml", content), environ={})


def test_the_repository_settings_load_and_every_family_hyperparameter_is_valid() -> None:
    params = load_params(REPO / "params.yaml", environ={})
    assert set(params.train.models) >= set(params.train.families)
    assert params.feature_store.redis_url  # from runtime.yaml


def test_runtime_yaml_is_merged_under_params_yaml_and_may_not_hold_pipeline_sections(tmp_path: Path) -> None:
    params_file = write(tmp_path, "params.yaml", {"serving": {"grpc_port": 5}})
    write(tmp_path, "runtime.yaml", {"serving": {"grpc_port": 7, "http_port": 3100}, "monitor": {"lookback_hours": 2}})
    params = load_params(params_file, environ={})
    assert (params.serving.grpc_port, params.serving.http_port, params.monitor.lookback_hours) == (5, 3100, 2)
    write(tmp_path, "runtime.yaml", {"train": {"families": ["ridge"]}})
    with pytest.raises(ConfigError, match=r"runtime.yaml: \['train'\] are pipeline settings"):
        load_params(params_file, environ={})


def test_search_spaces_yaml_replaces_a_family_space_and_keeps_the_defaults_of_the_others(tmp_path: Path) -> None:
    params_file = write(tmp_path, "params.yaml", {})
    write(tmp_path, "search_spaces.yaml", {"ridge": {"alpha": {"type": "float", "low": 1.0, "high": 2.0}}})
    spaces = load_params(params_file, environ={}).tune.search_spaces
    assert spaces["ridge"]["alpha"].high == 2.0 and spaces["lightgbm"] == default_search_spaces()["lightgbm"]


def test_environment_overrides_are_applied_by_the_loader_and_named_when_bad(tmp_path: Path) -> None:
    params_file = write(tmp_path, "params.yaml", {"serving": {"grpc_port": 5}})
    params = load_params(params_file, environ={"ALPHAFORGE_GRPC_PORT": "6", "ALPHAFORGE_BATCHING": "false",
                                               "ALPHAFORGE_OPTUNA_STORAGE": "sqlite:///x.db",
                                               "ALPHAFORGE_REDIS_URL": "redis://h:1/0"})
    assert (params.serving.grpc_port, params.serving.batching.enabled, params.tune.storage,
            params.feature_store.redis_url) == (6, False, "sqlite:///x.db", "redis://h:1/0")
    with pytest.raises(ConfigError, match=r"serving.grpc_port \(from \$ALPHAFORGE_GRPC_PORT\)"):
        load_params(params_file, environ={"ALPHAFORGE_GRPC_PORT": "many"})
    assert all(name.startswith("ALPHAFORGE_") for name in ENV_OVERRIDES)


def test_a_missing_params_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found.*ALPHAFORGE_PARAMS"):
        load_params(tmp_path / "params.yaml", environ={})
