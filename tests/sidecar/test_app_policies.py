"""Every policy kind of examples/hexarch.yaml, enforced end to end over HTTP.

Real OPA (the example compiled into a bundle), real Redis, the demo model as the TinyLlama upstream,
and the sidecar app in process. Each test checks what a client sees: status, error body, headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar.services import SERVICES_KEY
from tests.sidecar.app_support import (
    ALICE_KEY,
    OPS_KEY,
    Harness,
    demo_server,
    example_policies,
    example_sidecar_block,
    flushed_redis_url,
    harness,
    policy_opa,
)
from tests.support.servers import OpaServer, RedisServer

# The example's sidecar block plus routes for the operations the example policies name but the
# TinyLlama app has no endpoint for (batch, retrain, delete, vision).
EXTRA_ROUTES = """
    - path: /api/batch
      methods: [POST]
      api: ollama.generate
      operation: batch
      upstream: tinyllama
      upstream_path: /api/generate
    - path: /api/conversations/{id}
      methods: [DELETE]
      api: none
      operation: delete
      resource_type: conversation
      upstream: tinyllama
      upstream_path: /health
    - path: /api/vision
      methods: [POST]
      api: ollama.chat
      feature: vision
      upstream: tinyllama
"""
CONFIG = example_policies() + example_sidecar_block().rstrip() + "\n" + EXTRA_ROUTES
DB = 3


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(CONFIG, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def h(opa: OpaServer, redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with demo_server() as demo, harness(CONFIG, tmp_path, opa, redis_url, demo) as h:
        yield h


def auth(key: str = ALICE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(content: str = "What is Python?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "tinyllama",
        "messages": [{"role": "user", "content": content}],
        "stream": False,
        **extra,
    }


async def post(
    h: Harness, path: str, body: dict[str, Any], key: str = ALICE_KEY, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with h.session.post(h.url(path), json=body, headers={**auth(key), **(headers or {})}) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, doc, resp.headers


def assert_error(doc: dict[str, Any], code: str, policy: str | None) -> None:
    err = doc["error"]
    assert set(err) >= {"message", "type", "code", "param", "policy", "details", "decision_id"}
    assert err["code"] == code
    assert err["policy"] == policy
    assert err["message"]
    assert err["decision_id"]


# --- principal ---------------------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401(h: Harness) -> None:
    async with h.session.post(h.url("/api/chat"), json=chat()) as resp:
        assert resp.status == 401
        doc = await resp.json()
        assert doc["error"]["type"] == "authentication_error"
        assert "WWW-Authenticate" in resp.headers
    status, doc, _ = await post(h, "/api/chat", chat(), key="not-a-key")
    assert status == 401
    assert "not-a-key" not in str(doc)


async def test_x_api_key_header_works(h: Harness) -> None:
    async with h.session.post(h.url("/api/chat"), json=chat(), headers={"X-API-Key": ALICE_KEY}) as resp:
        assert resp.status == 200
        doc = await resp.json()
        assert doc["message"]["role"] == "assistant"
        assert resp.headers["X-Hexarch-Decision-Id"]


# --- rate_limit: 30 requests per minute on tinyllama --------------------------------------------


async def test_rate_limit_blocks_the_31st_request(h: Harness) -> None:
    for i in range(30):
        status, _, headers = await post(h, "/api/chat", chat(f"q{i}"))
        assert status == 200, i
    assert headers["X-RateLimit-Limit"] == "30"
    assert headers["X-RateLimit-Remaining"] == "0"
    status, doc, headers = await post(h, "/api/chat", chat("one more"))
    assert status == 429
    assert_error(doc, "rate_limit_exceeded", "rate_limit")
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Limit"] == "30"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= 1
    assert doc["error"]["details"]["limit"] == 30


# --- quality_control: temperature, top_p in [0, 1]; system prompt <= 2000 chars ---------------


@pytest.mark.parametrize(
    "body",
    [
        chat(options={"temperature": 1.5}),
        chat(temperature=1.5),
        chat(options={"top_p": -0.1}),
    ],
)
async def test_parameter_bounds_are_400_under_any_spelling(h: Harness, body: dict[str, Any]) -> None:
    status, doc, _ = await post(h, "/api/chat", body)
    assert status == 400
    assert_error(doc, "invalid_parameter", "quality_control")
    assert doc["error"]["param"] in ("temperature", "top_p")


async def test_long_system_message_is_refused(h: Harness) -> None:
    body = {
        "model": "tinyllama",
        "stream": False,
        "messages": [{"role": "system", "content": "x" * 2001}, {"role": "user", "content": "hi"}],
    }
    status, doc, _ = await post(h, "/api/chat", body)
    assert status == 400
    assert_error(doc, "invalid_parameter", "quality_control")
    status, _, _ = await post(h, "/api/chat", chat(options={"temperature": 0.7}))
    assert status == 200


# --- token_management: 128 tokens per request, warn at 80% -------------------------------------


@pytest.mark.parametrize("body", [chat(options={"num_predict": 500}), chat(max_tokens=500)])
async def test_max_tokens_above_the_cap_is_400(h: Harness, body: dict[str, Any]) -> None:
    status, doc, _ = await post(h, "/api/chat", body)
    assert status == 400
    assert_error(doc, "max_tokens_exceeded", "token_management")
    assert doc["error"]["param"] == "max_tokens"


async def test_request_without_max_tokens_is_capped_and_near_cap_warns(h: Harness) -> None:
    status, _, headers = await post(h, "/api/chat", chat())
    assert status == 200
    # the cap was the sidecar's doing, not the client's: no warning for it
    assert not headers.getall("X-Hexarch-Warning", [])
    async with h.session.get(str(h.demo.make_url("/demo/stats"))) as resp:
        recent = (await resp.json())["recent"]
    assert recent[-1]["body"]["options"]["num_predict"] == 128
    status, _, headers = await post(h, "/api/chat", chat(options={"num_predict": 110}))
    assert status == 200
    warnings = headers.getall("X-Hexarch-Warning", [])
    assert any(w.startswith("token_management:") for w in warnings)


# --- model_selection: only tinyllama -----------------------------------------------------------


async def test_other_model_is_403(h: Harness) -> None:
    status, doc, _ = await post(h, "/api/chat", chat(model="gpt-4o"))
    assert status == 403
    assert_error(doc, "model_not_allowed", "model_selection")
    async with h.session.post(
        h.url("/v1/chat/completions"),
        headers=auth(),
        json={"model": "llama3", "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        assert resp.status == 403


# --- access_control: /api/stats for @admin and ops-bot ------------------------------------------


async def test_stats_only_for_admins(h: Harness) -> None:
    async with h.session.get(h.url("/api/stats"), headers=auth(ALICE_KEY)) as resp:
        assert resp.status == 403
        assert_error(await resp.json(), "access_denied", "access_control")
    async with h.session.get(h.url("/api/stats"), headers=auth(OPS_KEY)) as resp:
        assert resp.status == 200
        assert "total_requests" in await resp.json()
    async with h.session.get(h.url("/api/models"), headers=auth(ALICE_KEY)) as resp:
        assert resp.status == 200


# --- confirmations: deleting a conversation needs X-Hexarch-Confirm ------------------------------


async def test_delete_needs_confirmation(h: Harness) -> None:
    async with h.session.delete(h.url("/api/conversations/42"), headers=auth()) as resp:
        assert resp.status == 428
        assert_error(await resp.json(), "confirmation_required", "confirmations")
    async with h.session.delete(
        h.url("/api/conversations/42"), headers={**auth(), "X-Hexarch-Confirm": "true"}
    ) as resp:
        assert resp.status != 428  # admitted: whatever the upstream answers is relayed


# --- features: voice on, vision off -------------------------------------------------------------


async def test_feature_flags(h: Harness) -> None:
    async with h.session.post(
        h.url("/api/chat-with-voice"), json=chat("Hello world"), headers=auth()
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "audio/mpeg"
        assert (await resp.read()).startswith(b"ID3")
    status, doc, _ = await post(h, "/api/vision", chat())
    assert status == 403
    assert_error(doc, "feature_disabled", "features")


# --- time_based: batch only 22:00-06:00 UTC -----------------------------------------------------


async def test_batch_only_off_peak(h: Harness) -> None:
    hour = datetime.now(UTC).hour
    status, doc, _ = await post(h, "/api/batch", {"model": "tinyllama", "prompt": "x", "stream": False})
    if hour >= 22 or hour < 6:
        assert status == 200
    else:
        assert status == 403
        assert_error(doc, "time_restricted", "time_based")


# --- the unguarded health route and the built-in adapters ----------------------------------------


async def test_health_route_needs_no_key(h: Harness) -> None:
    async with h.session.get(h.url("/health")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_openai_and_ollama_builtins(h: Harness) -> None:
    async with h.session.post(
        h.url("/v1/chat/completions"),
        headers=auth(),
        json={"model": "tinyllama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8},
    ) as resp:
        assert resp.status == 200
        doc = await resp.json()
        assert doc["usage"]["completion_tokens"] == 8
    async with h.session.post(
        h.url("/api/generate"), headers=auth(), json={"model": "tinyllama", "prompt": "x", "stream": False}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["done"] is True
    async with h.session.get(h.url("/api/tags"), headers=auth()) as resp:
        assert resp.status == 200
    async with h.session.get(h.url("/v1/models"), headers=auth()) as resp:
        assert resp.status == 200
    async with h.session.post(
        h.url("/v1/embeddings"), headers=auth(), json={"model": "tinyllama", "input": "hello"}
    ) as resp:
        assert resp.status == 200


# --- api_budget: $100 a month, warn from 75%, block at 100% --------------------------------------


def _budget_key() -> str:
    from sidecar.redis_keys import counter_key

    return counter_key("tinyllama", "api_budget/0/month", datetime.now(UTC).strftime("%Y-%m"))


async def _settled(h: Harness) -> None:
    jobs = h.sidecar.app[SERVICES_KEY].background
    for _ in range(500):
        if not len(jobs):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(jobs)} settlements still pending")


async def test_budget_warns_at_75_percent_and_blocks_when_spent(h: Harness, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(_budget_key(), 75_000_000)  # $75 of $100 already spent this month
    status, _, headers = await post(h, "/api/chat", chat())
    assert status == 200
    assert any(w.startswith("api_budget:") for w in headers.getall("X-Hexarch-Warning", []))
    # its settlement runs after the reply (sidecar/background.py): let it land before the SET below,
    # or it corrects the spend the test sets (this test's Redis client blocks the event loop)
    await _settled(h)
    client.set(_budget_key(), 100_000_000)
    status, doc, headers = await post(h, "/api/chat", chat())
    assert status == 429
    assert_error(doc, "budget_exceeded", "api_budget")
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Limit"] == "100000000"
    assert headers["X-RateLimit-Remaining"] == "0"
