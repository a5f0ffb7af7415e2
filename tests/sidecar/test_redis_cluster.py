"""The counters on a real three-primary Redis Cluster: admissions whose groups live on different nodes.

Each limit subject is a hash tag, so one subject's keys share a slot, and an admission that names
three subjects sends one script call to each of three primaries. All-or-nothing then rests on the
sidecar's rollback of the groups already admitted when another refuses; these tests pick subjects
on three different nodes and check that no refused admission leaves anything consumed, also under
concurrency from two clients, after SCRIPT FLUSH on every primary, and through `hexarch serve`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from sidecar import redis_keys
from sidecar.counters import Counters, Limit
from sidecar.redis_client import create_redis
from tests.sidecar.app_support import demo_server, policy_opa, serving_async, with_upstream
from tests.sidecar.counter_support import budget, rate, subject, tokens
from tests.support.servers import OpaServer, RedisCluster, RedisServer, start_redis_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    running = start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


def node_of(cluster: RedisCluster, subj: str) -> RedisServer:
    return cluster.node_of(key_slot(redis_keys.reservation_key(subj, "x").encode()))


def spread(cluster: RedisCluster) -> list[str]:
    """One fresh subject on each primary."""
    found: dict[int, str] = {}
    while len(found) < len(cluster.nodes):
        subj = subject()
        found.setdefault(node_of(cluster, subj).port, subj)
    return [found[n.port] for n in cluster.nodes]


@pytest.fixture
async def store(cluster: RedisCluster) -> AsyncIterator[Counters]:
    counters = Counters(create_redis(cluster.url))
    await counters.load_scripts()
    yield counters
    await counters.close()


async def used(store: Counters, limit: Limit) -> int:
    (state,) = await store.peek([limit])
    return state.used


async def test_the_subjects_really_live_on_three_primaries(cluster: RedisCluster) -> None:
    a, b, c = spread(cluster)
    assert len({node_of(cluster, s).port for s in (a, b, c)}) == 3
    for subj in (a, b, c):  # the node the test expects owns the slot (not a MOVED redirect away)
        node = Redis(port=node_of(cluster, subj).port)
        try:
            await node.set(redis_keys.reservation_key(subj, "probe"), "1", px=1000)
        finally:
            await node.aclose()


async def test_an_admission_refused_on_one_node_consumes_nothing_on_the_others(
    cluster: RedisCluster, store: Counters
) -> None:
    a, b, c = spread(cluster)
    limits = [rate(a, 5), tokens(b, 1000, 40), budget(c, 1, 1)]
    assert (await store.admit("fill", [budget(c, 1, 1)])).admitted  # c's budget is now spent
    refused = await store.admit("refused", limits)
    assert not refused.admitted
    assert refused.blocking is not None and refused.blocking.limit.subject == c
    assert await used(store, rate(a, 5)) == 0
    assert await used(store, tokens(b, 1000, 40)) == 0


async def test_3l_concurrent_admissions_from_two_clients_admit_exactly_l(
    cluster: RedisCluster, store: Counters
) -> None:
    limit = 20
    a, b, c = spread(cluster)
    limits = [rate(a, 10**6), tokens(b, 10**6, 7), rate(c, limit, ident="tight/0/rpm")]
    other = Counters(create_redis(cluster.url))
    try:
        stores = (store, other)
        replies = await asyncio.gather(*(stores[i % 2].admit(f"r{i}", limits) for i in range(3 * limit)))
    finally:
        await other.close()
    assert sum(r.admitted for r in replies) == limit
    # the refused ones were rolled back on the nodes where their other groups had been admitted
    assert await used(store, rate(a, 10**6)) == limit
    assert await used(store, tokens(b, 10**6, 7)) == 7 * limit
    assert await used(store, rate(c, limit, ident="tight/0/rpm")) == limit


async def test_scripts_flushed_on_every_primary_are_loaded_again(
    cluster: RedisCluster, store: Counters
) -> None:
    a, b, c = spread(cluster)
    limits = [rate(a, 3), rate(b, 3), rate(c, 3)]
    first = await store.admit("before", limits)
    assert first.admitted
    for node in cluster.nodes:
        client = Redis(port=node.port)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
    second = await store.admit("after", limits)
    assert second.admitted and [s.used for s in second.states] == [2, 2, 2]
    await store.refund(second)
    assert [await used(store, lim) for lim in limits] == [1, 1, 1]


# ---- through `hexarch serve`: two processes, one cluster ------------------------------------------

LIMIT = 15
POLICY = f"""
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: {LIMIT}
  - id: per_user
    rules:
      - resource: tinyllama
        scope: principal
        max_tokens_per_hour: 1000000
sidecar:
  anonymous:
    enabled: true
    id: cluster-user
"""


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


async def test_two_sidecars_on_the_cluster_let_exactly_l_through(
    cluster: RedisCluster, opa: OpaServer, tmp_path: Path
) -> None:
    body = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with demo_server(latency_ms=20) as demo:
        config = tmp_path / "hexarch.yaml"
        config.write_text(with_upstream(POLICY, str(demo.make_url("")).rstrip("/")))
        env = {"HEXARCH_OPA_URL": opa.url, "HEXARCH_REDIS_URL": cluster.url, "HEXARCH_OPA_TIMEOUT_MS": "2000"}
        async with (
            serving_async([config, config], tmp_path, env) as servers,
            aiohttp.ClientSession() as session,
        ):

            async def fire(i: int) -> int:
                async with session.post(f"{servers[i % 2].url}/api/chat", json=body) as resp:
                    await resp.read()
                    return resp.status

            statuses = Counter(await asyncio.gather(*(fire(i) for i in range(3 * LIMIT))))
            async with session.get(f"{servers[0].url}/readyz") as resp:
                ready = await resp.json()
    assert statuses == {200: LIMIT, 429: 2 * LIMIT}, statuses
    assert ready["checks"]["redis"] is True
