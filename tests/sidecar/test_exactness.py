"""Exactness under concurrency: limits hold across two `hexarch serve` processes sharing one Redis.

3 x L concurrent requests against a rate limit of L let exactly L through; 200 concurrent requests
against a USD budget never settle more than the budget, also when they name no maximum output and
the model would talk far longer than the reservation.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.sidecar.app_support import (
    demo_server,
    flushed_redis_url,
    policy_opa,
    serving_async,
    with_upstream,
)
from tests.support.servers import OpaServer, RedisServer

LIMIT = 25
RESERVED_OUTPUT = 8  # defaults.max_output_tokens
TALKATIVE = 400  # what the demo model says when nobody caps it

POLICY = f"""
version: 1
defaults:
  max_output_tokens: {RESERVED_OUTPUT}
pricing:
  "tinyllama*":
    input_per_million_usd: 1.0
    output_per_million_usd: 1.0
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: rate_limit
    rules:
      - resource: rated
        requests_per_minute: {LIMIT}
  - id: api_budget
    rules:
      - resource: budgeted
        daily_budget_usd: 0.002
sidecar:
  anonymous:
    enabled: true
    id: load-test
  routes:
    - path: /rated/chat
      api: ollama.chat
      resource: rated
      upstream: tinyllama
      upstream_path: /api/chat
    - path: /budgeted/chat
      api: ollama.chat
      resource: budgeted
      upstream: tinyllama
      upstream_path: /api/chat
"""
BUDGET_MICROS = 2000
DB = 4


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def sidecars(opa: OpaServer, redis_url: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    # A little upstream latency keeps many requests in flight at once.
    async with demo_server(latency_ms=20, tokens_per_reply=TALKATIVE) as demo:
        config = tmp_path / "hexarch.yaml"
        config.write_text(with_upstream(POLICY, str(demo.make_url("")).rstrip("/")))
        env = {"HEXARCH_OPA_URL": opa.url, "HEXARCH_REDIS_URL": redis_url, "HEXARCH_OPA_TIMEOUT_MS": "2000"}
        async with serving_async([config, config], tmp_path, env) as servers:
            yield [s.url for s in servers]


async def _fire(
    session: aiohttp.ClientSession, url: str, body: dict[str, object]
) -> tuple[int, dict[str, str]]:
    async with session.post(url, json=body) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def test_3l_concurrent_requests_over_two_processes_let_exactly_l_through(sidecars: list[str]) -> None:
    body = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(
            *(_fire(session, f"{sidecars[i % 2]}/rated/chat", body) for i in range(3 * LIMIT))
        )
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: LIMIT, 429: 2 * LIMIT}, statuses
    refused = [headers for status, headers in results if status == 429]
    assert all(int(h["Retry-After"]) >= 1 and h["X-RateLimit-Remaining"] == "0" for h in refused)


BUDGET_BODIES = {
    "names_num_predict": {"options": {"num_predict": 16}},
    # the sidecar caps the reply at the reservation, or the talkative model would overspend
    "names_no_maximum": {},
}


@pytest.mark.parametrize("extra", BUDGET_BODIES.values(), ids=BUDGET_BODIES.keys())
async def test_200_concurrent_requests_never_settle_more_than_the_budget(
    sidecars: list[str], redis_url: str, extra: dict[str, object]
) -> None:
    body = {"model": "tinyllama", "messages": [{"role": "user", "content": "budget " * 8}], "stream": False}
    body |= extra
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(
            *(_fire(session, f"{sidecars[i % 2]}/budgeted/chat", body) for i in range(200))
        )
    statuses = Counter(status for status, _ in results)
    # 503 would only mean a sidecar ran out of Redis connections under load; never a 2xx over budget
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses
    client = redis.Redis.from_url(redis_url)
    # each reply is sent before its settlement runs: wait for the last reservations to be settled
    deadline = asyncio.get_running_loop().time() + 5
    while list(client.scan_iter("hexarch:{budgeted}:rsv:*")):
        assert asyncio.get_running_loop().time() < deadline, "reservations were never settled"
        await asyncio.sleep(0.05)
    keys = list(client.scan_iter("hexarch:{budgeted}:api_budget/*"))
    assert len(keys) == 1, keys
    settled = int(client.get(keys[0]) or 0)
    assert 0 < settled <= BUDGET_MICROS
    # and the budget was actually used up, not refused early: one more request would not fit
    assert settled > BUDGET_MICROS - 2 * 60, settled
