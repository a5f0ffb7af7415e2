"""Issue 11's stream guard on issue 9's translated streams: a provider whose wire API differs from the
client's (here Anthropic Messages behind an OpenAI client, and behind the Anthropic client itself
through `/v1/messages`) is held to the output reserved and ends honestly.

The provider is a stand-in written from Anthropic's streaming reference that ignores `max_tokens`
(a runaway) or drops the connection mid-reply; the official `openai` and `anthropic` SDKs read what
the sidecar writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import create_app
from sidecar.settings import load_settings
from tests.fakes.common import base_url, serving
from tests.sidecar.app_support import flushed_redis_url, policy_opa
from tests.support.servers import OpaServer, RedisServer

DB = 2
RUNAWAY_WORDS = 60
DIE_AFTER = 4
# the sidecar's prompt estimate for "hi": a cut or broken stream never reaches the provider's usage
# report, so the prompt is charged at the estimate
PROMPT = 1
POLICY = """
version: 1
pricing:
  "*":
    input_per_million_usd: 1.0
    output_per_million_usd: 1.0
policies:
  - id: spend
    rules:
      - resource: "*"
        monthly_budget_usd: 100
sidecar:
  anonymous:
    enabled: true
    id: guarded
"""
UPSTREAM = """
claude:
  base_url: {url}
  api: anthropic
  api_key_env: RUNAWAY_KEY
  models: ["claude-*"]
"""


def _sse(event: str, doc: dict[str, Any]) -> bytes:
    return f"event: {event}\n".encode() + b"data: " + orjson.dumps(doc) + b"\n\n"


async def _messages(request: web.Request) -> web.StreamResponse:
    """Anthropic Messages SSE that ignores `max_tokens`: RUNAWAY_WORDS words with an honest usage
    report (model `claude-runaway`), or DIE_AFTER words and a dropped connection (`claude-dies`)."""
    body = await request.json()
    dies = body["model"] == "claude-dies"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    await resp.write(_sse("message_start", {"type": "message_start", "message": message}))
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    await resp.write(_sse("content_block_start", block))
    count = DIE_AFTER if dies else RUNAWAY_WORDS
    for i in range(count):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"w{i} "}}
        await resp.write(_sse("content_block_delta", delta))
    if dies:
        assert request.transport is not None
        request.transport.abort()
        return resp
    await resp.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": count},
    }
    await resp.write(_sse("message_delta", end))
    await resp.write(_sse("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@dataclass
class Stack:
    sidecar: TestServer
    redis_url: str

    @property
    def url(self) -> str:
        return base_url(self.sidecar)

    def spent(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        return sum(int(client.get(k) or 0) for k in client.scan_iter("hexarch:*spend/*"))

    async def settled(self, expected: int) -> int:
        for _ in range(100):  # settlement runs after the reply: read until it lands (bounded)
            if self.spent() == expected:
                break
            await asyncio.sleep(0.02)
        return self.spent()


@pytest.fixture
async def stack(tmp_path: Path, opa: OpaServer, redis_server: RedisServer) -> AsyncIterator[Stack]:
    provider = web.Application()
    provider.router.add_post("/v1/messages", _messages)
    redis_url = flushed_redis_url(redis_server, DB)
    async with serving(provider) as fake:
        config = tmp_path / "hexarch.yaml"
        config.write_text(POLICY + UPSTREAM.format(url=base_url(fake)))
        env = {"RUNAWAY_KEY": "sk-runaway"}
        overrides = {"HEXARCH_REDIS_URL": redis_url, "HEXARCH_OPA_URL": opa.url}
        settings = load_settings(str(config), env=env, overrides=overrides)
        server = TestServer(create_app(settings, env=env), host="127.0.0.1")
        await server.start_server()
        try:
            yield Stack(server, redis_url)
        finally:
            await server.close()


async def test_a_runaway_translated_stream_ends_with_length_at_the_reservation(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="claude-runaway",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=7,
        stream=True,
    )
    chunks = [c async for c in stream]
    await client.close()
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text) == 7  # not the 60 the provider sent
    assert chunks[-1].choices[0].finish_reason == "length"
    # charged the 7 relayed, not the provider's 60
    assert await stack.settled(PROMPT + 7) == PROMPT + 7


async def test_the_anthropic_client_reads_max_tokens_at_the_reservation(stack: Stack) -> None:
    client = anthropic.AsyncAnthropic(base_url=stack.url, api_key="unused", max_retries=0)
    async with client.messages.stream(
        model="claude-runaway", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        words = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    await client.close()
    assert len(words) == 5
    assert final.stop_reason == "max_tokens"
    assert await stack.settled(PROMPT + 5) == PROMPT + 5


async def test_a_provider_dying_mid_translated_stream_is_an_error_the_sdks_raise(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="claude-dies", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIError, match="broke off the stream"):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    await client.close()
    assert len(got) == DIE_AFTER
    # charged what was relayed (4 words), not the 50 reserved
    assert await stack.settled(PROMPT + DIE_AFTER) == PROMPT + DIE_AFTER

    claude = anthropic.AsyncAnthropic(base_url=stack.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIError):
        async with claude.messages.stream(
            model="claude-dies", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            async for _ in s.text_stream:
                pass
    await claude.close()
    assert await stack.settled(2 * (PROMPT + DIE_AFTER)) == 2 * (PROMPT + DIE_AFTER)
