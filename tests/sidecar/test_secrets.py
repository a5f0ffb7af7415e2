"""Secrets (the upstream's API key, the clients' keys) never reach logs, error bodies, headers or metrics.

The upstream here is a small recording server, so the test also proves the upstream key is really
used (sent to the upstream), which keeps the "never appears" assertions from passing vacuously.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.sidecar.app_support import flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer

UPSTREAM_SECRET = "sk-upstream-7f3a9c1e5b2d4f60"
CLIENT_SECRET = "hx-client-0c8e2a4b6d1f3e57"
WRONG_SECRET = "hx-wrong-9d7b5f3a1c2e4a68"
POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: openai
  model: tinyllama
  api_key_env: UPSTREAM_KEY
  timeout_seconds: 2
policies:
  - id: quality_control
    rules:
      - parameter: temperature
        max: 1.0
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 1000
sidecar:
  api_keys:
    - {id: alice, key_env: CLIENT_KEY, roles: [user]}
"""
DB = 8
CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[TestServer, list[str]]]:
    seen_auth: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization", ""))
        if request.headers.get("X-Test-Fail"):
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, seen_auth
    finally:
        await server.close()


async def test_secrets_never_leak(
    opa: OpaServer,
    redis_server: RedisServer,
    upstream: tuple[TestServer, list[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, seen_auth = upstream
    env = {"UPSTREAM_KEY": UPSTREAM_SECRET, "CLIENT_KEY": CLIENT_SECRET}
    redis_url = flushed_redis_url(redis_server, DB)
    seen_text: list[str] = []
    caplog.set_level(logging.DEBUG)
    async with harness(POLICY, tmp_path, opa, redis_url, server, env=env) as h:  # type: ignore[arg-type]
        url = h.url("/v1/chat/completions")
        good = {"Authorization": f"Bearer {CLIENT_SECRET}"}
        cases = [
            (good, CHAT, {}, 200),  # allowed and forwarded
            (good, {**CHAT, "temperature": 1.5}, {}, 400),  # denied by policy
            ({"Authorization": f"Bearer {WRONG_SECRET}"}, CHAT, {}, 401),  # unknown key
            ({"X-API-Key": WRONG_SECRET}, CHAT, {}, 401),
            (good, CHAT, {"X-Test-Fail": "1"}, 502),  # upstream failure
        ]
        for headers, body, extra, status in cases:
            async with h.session.post(url, json=body, headers={**headers, **extra}) as resp:
                seen_text.append(await resp.text())
                seen_text.append(repr(dict(resp.headers)))
                assert resp.status == status, seen_text[-2]
        async with h.session.get(h.url("/metrics")) as resp:
            seen_text.append(await resp.text())

    assert f"Bearer {UPSTREAM_SECRET}" in seen_auth  # the key is really used upstream...
    assert all(CLIENT_SECRET not in auth for auth in seen_auth)  # ...and the client's is not forwarded
    everything = "\n".join(seen_text) + "\n" + caplog.text
    assert caplog.records, "the sidecar logged nothing: the log assertion would be vacuous"
    for secret in (UPSTREAM_SECRET, CLIENT_SECRET, WRONG_SECRET):
        assert secret not in everything
