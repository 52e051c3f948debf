"""Per-request fallback and the admin token, without a server: the routing logic of ``ModelHost`` over stub
models and a stub registry (the real service is exercised in ``test_serving_live.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from alphaforge.serving.admin import ADMIN_TOKEN_ENV, AdminTokenMissing, admin_token, authorised, is_loopback
from alphaforge.serving.host import ModelFault, ModelHost, Registry, ServingParams
from alphaforge.serving.model import BadRequest

NAME = "signal"


class StubModel:
    """Predicts ``offset + x[:, 0]``; raises on rows whose first feature is above ``fails_above``."""

    def __init__(self, version: str, offset: float, fails_above: float = np.inf) -> None:
        self.name, self.version, self.offset, self.fails_above = NAME, version, offset, fails_above
        self.features = ["a", "b"]
        self.size_bytes = 1

    def predict(self, x: np.ndarray, symbols: Any, timestamps: Any) -> tuple[np.ndarray, None, None]:
        if (x[:, 0] > self.fails_above).any():
            raise ValueError("input the model cannot take")
        return self.offset + x[:, 0], None, None

    def info(self) -> dict[str, Any]:
        return {"version": self.version}


class StubRegistry(Registry):
    def __init__(self, aliases: dict[str, str], tags: dict[str, dict[str, str]]) -> None:
        self.alias_map, self.tags = aliases, tags

    def aliases(self, name: str) -> dict[str, str]:
        return dict(self.alias_map)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return self.tags.get(version, {})


class StubHost(ModelHost):
    def __init__(self, models: dict[str, StubModel], registry: StubRegistry, **params: Any) -> None:
        super().__init__(ServingParams(model_name=NAME, request_log=False, **params), registry=registry)
        self.models = models

    def _load_version(self, name: str, version: str) -> Any:
        return self.models[version]


def _predict(host: ModelHost, first: float, variant: str | None = None):
    def build(model: Any) -> tuple[np.ndarray, list[str], None]:
        return np.array([[first, 0.0]]), ["AAA"], None

    return host.predict(name=None, build=build, request_id="r1", variant=variant)[0]


def _host(**params: Any) -> tuple[StubHost, StubRegistry]:
    models = {"1": StubModel("1", 100.0), "2": StubModel("2", 200.0, fails_above=5.0),
              "3": StubModel("3", 300.0)}
    registry = StubRegistry({"champion": "2"}, {"2": {"alphaforge.previous_champion": "1"}})
    host = StubHost(models, registry, **params)
    host.start()
    return host, registry


def test_a_request_the_champion_raises_on_is_answered_by_the_previous_champion_and_counted() -> None:
    host, _ = _host()
    try:
        fine = _predict(host, 1.0)
        assert (fine.variant, fine.model_version, fine.prediction[0]) == ("champion", "2", 201.0)
        rescued = _predict(host, 9.0)
        assert (rescued.variant, rescued.model_version, rescued.prediction[0]) == ("fallback", "1", 109.0)
        assert "v2 (champion) raised ValueError: input the model cannot take" in rescued.fallback_reason
        assert "answered by signal v1 (previous champion)" in rescued.fallback_reason
        info = host.info()["request_fallback"]
        assert info["model_faults"] == 1 and info["answered"] == 1 and info["standby_version"] == "1"
        assert info["last_fault"]["fallback_version"] == "1"
        assert host.info()["variants"]["champion"]["errors"] == 1
        metrics = host.prometheus()
        assert "alphaforge_model_faults_total 1" in metrics and 'alphaforge_requests_total{variant="fallback"} 1' \
            in metrics
    finally:
        host.close()


def test_after_an_alias_move_the_model_it_replaced_stands_by() -> None:
    host, registry = _host()
    try:
        registry.alias_map["champion"] = "3"
        host.poll()
        assert host.info()["request_fallback"]["standby_version"] == "2"
        assert host.info()["request_fallback"]["standby_origin"] == "last good"
        host.models["3"].fails_above = 0.0
        rescued = _predict(host, 1.0)  # v3 raises, v2 (the last good one) can take it
        assert (rescued.variant, rescued.model_version) == ("fallback", "2")
    finally:
        host.close()


def test_without_a_standby_a_fault_is_a_model_fault_naming_the_error() -> None:
    host, _ = _host(request_fallback=False)
    try:
        with pytest.raises(ModelFault, match="v2 \\(champion\\) raised ValueError.*no fallback model is loaded"):
            _predict(host, 9.0)
        assert host.info()["request_fallback"]["model_faults"] == 1
    finally:
        host.close()


def test_bad_input_is_not_a_model_fault() -> None:
    host, _ = _host()
    try:
        def build(model: Any) -> Any:
            raise BadRequest("row 0: missing ['b']")

        with pytest.raises(BadRequest):
            host.predict(name=None, build=build, request_id="r2")
        assert host.info()["request_fallback"]["model_faults"] == 0
    finally:
        host.close()


def test_a_challenger_that_raises_is_answered_by_the_champion() -> None:
    host, registry = _host()
    try:
        registry.alias_map.update(champion="1", challenger="2")
        host.poll()
        rescued = _predict(host, 9.0, variant="challenger")
        assert (rescued.variant, rescued.model_version) == ("fallback", "1")
        assert "(challenger) raised" in rescued.fallback_reason
    finally:
        host.close()


# ------------------------------------------------------------------------------------------------ admin token


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("example.com", False)])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_token_and_loopback_stays_open() -> None:
    assert admin_token(["127.0.0.1"], {}) is None
    with pytest.raises(AdminTokenMissing, match=ADMIN_TOKEN_ENV):
        admin_token(["0.0.0.0"], {ADMIN_TOKEN_ENV: "  "})
    assert admin_token(["0.0.0.0"], {ADMIN_TOKEN_ENV: "s3cret"}) == "s3cret"
    assert admin_token(["127.0.0.1"], {ADMIN_TOKEN_ENV: "s3cret"}) == "s3cret"  # set: required on loopback too


def test_bearer_header_check() -> None:
    assert authorised(None, None)
    assert authorised("Bearer s3cret", "s3cret") and authorised("bearer  s3cret", "s3cret")
    assert not authorised(None, "s3cret") and not authorised("Bearer wrong", "s3cret")
    assert not authorised("Basic s3cret", "s3cret")


def test_serve_start_refuses_a_non_loopback_host_without_a_token(tmp_path, monkeypatch) -> None:
    import os

    from typer.testing import CliRunner

    from alphaforge.cli import app

    def no_exec(*args: object) -> None:
        raise AssertionError("serve start went on to exec bentoml")

    monkeypatch.setattr(os, "execve", no_exec)  # should the check ever fail, never become a server here
    (tmp_path / "params.yaml").write_text("serving:\n  http_port: 3999\n")
    done = CliRunner().invoke(app, ["serve", "start", "--host", "0.0.0.0", "--params", str(tmp_path / "params.yaml")],
                              env={ADMIN_TOKEN_ENV: ""})
    assert done.exit_code == 2 and f"{ADMIN_TOKEN_ENV} is not set" in done.output


def test_serve_reload_sends_the_token_from_the_environment(tmp_path) -> None:
    import http.server
    import threading

    from typer.testing import CliRunner

    from alphaforge.cli import app

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"changes": {}}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "params.yaml").write_text("serving:\n  http_port: 3999\n")
        done = CliRunner().invoke(app, ["serve", "reload", "--url", f"http://127.0.0.1:{server.server_address[1]}",
                                        "--params", str(tmp_path / "params.yaml")], env={ADMIN_TOKEN_ENV: "s3cret"})
    finally:
        server.shutdown()
        server.server_close()
    assert done.exit_code == 0, done.output
    assert seen == ["Bearer s3cret"]
