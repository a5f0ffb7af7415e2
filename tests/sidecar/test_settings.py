"""Sidecar settings: located errors like the compiler's, defaults that work, env overrides."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sidecar.errors import SettingsError
from sidecar.settings import load_settings
from tests.sidecar.app_support import EXAMPLE


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hexarch.yaml"
    path.write_text(text)
    return str(path)


def errors_of(path: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(path, env=env or {})
    return str(info.value)


def test_defaults_without_a_file() -> None:
    s = load_settings(None, env={})
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    assert s.opa_url == "http://127.0.0.1:8181"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.fail_mode == "fail_closed"
    assert not s.anonymous.enabled
    assert s.upstreams == {}


def test_example_file_loads() -> None:
    s = load_settings(str(EXAMPLE), env={})
    assert s.default_upstream == "tinyllama"
    assert s.upstreams["tinyllama"].api == "ollama"
    assert s.opa_timeout_ms == 250
    assert {r.path for r in s.routes} == {
        "/api/chat",
        "/api/chat-with-voice",
        "/api/models",
        "/api/stats",
        "/health",
    }
    assert s.api_keys == ()  # commented out: `hexarch up --demo` runs it with an anonymous principal
    assert not s.anonymous.enabled
    assert s.serve_bundle and s.policy_file == str(EXAMPLE)


def test_unknown_keys_have_location_and_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "sidecar:\n  listen: 127.0.0.1:9000\n  fail_mdoe: fail_open\n")
    text = errors_of(path)
    assert f"{path}:3:3: error: unknown key 'fail_mdoe' in sidecar" in text
    assert "did you mean 'fail_mode'?" in text


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "up:\n"
        "  base_url: htp:/nowhere\n"
        "  api: olama\n"
        "  retries: two\n"
        "sidecar:\n"
        "  listen: nowhere\n"
        "  fail_mode: open\n"
        "  routes:\n"
        "    - path: /x\n"
        "      upstream: upp\n"
        "      methods: [FETCH]\n"
        "    - path: y\n",
    )
    text = errors_of(path)
    assert "2:13: error: 'htp:/nowhere' is not a valid URL" in text
    assert "3:8: error: unknown api 'olama' (at up.api); did you mean 'ollama'?" in text
    assert "4:12: error: 'retries' must be a whole number, got the string 'two' (at up.retries)" in text
    assert "6:11: error: 'nowhere' is not a listen address" in text
    assert "7:14: error: unknown fail_mode 'open' (at sidecar.fail_mode); did you mean 'fail_open'?" in text
    assert (
        "10:17: error: upstream 'upp' is not an upstream section (at sidecar.routes[0].upstream); "
        "did you mean 'up'?" in text
    )
    assert "unknown HTTP method 'FETCH'" in text
    assert "12:13: error: route path 'y' must start with '/'" in text


def test_api_keys_by_hash_or_env(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k1").hexdigest()
    path = write(
        tmp_path,
        "sidecar:\n  api_keys:\n"
        f"    - {{id: a, sha256: {digest}, roles: [admin], team: t, tier: pro}}\n"
        "    - {id: b, key_env: B_KEY}\n",
    )
    s = load_settings(path, env={"B_KEY": "k2"})
    assert [k.id for k in s.api_keys] == ["a", "b"]
    assert s.api_keys[1].digest == hashlib.sha256(b"k2").digest()
    assert "k2" not in repr(s)
    text = errors_of(path)
    assert "environment variable B_KEY is not set" in text
    bad = write(tmp_path, "sidecar:\n  api_keys:\n    - {id: a, sha256: xyz}\n    - {id: c}\n")
    text = errors_of(bad)
    assert "sha256 must be 64 hexadecimal characters" in text
    assert "exactly one of 'sha256' or 'key_env'" in text


def test_fallback_and_default_upstream_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "a:\n  base_url: http://h:1\n  fallback: [b]\nsidecar:\n  default_upstream: c\n")
    text = errors_of(path)
    assert "fallback 'b' is not another upstream section" in text
    assert "default_upstream 'c' is not an upstream section" in text


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "tinyllama:\n  base_url: http://localhost:11434\n  api: ollama\nsidecar:\n  listen: :9000\n"
    )
    s = load_settings(
        path,
        env={
            "HEXARCH_LISTEN": "0.0.0.0:7000",
            "HEXARCH_OPA_URL": "http://opa:8181",
            "HEXARCH_FAIL_MODE": "fail_open",
            "HEXARCH_REDIS_URL": "redis://r:6379/1",
            "HEXARCH_UPSTREAM_URL": "http://demo:1234/",
            "HEXARCH_ANONYMOUS": "true",
        },
    )
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 7000)
    assert s.opa_url == "http://opa:8181"
    assert s.fail_mode == "fail_open"
    assert s.redis_url == "redis://r:6379/1"
    assert s.upstreams["tinyllama"].base_url == "http://demo:1234"
    assert s.anonymous.enabled
    text = errors_of(path, env={"HEXARCH_FAIL_MODE": "fail_opne", "HEXARCH_LISTEN": "x:y"})
    assert "HEXARCH_FAIL_MODE='fail_opne'" in text and "did you mean 'fail_open'?" in text
    assert "HEXARCH_LISTEN='x:y' is not host:port" in text


def test_the_remaining_scalar_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    path = write(tmp_path, "sidecar:\n  anonymous:\n    enabled: true\n    team: apps\n")
    env = {
        "HEXARCH_OPA_DECISION_PATH": "hexarch.decision",
        "HEXARCH_BUILTIN_ROUTES": "false",
        "HEXARCH_LOG_DECISIONS": "no",
        "HEXARCH_ANONYMOUS_ID": "app-next-door",
    }
    s = load_settings(path, env=env)
    assert s.opa_decision_path == "hexarch/decision"
    assert not s.builtin_routes and not s.log_decisions
    assert (s.anonymous.enabled, s.anonymous.id, s.anonymous.team) == (True, "app-next-door", "apps")
    assert "HEXARCH_LOG_DECISIONS='sometimes' is not true or false" in errors_of(
        path, env={"HEXARCH_LOG_DECISIONS": "sometimes"}
    )


def test_upstream_url_from_env_alone() -> None:
    s = load_settings(
        None, env={"HEXARCH_UPSTREAM_URL": "http://127.0.0.1:11434", "HEXARCH_UPSTREAM_API": "ollama"}
    )
    assert s.default_upstream == "default"
    assert s.upstreams["default"].api == "ollama"


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "sidecar:\n  listen: [unclosed\n")
    assert "malformed YAML" in errors_of(path)


def test_route_patterns_and_upstream_placeholders(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "up:\n  base_url: http://h:1\n"
        "sidecar:\n  routes:\n"
        "    - {path: '/a/{id}', upstream_path: '/b/{id}/{other}'}\n"
        "    - {path: '/c/{id', api: none}\n"
        "    - {path: '/d/{id:[0-9]+}', upstream_path: '/e/{id}'}\n",
    )
    text = errors_of(path)
    assert "upstream_path uses {other}, which the route path does not define" in text
    assert "route path '/c/{id' is not a valid pattern" in text
    assert "/e/{id}" not in text


def test_anchors_under_x_keys_share_upstream_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x-upstream: &upstream {api: openai, timeout_seconds: 7, base_url: http://unused:1}\n"
        "primary:\n  <<: *upstream\n  base_url: http://127.0.0.1:9001/v1\n"
        "backup:\n  <<: *upstream\n  base_url: http://127.0.0.1:9002/v1\n"
        "policies: []\n",
    )
    s = load_settings(path, env={})
    # The x- section is the user's own: a place for anchors, never an upstream itself.
    assert set(s.upstreams) == {"primary", "backup"}
    assert s.upstreams["backup"].base_url == "http://127.0.0.1:9002/v1"
    assert s.upstreams["primary"].timeout_seconds == 7


def test_settings_read_values_like_the_compiler(tmp_path: Path) -> None:
    """One reader for the whole file: the same messages and hints as in policies."""
    path = write(
        tmp_path,
        "sidecar:\n  max_body_bytes: 0x400000\n  log_decisions: maybe\n"
        "  anonymous: {roles: admin, tier: 3}\n",
    )
    text = errors_of(path)
    assert (
        "2:19: error: 'max_body_bytes' must be a whole number, got the string '0x400000'"
        " (at sidecar.max_body_bytes); YAML 1.1 would read '0x400000' as 4194304" in text
    )
    assert "3:18: error: 'log_decisions' must be true or false, got the string 'maybe'" in text
    assert (
        "4:35: error: 'tier' must be a non-empty string, got the number 3 (at sidecar.anonymous.tier);"
        " put it in quotes" in text
    )
