"""The upstream keys of issue 9: every one is validated with a located error and does what its
name says (their effect on the wire is shown in test_providers.py and test_fallback.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import SettingsError
from sidecar.ingress import resolve_endpoints
from sidecar.providers.base import adapter_for
from sidecar.routing import model_for, route_by_model, served_models
from sidecar.settings import load_settings, upstream_secret

FILE = """
claude:
  base_url: https://api.anthropic.com
  api: anthropic
  api_key_env: ANTHROPIC_KEY
  models: ["claude-*"]
  fallback: [groq]
groq:
  base_url: https://api.groq.com/openai/v1
  api: openai
  model: llama-3.1-8b-instant
  backoff_seconds: 0.2
  deadline_seconds: 12
yandex:
  base_url: https://llm.api.cloud.yandex.net
  api: yandexgpt
  folder_id: b1gfolder
  key_type: iam_token
  api_key_file: {key_file}
  models: [yandexgpt*]
giga:
  base_url: https://gigachat.devices.sberbank.ru/api/v1
  api: gigachat
  auth_url: https://ngw.devices.sberbank.ru:9443/api/v2/oauth
  scope: GIGACHAT_API_CORP
sidecar:
  default_upstream: groq
  routes:
    - path: /pinned/v1/chat/completions
      api: openai.chat
      upstream: groq
"""


def test_provider_keys_are_read(tmp_path: Path) -> None:
    key_file = tmp_path / "yandex.key"
    key_file.write_text("t1.iam-token\n")
    path = tmp_path / "hexarch.yaml"
    path.write_text(FILE.format(key_file=key_file))
    s = load_settings(str(path), env={"ANTHROPIC_KEY": "sk-ant"})
    claude, groq, yandex, giga = (s.upstreams[n] for n in ("claude", "groq", "yandex", "giga"))
    assert claude.models == ("claude-*",) and claude.api == "anthropic"
    assert (groq.backoff_seconds, groq.deadline_seconds) == (0.2, 12.0)
    assert (yandex.folder_id, yandex.key_type) == ("b1gfolder", "iam_token")
    assert upstream_secret(yandex, {}) == "t1.iam-token"  # from api_key_file, stripped
    assert upstream_secret(claude, {"ANTHROPIC_KEY": "sk-ant"}) == "sk-ant"
    assert (giga.auth_url, giga.scope) == (
        "https://ngw.devices.sberbank.ru:9443/api/v2/oauth",
        "GIGACHAT_API_CORP",
    )
    assert "t1.iam-token" not in repr(yandex) and "t1.iam-token" not in repr(
        adapter_for(yandex, "t1.iam-token")
    )

    endpoints = {e.path: e for e in resolve_endpoints(s)}
    chat = endpoints["/v1/chat/completions"]
    # the request's model picks the upstream; a model no section claims stays on the default
    assert route_by_model(s, chat, "claude-opus-4").upstream is claude
    assert route_by_model(s, chat, "yandexgpt/latest").upstream is yandex
    assert route_by_model(s, chat, "mystery").upstream is groq
    # a route that names its upstream keeps it, whatever the model
    pinned = endpoints["/pinned/v1/chat/completions"]
    assert route_by_model(s, pinned, "claude-opus-4").upstream is groq
    # along the chain a fallback that does not serve the model is asked for its own
    assert model_for(claude, "claude-opus-4", first=True) == "claude-opus-4"
    assert model_for(groq, "claude-opus-4", first=False) == "llama-3.1-8b-instant"
    assert {m["id"]: m["owned_by"] for m in served_models(s)} == {
        "claude-*": "claude",
        "llama-3.1-8b-instant": "groq",
        "yandexgpt*": "yandex",
    }


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  api: bedrock\n", "bedrock"),
        ("  api: yandexgpt\n", "needs folder_id"),
        ("  api: yandexgpt\n  folder_id: f\n  key_type: token\n", "token"),
        ("  auth_url: not a url\n", "is not a valid URL"),
        ("  deadline_seconds: 0\n", "deadline_seconds"),
        ("  models: 7\n", "models"),
        ("  ca_file: /nonexistent/ca.pem\n", "is not a readable file"),
        ("  verify_tls: maybe\n", "verify_tls"),
    ],
)
def test_bad_provider_keys_are_located_errors(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "hexarch.yaml"
    path.write_text("up:\n  base_url: http://127.0.0.1:9\n" + section)
    with pytest.raises(SettingsError) as info:
        load_settings(str(path), env={})
    text = str(info.value)
    assert f"{path}:" in text and message in text


def test_a_provider_echoing_our_key_gets_it_cut_out() -> None:
    from sidecar.settings import UpstreamSettings

    adapter = adapter_for(
        UpstreamSettings(name="x", base_url="http://127.0.0.1:9", api="openai"), "sk-secret-1"
    )
    body = b'{"error": {"message": "Incorrect API key provided: sk-secret-1."}}'
    assert adapter.error_message(401, body) == "Incorrect API key provided: [redacted]."
    assert adapter.error_message(502, b"upstream said sk-secret-1") == "upstream said [redacted]"


async def test_yandex_key_type_picks_the_authorization_scheme() -> None:
    import aiohttp

    from sidecar.settings import UpstreamSettings

    base = UpstreamSettings(name="y", base_url="http://127.0.0.1:9", api="yandexgpt", folder_id="b1g")
    async with aiohttp.ClientSession() as session:
        by_key = await adapter_for(base, "AQVN-key").auth_headers(session)
        iam = UpstreamSettings(
            name="y", base_url="http://127.0.0.1:9", api="yandexgpt", folder_id="b1g", key_type="iam_token"
        )
        by_token = await adapter_for(iam, "t1.token").auth_headers(session)
    assert by_key == {"Authorization": "Api-Key AQVN-key", "x-folder-id": "b1g"}
    assert by_token == {"Authorization": "Bearer t1.token", "x-folder-id": "b1g"}


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1/chat/completions"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/chat/completions"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        ),
    ],
)
def test_openai_compatible_base_urls_as_providers_document_them(base: str, url: str) -> None:
    from sidecar.metrics import Metrics
    from sidecar.settings import Settings, UpstreamSettings
    from sidecar.upstream import UpstreamClient

    upstream = UpstreamSettings(name="u", base_url=base, api="openai")
    client = UpstreamClient(Settings(upstreams={"u": upstream}), Metrics(), env={})
    assert client.url(upstream, "/v1/chat/completions", "") == url
