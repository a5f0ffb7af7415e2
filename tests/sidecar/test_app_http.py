"""HTTP behaviour of the sidecar: bad input, fail modes, upstream failures, health, metrics, bundle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.sidecar.app_support import Harness, demo_server, flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer, free_port

POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
  timeout_seconds: 0.5
  retries: 1
dead:
  base_url: http://127.0.0.1:{dead_port}
  api: ollama
  model: tinyllama
  fallback: [tinyllama]
  breaker_failures: 1
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 1000
sidecar:
  max_body_bytes: 2048
  anonymous:
    enabled: true
    id: guest
  trusted_headers:
    enabled: true
  routes:
    - path: /via-fallback
      api: ollama.chat
      upstream: dead
      upstream_path: /api/chat
    - path: /custom/{kind}
      api: json
      upstream_path: /api/{kind}
"""
DB = 6


def policy_text() -> str:
    return POLICY.replace("{dead_port}", str(free_port()))


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    return policy_text()


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory, policy: str) -> Iterator[OpaServer]:
    yield from policy_opa(policy, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def h(opa: OpaServer, redis_url: str, tmp_path: Path, policy: str) -> AsyncIterator[Harness]:
    async with demo_server() as demo, harness(policy, tmp_path, opa, redis_url, demo) as h:
        yield h


CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def _json(h: Harness, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with h.session.request(method, h.url(path), **kw) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def test_malformed_json_is_400(h: Harness) -> None:
    status, doc, _ = await _json(
        h, "POST", "/api/chat", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert doc["error"]["code"] == "invalid_json"
    status, doc, _ = await _json(h, "POST", "/api/chat", data=b"[1, 2]")
    assert status == 400


async def test_body_too_large_is_413(h: Harness) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    status, doc, _ = await _json(h, "POST", "/api/chat", json=big)
    assert status == 413
    assert doc["error"]["code"] == "payload_too_large"


async def test_conflicting_spellings_are_400(h: Harness) -> None:
    body = {**CHAT, "max_tokens": 10, "options": {"num_predict": 500}}
    status, doc, _ = await _json(h, "POST", "/api/chat", json=body)
    assert status == 400
    assert doc["error"]["code"] == "invalid_parameter"
    assert doc["error"]["param"] == "max_tokens"


async def test_unknown_route_and_method_in_error_shape(h: Harness) -> None:
    status, doc, _ = await _json(h, "GET", "/nowhere")
    assert status == 404
    assert doc["error"]["code"] == "not_found"
    status, doc, headers = await _json(h, "GET", "/api/chat")
    assert status == 405
    assert "POST" in headers["Allow"]


async def test_health_ready_metrics(h: Harness) -> None:
    status, doc, _ = await _json(h, "GET", "/healthz")
    assert status == 200
    status, doc, _ = await _json(h, "GET", "/readyz")
    assert status == 200, doc
    assert doc["checks"] == {"opa": True, "redis": True, "bundle": True}
    await _json(h, "POST", "/api/chat", json=CHAT)
    async with h.session.get(h.url("/metrics")) as resp:
        text = await resp.text()
    for name in (
        "hexarch_requests_total",
        "hexarch_decision_duration_seconds",
        "hexarch_upstream_duration_seconds",
        "hexarch_tokens_total",
        "hexarch_cost_usd_micros_total",
        "hexarch_opa_errors_total",
        "hexarch_redis_errors_total",
    ):
        assert name in text


async def test_placeholder_key_is_ignored_when_no_keys_are_configured(h: Harness) -> None:
    status, _, _ = await _json(h, "POST", "/api/chat", json=CHAT, headers={"Authorization": "Bearer unused"})
    assert status == 200


async def test_trusted_headers_principal(h: Harness) -> None:
    status, _, _ = await _json(
        h, "POST", "/api/chat", json=CHAT, headers={"X-Hexarch-User": "bob", "X-Hexarch-Roles": "admin,dev"}
    )
    assert status == 200


async def test_upstream_5xx_is_502_and_refunded(h: Harness, redis_url: str) -> None:
    status, _, headers = await _json(h, "POST", "/api/chat", json=CHAT)
    assert status == 200
    remaining = int(headers["X-RateLimit-Remaining"])
    status, doc, _ = await _json(h, "POST", "/api/chat", json=CHAT, headers={"X-Demo-Status": "503"})
    assert status == 502
    assert doc["error"]["code"] == "upstream_unavailable"
    status, _, headers = await _json(h, "POST", "/api/chat", json=CHAT)
    # the failed call gave its request back: only this one is new
    assert int(headers["X-RateLimit-Remaining"]) == remaining - 1


async def test_upstream_timeout_is_504(h: Harness) -> None:
    status, doc, _ = await _json(h, "POST", "/api/chat", json=CHAT, headers={"X-Demo-Latency-Ms": "2000"})
    assert status == 504
    assert doc["error"]["code"] == "upstream_timeout"


async def test_fallback_upstream_answers_and_circuit_opens(h: Harness) -> None:
    for _ in range(2):
        status, doc, _ = await _json(h, "POST", "/via-fallback", json=CHAT)
        assert status == 200
        assert doc["done"] is True
    async with h.session.get(h.url("/metrics")) as resp:
        text = await resp.text()
    # the first call found the dead upstream refusing; the second skipped it
    assert 'hexarch_upstream_errors_total{reason="connection",upstream="dead"} 1.0' in text
    assert 'hexarch_upstream_errors_total{reason="circuit_open",upstream="dead"} 1.0' in text


async def test_bundle_etag_and_304(h: Harness) -> None:
    async with h.session.get(h.url("/bundles/hexarch.tar.gz")) as resp:
        assert resp.status == 200
        etag = resp.headers["ETag"]
        assert (await resp.read())[:2] == b"\x1f\x8b"
    async with h.session.get(h.url("/bundles/hexarch.tar.gz"), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304


# --- fail modes ----------------------------------------------------------------------------------


def _dead_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"HEXARCH_OPA_URL": "http"}, "policy_engine_unavailable"),
        ({"HEXARCH_REDIS_URL": "redis"}, "counter_store_unavailable"),
    ],
)
async def test_fail_closed_is_503(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str, overrides: dict[str, str], code: str
) -> None:
    dead = {k: _dead_url(v) for k, v in overrides.items()}
    async with demo_server() as demo, harness(policy, tmp_path, opa, redis_url, demo, overrides=dead) as h:
        status, doc, _ = await _json(h, "POST", "/api/chat", json=CHAT)
        assert status == 503
        assert doc["error"]["code"] == code
        status, _, _ = await _json(h, "GET", "/readyz")
        assert status == 503


@pytest.mark.parametrize("overrides", [{"HEXARCH_OPA_URL": "http"}, {"HEXARCH_REDIS_URL": "redis"}])
async def test_fail_open_lets_requests_through(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str, overrides: dict[str, str]
) -> None:
    dead = {k: _dead_url(v) for k, v in overrides.items()}
    dead["HEXARCH_FAIL_MODE"] = "fail_open"
    async with demo_server() as demo, harness(policy, tmp_path, opa, redis_url, demo, overrides=dead) as h:
        status, _, _ = await _json(h, "POST", "/api/chat", json=CHAT)
        assert status == 200
        async with h.session.get(h.url("/metrics")) as resp:
            assert "hexarch_fail_open_total{" in await resp.text()


async def test_bundle_follows_edits_and_keeps_last_good_on_a_broken_one(h: Harness, tmp_path: Path) -> None:
    import asyncio

    config = tmp_path / "hexarch.yaml"

    async def etag() -> str:
        async with h.session.get(h.url("/bundles/hexarch.tar.gz")) as resp:
            assert resp.status == 200
            return resp.headers["ETag"]

    first = await etag()
    config.write_text(config.read_text().replace("requests_per_minute: 1000", "requests_per_minute: 999"))
    await asyncio.sleep(1.1)
    second = await etag()
    assert second != first
    config.write_text(config.read_text().replace("requests_per_minute: 999", "requests_per_minuet: 5"))
    await asyncio.sleep(1.1)
    assert await etag() == second


async def test_generic_json_route_with_placeholders(h: Harness) -> None:
    body = {"model": "tinyllama", "prompt": "hi", "stream": False, "options": {"temperature": 0.5}}
    status, doc, _ = await _json(h, "POST", "/custom/generate", json=body)
    assert status == 200
    assert doc["done"] is True
    status, doc, _ = await _json(h, "POST", "/custom/generate", json={**body, "temperature": 0.9})
    assert status == 400
    assert doc["error"]["param"] == "temperature"


async def test_deeply_nested_body_is_400_not_500(h: Harness) -> None:
    nested = b'{"model": "tinyllama", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, doc, _ = await _json(h, "POST", "/api/chat", data=nested)
    assert status == 400
    assert doc["error"]["code"] == "json_too_deep"  # bounded before parsing goes further (docs/hardening.md)


async def test_upstream_cookies_never_leak_between_callers(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    """One upstream session serves every caller: a cookie set for one must not reach the next."""
    seen: list[str | None] = []

    async def tags(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.json_response({"models": []})
        resp.set_cookie("session", f"caller-{len(seen)}")
        return resp

    upstream_app = web.Application()
    upstream_app.router.add_get("/api/tags", tags)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    try:
        # By name, not IP: aiohttp's default cookie jar ignores cookies from IP-address hosts.
        by_name = _ByName(upstream)
        async with harness(policy, tmp_path, opa, redis_url, by_name) as hx:  # type: ignore[arg-type]
            for _ in range(2):
                async with hx.session.get(hx.url("/api/tags")) as resp:
                    assert resp.status == 200
    finally:
        await upstream.close()
    assert seen == [None, None]


class _ByName:
    """A TestServer reached as `localhost` instead of 127.0.0.1."""

    def __init__(self, server: TestServer) -> None:
        self.server = server

    def make_url(self, path: str) -> URL:
        return self.server.make_url(path).with_host("localhost")
