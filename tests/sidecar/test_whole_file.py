"""`hexarch check | test | compile` and `hexarch up` validate the whole file: the policies (the
compiler's sections) and `sidecar:`, `logging:`, `opa:` and upstream sections (the settings'), with
the same located errors and did-you-mean hints. Runs the real `hexarch` entry point in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compiler.conftest import CliResult, Hexarch, hexarch  # noqa: F401 - the fixture

POLICIES = """
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 30
"""
# The seed's own non-policy sections, as tinyllama_hexarch.yaml writes them.
SEED_SECTIONS = """
enforcement: "strict"  # strict = block, warn = warning only

# Logging configuration
logging:
  enabled: true
  level: "info"
  file: ".hexarch/tinyllama_guardrails.log"

# OPA connection
opa:
  url: "http://localhost:8181"
  timeout_seconds: 5
  health_check_interval: 30

# TinyLlama specific config
tinyllama:
  api_url: "http://api.codexscrolls.io"
  internal_url: "http://localhost:8000"
  default_model: "tinyllama"
  default_temperature: 0.7
  default_max_tokens: 128
  timeout_seconds: 30
  retry_attempts: 3
  retry_delay_seconds: 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hexarch.yaml"
    path.write_text(text)
    return path


def test_the_seed_sections_pass_check(hexarch: Hexarch, tmp_path: Path) -> None:  # noqa: F811
    result = hexarch("check", write(tmp_path, POLICIES + SEED_SECTIONS))
    assert result.code == 0, result.err
    assert ": ok (" in result.out


@pytest.mark.parametrize("command", ["check", "test", "compile"])
def test_a_sidecar_typo_fails_every_command(hexarch: Hexarch, tmp_path: Path, command: str) -> None:  # noqa: F811
    path = write(tmp_path, POLICIES + "sidecar:\n  fail_mode: fail_closd\n")
    args = [command, path] + (["-o", tmp_path / "b.tar.gz"] if command == "compile" else [])
    result = hexarch(*args)
    assert result.code == 1
    where = f"{path}:8:14: error: "
    assert (
        f"{where}unknown fail_mode 'fail_closd' (at sidecar.fail_mode); did you mean 'fail_closed'?"
        in result.err
    )
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("sidecar: yes\n", ":8:10: error: sidecar must be a mapping"),
        ("opa: {url: opa:8181}\n", ":8:12: error: 'opa:8181' is not a valid URL (at opa.url)"),
        ("opa: {timeout: 5}\n", "did you mean 'timeout_ms'?"),
        (
            "opa: {timeout_seconds: 5, timeout_ms: 10}\n",
            "'timeout_seconds' and 'timeout_ms' are the same setting (at opa.timeout_seconds)",
        ),
        ("opa: {health_check_interval: soon}\n", "health_check_interval"),
        ("opa: {bundle_polling_seconds: 0}\n", "bundle_polling_seconds"),
        ("logging: {level: loud}\n", "unknown level 'loud'"),
        ("logging: {format: xml}\n", "unknown format 'xml'"),
        ("logging: {log_prompt: true}\n", "did you mean 'log_prompts'?"),
        ("logging: {enabled: sometimes}\n", "'enabled' must be true or false"),
        (
            "tinyllama: {api_url: 'http://a', base_url: 'http://b'}\n",
            "'api_url' and 'base_url' are the same setting (at tinyllama.api_url)",
        ),
        ("tinyllama: {api_url: 'http://a', internal_url: 'ftp://b'}\n", "'ftp://b' is not a valid URL"),
        ("tinyllama: {api_url: 'http://a', retry_attempt: 3}\n", "did you mean 'retry_attempts'?"),
        ("tinyllama: {api_url: 'http://a', default_max_tokens: 0}\n", "default_max_tokens"),
        ("tinyllama: {api_url: 'http://a', default_temperature: hot}\n", "default_temperature"),
    ],
)
def test_check_locates_problems_in_the_settings_sections(
    hexarch: Hexarch,  # noqa: F811
    tmp_path: Path,
    section: str,
    expected: str,
) -> None:
    path = write(tmp_path, POLICIES + "\n" + section)
    result = hexarch("check", path)
    assert result.code == 1
    assert expected in result.err, result.err
    assert "Traceback" not in result.err


def test_problems_of_both_owners_come_in_one_run(hexarch: Hexarch, tmp_path: Path) -> None:  # noqa: F811
    text = (
        POLICIES.replace("requests_per_minute", "requests_per_minut") + "sidecar:\n  fail_mode: fail_closd\n"
    )
    result = hexarch("check", write(tmp_path, text))
    assert result.code == 1
    assert "did you mean 'requests_per_minute'?" in result.err
    assert "did you mean 'fail_closed'?" in result.err
    assert "2 errors; nothing written" in result.err


def test_key_env_variables_need_not_be_set_to_check(hexarch: Hexarch, tmp_path: Path) -> None:  # noqa: F811
    text = POLICIES + "sidecar:\n  api_keys:\n    - {id: a, key_env: HEXARCH_TEST_SURELY_UNSET_KEY}\n"
    assert hexarch("check", write(tmp_path, text)).code == 0


def test_up_validates_before_it_starts_anything(hexarch: Hexarch, tmp_path: Path) -> None:  # noqa: F811
    path = write(tmp_path, POLICIES + "sidecar:\n  fail_mode: fail_closd\n")
    work = tmp_path / "run"
    result = hexarch("up", "--policy", path, "--work-dir", work, "--port", "1")
    assert result.code == 1
    assert "did you mean 'fail_closed'?" in result.err
    assert "nothing started" in result.err
    assert not work.exists()  # no Redis, no OPA, no sidecar: not even their work directory
