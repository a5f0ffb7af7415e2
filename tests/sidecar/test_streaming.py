"""Streams pass through chunk by chunk and are settled with the usage the upstream reported."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from sidecar.reply_usage import UsageChunkFilter
from tests.sidecar.app_support import (
    Harness,
    demo_server,
    flushed_redis_url,
    harness,
    policy_opa,
)
from tests.support.servers import OpaServer, RedisServer

POLICY = """
version: 1
pricing:
  "tinyllama*":
    input_per_million_usd: 3.0
    output_per_million_usd: 7.0
tinyllama:
  base_url: http://127.0.0.1:1
  api: openai
  model: tinyllama
policies:
  - id: spend
    rules:
      - resource: tinyllama
        monthly_budget_usd: 10
  - id: tokens
    rules:
      - resource: tinyllama
        max_tokens_per_hour: 100000
sidecar:
  anonymous:
    enabled: true
    id: streamer
"""
DB = 5


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def h(opa: OpaServer, redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with (
        demo_server(token_interval_ms=15, tokens_per_reply=12) as demo,
        harness(POLICY, tmp_path, opa, redis_url, demo) as h,
    ):
        yield h


def _budget(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("hexarch:{tinyllama}:spend/*"))
    assert len(keys) == 1, keys
    return int(client.get(keys[0]) or 0)


async def _settled(redis_url: str, expected: int) -> int:
    deadline = time.monotonic() + 2
    value = _budget(redis_url)
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        value = _budget(redis_url)
    return value


async def _sse(h: Harness, body: dict[str, object]) -> tuple[list[str], list[float]]:
    arrivals: list[float] = []
    raw = b""
    async with h.session.post(h.url("/v1/chat/completions"), json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for chunk in resp.content.iter_any():
            arrivals.append(time.monotonic())
            raw += chunk
    return [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")], arrivals


async def test_sse_stream_passes_through_and_settles_real_usage(h: Harness, redis_url: str) -> None:
    content = "Tell me a story " * 20  # 320 characters: 80 prompt tokens for the demo model
    body = {
        "model": "tinyllama",
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
    }
    events, arrivals = await _sse(h, body)
    # chunk by chunk: the reply arrived over time, not in one piece at the end
    assert len(arrivals) > 3
    assert arrivals[-1] - arrivals[0] > 0.1
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    # the sidecar asked for the usage event itself; the client, which did not, never sees it
    assert all(c["choices"] for c in chunks)
    expected = math.ceil(80 * 3.0 + 12 * 7.0)
    # the reservation (prompt estimate + max_tokens 100) was replaced by the real usage
    assert await _settled(redis_url, expected) == expected


async def test_sse_usage_event_reaches_a_client_that_asked(h: Harness, redis_url: str) -> None:
    body = {
        "model": "tinyllama",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "abcd" * 10}],
    }
    events, _ = await _sse(h, body)
    usage = orjson.loads(events[-2])["usage"]
    assert usage == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
    assert await _settled(redis_url, 114) == 114  # 10 x 3.0 + 12 x 7.0 micro-USD


def test_usage_filter_handles_any_chunking() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    for size in (1, 3, 7, len(stream)):
        f = UsageChunkFilter()
        out = b"".join(f.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + f.finish()
        assert out == events[0] + events[2], size


async def test_ollama_ndjson_stream_is_settled_from_eval_counts(h: Harness, redis_url: str) -> None:
    body = {
        "model": "tinyllama",
        "messages": [{"role": "user", "content": "hello " * 30}],
        "options": {"num_predict": 50},
    }  # Ollama streams by default
    lines: list[dict[str, object]] = []
    async with h.session.post(h.url("/api/chat"), json=body) as resp:
        assert resp.status == 200
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
        lines = [orjson.loads(line) for line in buffer.splitlines() if line.strip()]
    final = lines[-1]
    assert final["done"] is True
    assert len(lines) > 3
    prompt, completion = final["prompt_eval_count"], final["eval_count"]
    assert isinstance(prompt, int) and isinstance(completion, int)
    expected = math.ceil(prompt * 3.0 + completion * 7.0)
    assert await _settled(redis_url, expected) == expected


async def test_metrics_count_streamed_tokens(h: Harness) -> None:
    body = {"model": "tinyllama", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with h.session.post(h.url("/v1/chat/completions"), json=body) as resp:
        await resp.read()
    async with h.session.get(h.url("/metrics")) as resp:
        text = await resp.text()
    assert 'hexarch_tokens_total{kind="completion"} 12.0' in text
    assert 'hexarch_requests_total{outcome="allowed",policy=""} 1.0' in text
    assert "hexarch_decision_duration_seconds_count 1.0" in text


async def test_client_leaving_mid_stream_keeps_the_reservation(h: Harness, redis_url: str) -> None:
    content = "abcd" * 25  # 100 characters: 25 prompt tokens by the chars/4 estimate
    body = {
        "model": "tinyllama",
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
    }
    async with h.session.post(h.url("/v1/chat/completions"), json=body) as resp:
        assert resp.status == 200
        await resp.content.readany()  # first chunk only, then hang up
        resp.close()
    # no usage was seen: what was reserved (prompt estimate + max_tokens) is what is charged
    expected = math.ceil(25 * 3.0 + 100 * 7.0)
    assert await _settled(redis_url, expected) == expected
