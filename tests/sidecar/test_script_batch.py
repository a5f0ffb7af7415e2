"""The per-tick script batcher (sidecar/script_batch.py) against a real redis-server.

Round trips are counted by Redis itself: `INFO stats` `total_reads_processed` counts the read events
of the server, so N calls sent one by one cost at least N, a pipeline of them one or two.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sidecar.redis_client import create_redis
from sidecar.script_batch import Script, ScriptBatcher, create_batcher
from tests.support.servers import RedisServer, start_redis

CALLS = 50


def script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


ECHO = script("echo", "return ARGV[1]")
FAIL = script("fail", "return redis.error_reply('refused ' .. ARGV[1])")


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    own = start_redis()  # its own server: the read events counted are this test's alone
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    own = create_redis(server.url)
    assert isinstance(own, Redis)
    try:
        yield own
    finally:
        await own.aclose()


async def reads(client: Redis) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


async def test_the_calls_of_one_tick_share_one_round_trip(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    # first use: every call answers NOSCRIPT and is resent once, as EVAL, in a second pipeline
    before = await reads(client)
    replies = await asyncio.gather(*(batcher.submit(ECHO, [], [str(i)]) for i in range(CALLS)))
    assert replies == [str(i).encode() for i in range(CALLS)]
    assert await reads(client) - before <= 2 + 2 + 1  # two pipelines (a split read each), INFO

    before = await reads(client)
    replies = await asyncio.gather(*(batcher.submit(ECHO, ["k"], [str(i)]) for i in range(CALLS)))
    assert replies == [str(i).encode() for i in range(CALLS)]
    assert await reads(client) - before <= 2 + 1  # one pipeline, INFO
    assert len(batcher) == 0


async def test_a_failing_call_fails_alone(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    futures = [batcher.submit(FAIL if i % 2 else ECHO, [], [str(i)]) for i in range(10)]
    replies = await asyncio.gather(*futures)
    for i, reply in enumerate(replies):
        if i % 2:
            assert isinstance(reply, ResponseError) and f"refused {i}" in str(reply)
        else:
            assert reply == str(i).encode()


async def test_a_cancelled_caller_leaves_the_others_their_replies(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    first, second = batcher.submit(ECHO, [], ["a"]), batcher.submit(ECHO, [], ["b"])
    first.cancel()
    assert await second == b"b"
    assert first.cancelled() and len(batcher) == 0


async def test_a_lost_redis_fails_every_call_of_the_batch() -> None:
    own = start_redis()
    client = create_redis(own.url)
    assert isinstance(client, Redis)
    batcher = ScriptBatcher(client)
    try:
        assert await batcher.submit(ECHO, [], ["up"]) == b"up"
        own.stop()
        replies = await asyncio.gather(
            *(batcher.submit(ECHO, [], [str(i)]) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(reply, RedisConnectionError) for reply in replies), replies
        assert len(batcher) == 0
    finally:
        own.stop()
        await client.aclose()


def test_a_cluster_client_is_not_batched() -> None:
    # redis-py's cluster client routes each call to its slot's node; it is left to do so
    cluster = create_redis("redis+cluster://127.0.0.1:7000")
    assert create_batcher(cluster) is None
    standalone = create_redis("redis://127.0.0.1:6379/0")
    assert isinstance(create_batcher(standalone), ScriptBatcher)
