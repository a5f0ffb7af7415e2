"""Upstream faults from the demo model, through the whole pipeline: 5xx, 429, timeouts, a slow first
byte, refused connections and a connection reset mid-stream. The fallback chain answers (and says
who did), the breaker opens and half-opens, failed calls are refunded: the counters equal the
successful calls exactly, also on a three-primary Redis Cluster under concurrency. A stream broken
off mid-reply ends in an error event and is charged what was relayed (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp.test_utils import TestServer

from sidecar.app import create_app
from sidecar.demo_model import STATE_KEY
from sidecar.settings import load_settings
from tests.fakes.common import base_url
from tests.sidecar.app_support import demo_server, flushed_redis_url, policy_opa
from tests.support.servers import OpaServer, RedisCluster, RedisServer, free_port, start_redis_cluster

DB = 13
POLICY = """
version: 1
pricing:
  "*":
    input_per_million_usd: 1.0
    output_per_million_usd: 1.0
policies:
  - id: calls
    rules:
      - resource: "*"
        requests_per_hour: {limit}
  - id: spend
    rules:
      - resource: "*"
        monthly_budget_usd: 100
sidecar:
  anonymous:
    enabled: true
    id: faults
"""
CHAIN = """
primary:
  base_url: {primary}
  api: openai
  models: ["tinyllama*"]
  timeout_seconds: 0.5
  retries: {retries}
  backoff_seconds: 0.01
  deadline_seconds: {deadline}
  breaker_failures: {breaker_failures}
  breaker_seconds: {breaker_seconds}
  fallback: [groq, openrouter]
groq:
  base_url: {groq}
  api: openai
  model: tinyllama
  timeout_seconds: 0.5
openrouter:
  base_url: {openrouter}
  api: openai
  model: tinyllama
  timeout_seconds: 0.5
"""
BODY = {"model": "tinyllama", "messages": [{"role": "user", "content": "abcd" * 5}], "max_tokens": 6}
COST = math.ceil(5 * 1.0 + 6 * 1.0)  # 5 prompt tokens, 6 completion tokens at $1 per million


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY.format(limit=1000), tmp_path_factory)


@dataclass
class Chain:
    sidecar: TestServer
    demos: dict[str, TestServer]
    redis_url: str
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return base_url(self.sidecar)

    def calls(self, name: str) -> int:
        """Model calls that reached one demo upstream."""
        return int(self.demos[name].app[STATE_KEY].by_path["/v1/chat/completions"])

    def set_demo(self, name: str, **changes: Any) -> None:
        state = self.demos[name].app[STATE_KEY]
        state.settings = replace(state.settings, **changes)

    async def chat(self, body: dict[str, Any] = BODY) -> tuple[int, dict[str, str], Any]:
        async with self.session.post(f"{self.url}/v1/chat/completions", json=body) as resp:
            return resp.status, dict(resp.headers), await resp.json()

    def counter(self, policy: str) -> int:
        client: redis.Redis | redis.RedisCluster
        if self.redis_url.startswith("redis+cluster"):
            first = self.redis_url.removeprefix("redis+cluster://").split(",")[0]
            client = redis.RedisCluster.from_url(f"redis://{first}")
        else:
            client = redis.Redis.from_url(self.redis_url)
        total = 0
        for key in client.scan_iter(f"hexarch:*{policy}/*"):
            kind = client.type(key)
            if kind == b"hash":  # a sliding window: its field `sum` is the window's total
                total += int(client.hget(key, "sum") or 0)
            elif kind == b"string":  # a budget period
                total += int(client.get(key) or 0)
        return total

    async def settled(self, policy: str, expected: int) -> int:
        for _ in range(100):
            if self.counter(policy) == expected:
                break
            await asyncio.sleep(0.02)
        return self.counter(policy)

    async def metrics(self) -> str:
        async with self.session.get(f"{self.url}/metrics") as resp:
            return await resp.text()


@contextlib.asynccontextmanager
async def chain(
    tmp_path: Path,
    opa: OpaServer,
    redis_url: str,
    primary: dict[str, Any] | None = None,
    groq: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
    dead_primary: bool = False,
    **upstream: Any,
) -> AsyncIterator[Chain]:
    params = {"retries": 1, "deadline": 30, "breaker_failures": 5, "breaker_seconds": 30, **upstream}
    async with (
        demo_server(**{"tokens_per_reply": 16, **(primary or {})}) as p,
        demo_server(**{"tokens_per_reply": 16, **(groq or {})}) as g,
        demo_server(**{"tokens_per_reply": 16, **(openrouter or {})}) as o,
    ):
        primary_url = f"http://127.0.0.1:{free_port()}" if dead_primary else base_url(p)
        config = tmp_path / "hexarch.yaml"
        config.write_text(
            POLICY.format(limit=params.pop("limit", 1000))
            + CHAIN.format(primary=primary_url, groq=base_url(g), openrouter=base_url(o), **params)
        )
        settings = load_settings(
            str(config),
            env={},
            overrides={
                "HEXARCH_REDIS_URL": redis_url,
                "HEXARCH_OPA_URL": opa.url,
                "HEXARCH_OPA_TIMEOUT_MS": "2000",
            },
        )
        server = TestServer(create_app(settings, env={}), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                yield Chain(server, {"primary": p, "groq": g, "openrouter": o}, redis_url, session)
        finally:
            await server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


async def test_a_5xx_primary_is_retried_then_the_fallback_answers(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(tmp_path, opa, redis_url, primary={"failure_rate": 1.0}) as c:
        status, headers, body = await c.chat()
        assert status == 200, body
        assert headers["X-Hexarch-Upstream"] == "groq"
        assert body["usage"]["completion_tokens"] == 6
        assert c.calls("primary") == 2  # the call and one retry
        assert c.calls("groq") == 1
        assert await c.settled("calls", 1) == 1
        assert await c.settled("spend", COST) == COST


async def test_a_429_moves_to_the_next_upstream_without_retrying(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(tmp_path, opa, redis_url, primary={"failure_rate": 1.0, "fail_status": 429}) as c:
        status, headers, _ = await c.chat()
        assert status == 200
        assert headers["X-Hexarch-Upstream"] == "groq"
        assert c.calls("primary") == 1


async def test_a_slow_first_byte_times_out_to_the_fallback(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(tmp_path, opa, redis_url, primary={"latency_ms": 3000}, retries=0) as c:
        status, headers, _ = await c.chat()
        assert status == 200
        assert headers["X-Hexarch-Upstream"] == "groq"
        assert 'hexarch_upstream_errors_total{reason="timeout",upstream="primary"} 1.0' in await c.metrics()
        assert await c.settled("calls", 1) == 1


async def test_a_refused_connection_goes_to_the_fallback(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(tmp_path, opa, redis_url, dead_primary=True) as c:
        status, headers, _ = await c.chat()
        assert status == 200
        assert headers["X-Hexarch-Upstream"] == "groq"


async def test_all_failing_is_a_502_listing_what_was_tried_and_refunds(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    failing = {"failure_rate": 1.0}
    async with chain(tmp_path, opa, redis_url, primary=failing, groq=failing, openrouter=failing) as c:
        status, _, body = await c.chat()
        assert status == 502
        tried = body["error"]["details"]["tried"]
        assert [t["upstream"] for t in tried] == ["primary", "primary", "groq", "openrouter"]
        assert all(t["error"] == "HTTP 500" for t in tried)
        assert body["error"]["code"] == "upstream_unavailable"
        assert body["error"]["message"].startswith("All LLM providers failed (primary: HTTP 500;")
        assert await c.settled("calls", 0) == 0
        assert await c.settled("spend", 0) == 0


async def test_all_timing_out_is_a_504_bounded_by_the_deadline(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    slow = {"latency_ms": 3000}
    async with chain(tmp_path, opa, redis_url, primary=slow, groq=slow, openrouter=slow, deadline=0.8) as c:
        status, _, body = await c.chat()
        assert status == 504
        assert body["error"]["code"] == "upstream_timeout"
        tried = body["error"]["details"]["tried"]
        # 0.5 s per attempt against a 0.8 s deadline: the chain stops before reaching openrouter
        assert "openrouter" not in [t["upstream"] for t in tried]
        assert c.calls("openrouter") == 0
        assert await c.settled("calls", 0) == 0


async def test_the_breaker_opens_then_half_opens_with_one_probe(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(
        tmp_path,
        opa,
        redis_url,
        primary={"failure_rate": 1.0},
        retries=0,
        breaker_failures=2,
        breaker_seconds=0.3,
    ) as c:
        for _ in range(2):
            status, headers, _ = await c.chat()
            assert (status, headers["X-Hexarch-Upstream"]) == (200, "groq")
        assert c.calls("primary") == 2
        assert 'hexarch_upstream_breaker_state{upstream="primary"} 1.0' in await c.metrics()
        # open: the primary is skipped without being called
        status, headers, _ = await c.chat()
        assert (status, headers["X-Hexarch-Upstream"]) == (200, "groq")
        assert c.calls("primary") == 2

        # after the cool-down one probe goes through; it fails, so the circuit opens again
        await asyncio.sleep(0.35)
        status, headers, _ = await c.chat()
        assert (status, headers["X-Hexarch-Upstream"]) == (200, "groq")
        assert c.calls("primary") == 3
        await c.chat()
        assert c.calls("primary") == 3

        # the primary recovers: the next probe succeeds and closes the circuit
        c.set_demo("primary", failure_rate=0.0)
        await asyncio.sleep(0.35)
        status, headers, _ = await c.chat()
        assert (status, headers["X-Hexarch-Upstream"]) == (200, "primary")
        assert 'hexarch_upstream_breaker_state{upstream="primary"} 0.0' in await c.metrics()
        status, headers, _ = await c.chat()
        assert headers["X-Hexarch-Upstream"] == "primary"
        assert await c.settled("calls", 7) == 7  # every call answered, every call counted once


def _content_events(raw: bytes) -> int:
    """Relayed chunks that carry generated text (one token each at the demo model's word size)."""
    count = 0
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            doc = orjson.loads(line[6:])
            choices = doc.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                count += 1
    return count


async def test_a_connection_reset_mid_stream_ends_in_an_error_event_and_charges_what_was_relayed(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    """Issue 9 (a failed call gives its reservation back) meets issue 11 (streams end honestly, a
    broken stream is charged what was produced): the reservation is replaced by what the client got."""
    async with chain(tmp_path, opa, redis_url, primary={"reset_after_chunks": 3}) as c:
        body = {**BODY, "stream": True, "max_tokens": 10}
        async with c.session.post(f"{c.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["X-Hexarch-Upstream"] == "primary"
            raw = b""
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    raw += chunk
        assert b"[DONE]" not in raw  # the client sees a broken stream, never a made-up ending
        assert raw.count(b'data: {"id"') == 3
        assert b"event: error" in raw and b"broke off the stream" in raw
        relayed = _content_events(raw)
        assert 0 < relayed < 10
        assert await c.settled("calls", 1) == 1
        assert await c.settled("spend", 5 + relayed) == 5 + relayed  # not the 10 reserved
        # a stream that completes is charged its real usage
        c.set_demo("primary", reset_after_chunks=0)
        async with c.session.post(f"{c.url}/v1/chat/completions", json=body) as resp:
            assert b"[DONE]" in await resp.read()
        expected = 5 + relayed + math.ceil(5 + 10)
        assert await c.settled("spend", expected) == expected
        assert await c.settled("calls", 2) == 2


async def test_a_stream_that_stalls_past_the_timeout_is_cut_and_refunded(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    async with chain(tmp_path, opa, redis_url, primary={"token_interval_ms": 2000}) as c:
        body = {**BODY, "stream": True, "max_tokens": 10}
        async with c.session.post(f"{c.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            raw = b""
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    raw += chunk
        assert raw.count(b'data: {"id"') == 1  # the first chunk came, the second never did
        assert _content_events(raw) == 0  # ... and it carried no text yet
        assert b"[DONE]" not in raw
        assert b"event: error" in raw  # the client is told the stream broke off
        assert 'hexarch_upstream_errors_total{reason="stream",upstream="primary"} 1.0' in await c.metrics()
        # nothing was produced: a failed call, refunded
        assert await c.settled("calls", 0) == 0
        assert await c.settled("spend", 0) == 0


async def test_a_gemini_primary_falls_back_to_openai_compatible_providers(
    tmp_path: Path, opa: OpaServer, redis_url: str
) -> None:
    """ "Gemini, then Groq, then OpenRouter": the fallback is asked for its own model."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with demo_server(tokens_per_reply=16) as groq:
        config = tmp_path / "hexarch.yaml"
        config.write_text(
            POLICY.format(limit=1000)
            + f"""
gemini:
  base_url: {dead}
  api: gemini
  models: ["gemini-*"]
  fallback: [groq]
groq:
  base_url: {base_url(groq)}
  api: openai
  model: tinyllama
"""
        )
        settings = load_settings(
            str(config),
            env={},
            overrides={
                "HEXARCH_REDIS_URL": redis_url,
                "HEXARCH_OPA_URL": opa.url,
                "HEXARCH_OPA_TIMEOUT_MS": "2000",
            },
        )
        server = TestServer(create_app(settings, env={}), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                body = {**BODY, "model": "gemini-2.0-flash"}
                async with session.post(f"{base_url(server)}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Hexarch-Upstream"] == "groq"
                    reply = await resp.json()
        finally:
            await server.close()
        assert reply["usage"]["completion_tokens"] == 6
        assert groq.app[STATE_KEY].recent[-1]["body"]["model"] == "tinyllama"


# --- exactness on the three-primary Redis Cluster, through this pipeline -----------------------

LIMIT = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    running = start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def limited_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY.format(limit=LIMIT), tmp_path_factory)


async def test_cluster_counters_equal_the_successful_calls_under_faults(
    tmp_path: Path, limited_opa: OpaServer, cluster: RedisCluster
) -> None:
    """3 x L concurrent calls against a limit of L: the primary always fails, groq fails half the
    time, openrouter always fails. Whatever mix of 200, 502 and 429 comes back, the request counter
    is the number of 200s and the spend is their cost, exactly."""
    async with chain(
        tmp_path,
        limited_opa,
        cluster.url,
        primary={"failure_rate": 1.0},
        groq={"failure_rate": 0.5, "seed": 7},
        openrouter={"failure_rate": 1.0},
        limit=LIMIT,
        retries=0,
        breaker_failures=3,
    ) as c:
        results = await asyncio.gather(*(c.chat() for _ in range(3 * LIMIT)))
        statuses = Counter(status for status, _, _ in results)
        ok = [body for status, _, body in results if status == 200]
        # 503 would only mean the loaded machine made Redis miss its 0.5 s connect timeout: never a
        # 2xx past the limit, and never a count that differs from the answered calls
        assert set(statuses) <= {200, 429, 502, 503}, statuses
        assert statuses[200] and statuses[502], statuses  # both outcomes happened
        assert len(ok) <= LIMIT
        if not statuses[429]:
            pytest.fail(f"the limit never refused: {statuses}")
        assert await c.settled("calls", len(ok)) == len(ok)
        cost = sum(math.ceil(b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"]) for b in ok)
        assert await c.settled("spend", cost) == cost
