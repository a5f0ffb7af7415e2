"""Every accepted settings key changes the settings the sidecar runs with.

For each key (except free-text `description`s), two files that differ only by that key must load
into different Settings: a key that is validated but then dropped fails here. What each setting
then does at run time is shown by the test its SETTINGS_DOCS row names (test_settings_table.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.settings import Settings, load_settings
from tests.sidecar.test_settings_table import accepted_keys

HEX = "ab" * 32
UPSTREAMS = "backup: {base_url: 'http://127.0.0.1:8'}\n"


def sidecar(extra: str) -> str:
    return "sidecar:\n" + "".join(f"  {line}\n" for line in extra.splitlines())


def upstream(extra: str, url: str = "base_url: 'http://127.0.0.1:9'") -> str:
    return f"tinyllama: {{{url}{extra}}}\n" + UPSTREAMS


def plain(section: str, extra: str) -> str:
    return upstream("") + f"{section}: {{{extra}}}\n"


def key_entry(extra: str) -> str:
    return upstream("") + sidecar(f"api_keys: [{{id: a, sha256: '{HEX}'{extra}}}]")


def route(extra: str) -> str:
    return upstream("") + sidecar(f"routes: [{{path: '/r/{{owner}}'{extra}}}]")


def nested(name: str, extra: str) -> str:
    return upstream("") + sidecar(f"{name}: {{enabled: true{extra}}}")


# key -> (file without the change, file with it)
PAIRS: dict[str, tuple[str, str]] = {
    "sidecar.listen": (upstream(""), upstream("") + sidecar("listen: ':9999'")),
    "sidecar.redis_url": (upstream(""), upstream("") + sidecar("redis_url: 'redis://h:1/0'")),
    "sidecar.fail_mode": (upstream(""), upstream("") + sidecar("fail_mode: fail_open")),
    "sidecar.decision_engine": (
        upstream("") + sidecar("policy_file: p.yaml"),
        upstream("") + sidecar("policy_file: p.yaml\ndecision_engine: wasm"),
    ),
    "sidecar.max_body_bytes": (upstream(""), upstream("") + sidecar("max_body_bytes: 10")),
    "sidecar.default_upstream": (upstream(""), upstream("") + sidecar("default_upstream: backup")),
    "sidecar.builtin_routes": (upstream(""), upstream("") + sidecar("builtin_routes: false")),
    "sidecar.api_keys": (upstream(""), key_entry("")),
    "sidecar.anonymous": (upstream(""), upstream("") + sidecar("anonymous: {}")),
    "sidecar.trusted_headers": (upstream(""), upstream("") + sidecar("trusted_headers: {}")),
    "sidecar.routes": (upstream(""), route("")),
    "sidecar.policy_file": (upstream(""), upstream("") + sidecar("policy_file: p.yaml")),
    "sidecar.serve_bundle": (
        upstream("") + sidecar("policy_file: p.yaml"),
        upstream("") + sidecar("policy_file: p.yaml\nserve_bundle: false"),
    ),
    "sidecar.log_decisions": (upstream(""), upstream("") + sidecar("log_decisions: false")),
    "sidecar.anonymous.enabled": (nested("anonymous", ""), nested("anonymous", "").replace("true", "false")),
    "sidecar.anonymous.id": (nested("anonymous", ""), nested("anonymous", ", id: guest")),
    "sidecar.anonymous.team": (nested("anonymous", ""), nested("anonymous", ", team: t")),
    "sidecar.anonymous.roles": (nested("anonymous", ""), nested("anonymous", ", roles: [r]")),
    "sidecar.anonymous.tier": (nested("anonymous", ""), nested("anonymous", ", tier: gold")),
    "sidecar.trusted_headers.enabled": (
        nested("trusted_headers", ""),
        nested("trusted_headers", "").replace("true", "false"),
    ),
    "sidecar.trusted_headers.user": (nested("trusted_headers", ""), nested("trusted_headers", ", user: X-U")),
    "sidecar.trusted_headers.team": (nested("trusted_headers", ""), nested("trusted_headers", ", team: X-T")),
    "sidecar.trusted_headers.roles": (
        nested("trusted_headers", ""),
        nested("trusted_headers", ", roles: X-R"),
    ),
    "sidecar.trusted_headers.tier": (nested("trusted_headers", ""), nested("trusted_headers", ", tier: X-L")),
    "sidecar.trusted_headers.resource_owner": (
        nested("trusted_headers", ""),
        nested("trusted_headers", ", resource_owner: X-O"),
    ),
    "sidecar.api_keys[].id": (key_entry(""), key_entry("").replace("id: a", "id: b")),
    "sidecar.api_keys[].sha256": (key_entry(""), key_entry("").replace(HEX, "cd" * 32)),
    "sidecar.api_keys[].key_env": (
        key_entry(""),
        key_entry("").replace(f"sha256: '{HEX}'", "key_env: HEXARCH_EFFECT_KEY"),
    ),
    "sidecar.api_keys[].team": (key_entry(""), key_entry(", team: t")),
    "sidecar.api_keys[].roles": (key_entry(""), key_entry(", roles: [r]")),
    "sidecar.api_keys[].tier": (key_entry(""), key_entry(", tier: gold")),
    "sidecar.routes[].path": (route(""), route("").replace("/r/", "/s/")),
    "sidecar.routes[].methods": (route(""), route(", methods: [PUT]")),
    "sidecar.routes[].resource": (route(""), route(", resource: files")),
    "sidecar.routes[].operation": (route(""), route(", operation: read")),
    "sidecar.routes[].feature": (route(""), route(", feature: voice")),
    "sidecar.routes[].resource_type": (route(""), route(", resource_type: file")),
    "sidecar.routes[].upstream": (route(""), route(", upstream: backup")),
    "sidecar.routes[].upstream_path": (route(""), route(", upstream_path: /u")),
    "sidecar.routes[].api": (route(""), route(", api: ollama.chat")),
    "sidecar.routes[].model": (route(""), route(", model: m")),
    "sidecar.routes[].guard": (route(""), route(", guard: false")),
    "logging.enabled": (plain("logging", ""), plain("logging", "enabled: false")),
    "logging.level": (plain("logging", ""), plain("logging", "level: debug")),
    "logging.file": (plain("logging", ""), plain("logging", "file: d.log")),
    "logging.format": (plain("logging", ""), plain("logging", "format: text")),
    "logging.log_prompts": (plain("logging", ""), plain("logging", "log_prompts: true")),
    "opa.url": (plain("opa", ""), plain("opa", "url: 'http://opa:1'")),
    "opa.timeout_ms": (plain("opa", ""), plain("opa", "timeout_ms: 900")),
    "opa.timeout_seconds": (plain("opa", ""), plain("opa", "timeout_seconds: 5")),
    "opa.decision_path": (plain("opa", ""), plain("opa", "decision_path: a/b")),
    "opa.health_check_interval": (plain("opa", ""), plain("opa", "health_check_interval: 30")),
    "opa.bundle_polling_seconds": (plain("opa", ""), plain("opa", "bundle_polling_seconds: 9")),
    "<upstream>.base_url": (upstream(""), upstream("", "base_url: 'http://127.0.0.1:7'")),
    "<upstream>.api_url": (upstream(""), upstream("", "api_url: 'http://127.0.0.1:7'")),
    "<upstream>.internal_url": (upstream(""), upstream(", internal_url: 'http://127.0.0.1:6'")),
    "<upstream>.api": (upstream(""), upstream(", api: ollama")),
    "<upstream>.model": (upstream(""), upstream(", model: m")),
    "<upstream>.default_model": (upstream(""), upstream(", default_model: m")),
    "<upstream>.default_temperature": (upstream(""), upstream(", default_temperature: 0.7")),
    "<upstream>.default_max_tokens": (upstream(""), upstream(", default_max_tokens: 128")),
    "<upstream>.timeout_seconds": (upstream(""), upstream(", timeout_seconds: 3")),
    "<upstream>.connect_timeout_seconds": (upstream(""), upstream(", connect_timeout_seconds: 1")),
    "<upstream>.api_key_env": (upstream(""), upstream(", api_key_env: SOME_KEY")),
    "<upstream>.retries": (upstream(""), upstream(", retries: 2")),
    "<upstream>.retry_attempts": (upstream(""), upstream(", retry_attempts: 2")),
    "<upstream>.retry_delay_seconds": (upstream(""), upstream(", retry_delay_seconds: 1")),
    "<upstream>.backoff_seconds": (upstream(""), upstream(", backoff_seconds: 1")),
    "<upstream>.deadline_seconds": (upstream(""), upstream(", deadline_seconds: 5")),
    "<upstream>.models": (upstream(""), upstream(", models: ['m*']")),
    "<upstream>.api_key_file": (upstream(""), upstream(", api_key_file: /k")),
    "<upstream>.folder_id": (upstream(""), upstream(", folder_id: f")),
    "<upstream>.key_type": (upstream(""), upstream(", key_type: iam_token")),
    "<upstream>.auth_url": (upstream(""), upstream(", auth_url: 'http://127.0.0.1:5/oauth'")),
    "<upstream>.scope": (upstream(""), upstream(", scope: GIGACHAT_API_PERS")),
    "<upstream>.ca_file": (upstream(""), upstream(", ca_file: /etc/hostname")),
    "<upstream>.verify_tls": (upstream(""), upstream(", verify_tls: false")),
    "<upstream>.fallback": (upstream(""), upstream(", fallback: [backup]")),
    "<upstream>.supports_stream_usage": (upstream(""), upstream(", supports_stream_usage: false")),
    "<upstream>.breaker_failures": (upstream(""), upstream(", breaker_failures: 1")),
    "<upstream>.breaker_seconds": (upstream(""), upstream(", breaker_seconds: 1")),
    "<upstream>.max_tokens_param": (upstream(""), upstream(", max_tokens_param: max_completion_tokens")),
}


# sidecar.hardening: one pair per key of sidecar/hardening.py's table, each set off its default
_HARDENING_VALUES = {
    "max_json_depth": "5",
    "max_json_keys": "50",
    "header_read_timeout_seconds": "2.5",
    "max_connections": "10",
    "keepalive_timeout_seconds": "3",
    "max_inflight_requests": "7",
    "max_principal_id_bytes": "32",
    "max_subjects_per_window": "9",
    "breaker_failures": "1",
    "breaker_seconds": "4",
    "admin_listen": "'127.0.0.1:9999'",
    "admin_key_env": "ADMIN_KEY",
}
PAIRS["sidecar.hardening"] = (upstream(""), upstream("") + sidecar("hardening: {max_json_depth: 5}"))
for _key, _value in _HARDENING_VALUES.items():
    PAIRS[f"sidecar.hardening.{_key}"] = (
        upstream(""),
        upstream("") + sidecar(f"hardening: {{{_key}: {_value}}}"),
    )


def test_every_key_but_notes_has_a_pair() -> None:
    notes = {key for key in accepted_keys() if key.endswith(".description")}
    assert set(PAIRS) == accepted_keys() - notes


def load(tmp_path: Path, name: str, text: str) -> Settings:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_settings(str(path), env={"HEXARCH_EFFECT_KEY": "k"})


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_the_key_changes_the_settings(key: str, tmp_path: Path) -> None:
    without, with_key = PAIRS[key]
    before, after = load(tmp_path, "without", without), load(tmp_path, "with", with_key)
    assert before.source != after.source  # the files differ by name...
    assert {**vars(before), "source": None} != {**vars(after), "source": None}, f"{key} changed nothing"


@pytest.mark.parametrize("note", ["sidecar.api_keys[].description", "sidecar.routes[].description"])
def test_descriptions_are_notes(note: str, tmp_path: Path) -> None:
    base = key_entry("") if "api_keys" in note else route("")
    described = base.replace("}]", ", description: 'for people'}]")
    assert {**vars(load(tmp_path, "a", base)), "source": None} == {
        **vars(load(tmp_path, "b", described)),
        "source": None,
    }
