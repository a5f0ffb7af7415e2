"""An OpenAI client reaches every provider through the sidecar unchanged, and the Anthropic client
reaches them through `/v1/messages`: text, streams, usage, finish reasons, safety stops, provider
errors; the request's model picks the upstream; settled counters equal the usage exactly; keys never
leave for the client, the metrics or the log."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import redis
from aiohttp.test_utils import TestServer

from sidecar.app import create_app
from sidecar.settings import load_settings
from tests.fakes import anthropic_fake, gemini_fake, gigachat_fake, yandexgpt_fake
from tests.fakes.common import REPLY_TOKENS, SEEN_KEY, WORDS, base_url, prompt_tokens, serving
from tests.sidecar.app_support import demo_server, flushed_redis_url, policy_opa
from tests.support.servers import OpaServer, RedisServer

DB = 12
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
  - id: models
    rules:
      - resource: claude-forbidden-1
        allowed_users: ["@admin"]
sidecar:
  anonymous:
    enabled: true
    id: tester
"""
UPSTREAMS = """
claude:
  base_url: {anthropic}
  api: anthropic
  api_key_env: FAKE_ANTHROPIC_KEY
  models: ["claude-*"]
gemini:
  base_url: {gemini}
  api: gemini
  api_key_env: FAKE_GEMINI_KEY
  models: ["gemini-*"]
giga:
  base_url: {gigachat}/api/v1
  api: gigachat
  auth_url: {gigachat}/api/v2/oauth
  scope: GIGACHAT_API_PERS
  api_key_env: FAKE_GIGACHAT_CREDENTIALS
  models: ["GigaChat*"]
yandex:
  base_url: {yandex}
  api: yandexgpt
  folder_id: {folder}
  api_key_file: {yandex_key_file}
  models: ["yandexgpt*"]
ollama:
  base_url: {demo}
  api: ollama
  models: ["tinyllama*"]
groq:
  base_url: {demo}/v1
  api: openai
  models: ["llama-*"]
"""
ENV = {
    "FAKE_ANTHROPIC_KEY": anthropic_fake.KEY,
    "FAKE_GEMINI_KEY": gemini_fake.KEY,
    "FAKE_GIGACHAT_CREDENTIALS": gigachat_fake.CREDENTIALS,
}
SECRETS = (anthropic_fake.KEY, gemini_fake.KEY, gigachat_fake.CREDENTIALS, yandexgpt_fake.KEY)
# model asked for -> upstream section that serves it
MODELS = {
    "claude-fake-1": "claude",
    "gemini-2.0-flash": "gemini",
    "gigachat-pro": "giga",  # globs match without regard to case
    "yandexgpt/latest": "yandex",
}
SAFETY_NAMES = {
    "claude": "refusal",
    "gemini": "SAFETY",
    "giga": "blacklist",
    "yandex": "ALTERNATIVE_STATUS_CONTENT_FILTER",
}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@dataclass
class Stack:
    sidecar: TestServer
    fakes: dict[str, TestServer]
    redis_url: str

    @property
    def url(self) -> str:
        return base_url(self.sidecar)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def budget_used(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter("hexarch:*spend/*"))
        return sum(int(client.get(k) or 0) for k in keys)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as resp:
            return await resp.text()


async def _stack(
    tmp_path: Path, opa: OpaServer, redis_url: str, gigachat_ttl: float = 1800.0
) -> AsyncIterator[Stack]:
    key_file = tmp_path / "yandex.key"
    key_file.write_text(yandexgpt_fake.KEY + "\n")
    async with (
        serving(anthropic_fake.create_app()) as claude,
        serving(gemini_fake.create_app()) as gemini,
        serving(gigachat_fake.create_app(gigachat_ttl)) as giga,
        serving(yandexgpt_fake.create_app()) as yandex,
        demo_server(tokens_per_reply=REPLY_TOKENS) as demo,
    ):
        upstreams = UPSTREAMS.format(
            anthropic=base_url(claude),
            gemini=base_url(gemini),
            gigachat=base_url(giga),
            yandex=base_url(yandex),
            folder=yandexgpt_fake.FOLDER,
            yandex_key_file=key_file,
            demo=base_url(demo),
        )
        config = tmp_path / "hexarch.yaml"
        config.write_text(POLICY + upstreams)
        overrides = {"HEXARCH_REDIS_URL": redis_url, "HEXARCH_OPA_URL": opa.url}
        settings = load_settings(str(config), env=ENV, overrides=overrides)
        server = TestServer(create_app(settings, env=ENV), host="127.0.0.1")
        await server.start_server()
        try:
            yield Stack(
                server, {"claude": claude, "gemini": gemini, "giga": giga, "yandex": yandex}, redis_url
            )
        finally:
            await server.close()


@pytest.fixture
async def stack(tmp_path: Path, opa: OpaServer, redis_server: RedisServer) -> AsyncIterator[Stack]:
    async for s in _stack(tmp_path, opa, flushed_redis_url(redis_server, DB)):
        yield s


def _words(n: int) -> str:
    return " ".join(WORDS[:n])


def _cost(prompt: int, completion: int) -> int:
    return math.ceil(prompt * 1.0 + completion * 1.0)  # micro-USD at $1 per million tokens each


async def _settled(stack: Stack, expected: int) -> int:
    # settlement runs after the reply; read until it lands (bounded)
    import asyncio

    for _ in range(100):
        if stack.budget_used() == expected:
            break
        await asyncio.sleep(0.02)
    return stack.budget_used()


# --- OpenAI client -> every provider -----------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
async def test_openai_client_gets_text_usage_and_finish_from_each_provider(stack: Stack, model: str) -> None:
    client = stack.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        max_tokens=5,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
    )
    assert raw.headers["X-Hexarch-Upstream"] == MODELS[model]
    reply = raw.parse()
    assert reply.choices[0].message.content == _words(5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    prompt = reply.usage.prompt_tokens

    whole = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )
    assert whole.choices[0].message.content == _words(REPLY_TOKENS)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == REPLY_TOKENS

    expected = _cost(prompt, 5) + _cost(whole.usage.prompt_tokens, REPLY_TOKENS)
    assert await _settled(stack, expected) == expected
    # the provider got its own wire format, with its own credentials
    seen = stack.fakes[MODELS[model]].app[SEEN_KEY]
    assert seen.requests, "the provider was not called"


@pytest.mark.parametrize("model", list(MODELS))
async def test_openai_client_streams_from_each_provider(stack: Stack, model: str) -> None:
    client = stack.openai()
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == _words(7)
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 7
    assert usage.prompt_tokens == prompt_tokens("hello there")
    expected = _cost(usage.prompt_tokens, 7)
    assert await _settled(stack, expected) == expected


async def test_a_stream_without_include_usage_gets_no_usage_chunk(stack: Stack) -> None:
    stream = await stack.openai().chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the sidecar still settled the real usage
    assert await _settled(stack, _cost(prompt_tokens("hi"), REPLY_TOKENS)) == _cost(
        prompt_tokens("hi"), REPLY_TOKENS
    )


@pytest.mark.parametrize("model", list(MODELS))
async def test_a_safety_stop_is_content_filter_counted_and_logged(
    stack: Stack, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hexarch.sidecar")
    client = stack.openai()
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "UNSAFE please"}]
    )
    assert reply.choices[0].finish_reason == "content_filter"
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "UNSAFE please"}], stream=True
    )
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
    assert finishes == ["content_filter"]
    upstream = MODELS[model]
    assert f'hexarch_content_filter_total{{upstream="{upstream}"}} 2.0' in await stack.metrics()
    assert any(SAFETY_NAMES[upstream] in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("model", list(MODELS))
async def test_a_provider_error_reaches_the_client_in_the_error_shape(stack: Stack, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.openai().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "FAIL400"}]
        )
    body: Any = caught.value.body
    assert "the fake refuses FAIL400" in body["message"]
    assert body["code"] == "upstream_http_400"
    assert body["decision_id"]
    # nothing was generated: the reservation was refunded
    assert await _settled(stack, 0) == 0


async def test_ollama_native_upstream_is_reached_by_an_openai_client(stack: Stack) -> None:
    client = stack.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="tinyllama", max_tokens=4, messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.headers["X-Hexarch-Upstream"] == "ollama"
    reply = raw.parse()
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(
        model="tinyllama",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == REPLY_TOKENS


async def test_keys_reach_the_provider_and_nowhere_else(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = stack.openai()
    for model in MODELS:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "FAIL400"}]
            )
        assert not any(secret in str(caught.value.body) for secret in SECRETS)
    claude = stack.fakes["claude"].app[SEEN_KEY].headers[0]
    assert claude["x-api-key"] == anthropic_fake.KEY and claude["anthropic-version"]
    assert stack.fakes["gemini"].app[SEEN_KEY].headers[0]["x-goog-api-key"] == gemini_fake.KEY
    yandex = stack.fakes["yandex"].app[SEEN_KEY]
    assert yandex.headers[0]["Authorization"] == f"Api-Key {yandexgpt_fake.KEY}"
    assert yandex.requests[0]["body"]["modelUri"] == f"gpt://{yandexgpt_fake.FOLDER}/yandexgpt/latest"
    assert (
        "Authorization" not in stack.fakes["claude"].app[SEEN_KEY].headers[0]
    )  # the client's "unused" key stays
    text = await stack.metrics() + "\n".join(r.getMessage() for r in caplog.records)
    assert not any(secret in text for secret in SECRETS)


async def test_gigachat_token_is_cached_and_fetched_again_before_it_expires(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    # a token living 30 min is fetched once for many calls
    async for s in _stack(tmp_path, opa, flushed_redis_url(redis_server, DB)):
        for _ in range(3):
            await s.openai().chat.completions.create(
                model="GigaChat", messages=[{"role": "user", "content": "hi"}]
            )
        assert s.fakes["giga"].app[SEEN_KEY].token_exchanges == 1
        s.fakes["giga"].app[gigachat_fake.TOKENS_KEY].clear()
        await s.openai().chat.completions.create(
            model="GigaChat", messages=[{"role": "user", "content": "hi"}]
        )
        assert s.fakes["giga"].app[SEEN_KEY].token_exchanges == 2
    # a token within the refresh margin (60 s) of its expiry is replaced before the next call
    async for s in _stack(tmp_path, opa, flushed_redis_url(redis_server, DB), gigachat_ttl=30.0):
        for _ in range(3):
            reply = await s.openai().chat.completions.create(
                model="GigaChat", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == _words(REPLY_TOKENS)
        assert s.fakes["giga"].app[SEEN_KEY].token_exchanges == 3
        # a token the provider revoked early: refused once, fetched again, the call still answered
        s.fakes["giga"].app[gigachat_fake.TOKENS_KEY].clear()
        reply = await s.openai().chat.completions.create(
            model="GigaChat", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == _words(REPLY_TOKENS)
        assert s.fakes["giga"].app[SEEN_KEY].token_exchanges == 4


# --- Anthropic client -> /v1/messages -----------------------------------------------------------


@pytest.mark.parametrize("model", ["claude-fake-1", "gemini-2.0-flash", "tinyllama", "llama-3.1-8b"])
async def test_anthropic_client_works_through_the_sidecar(stack: Stack, model: str) -> None:
    import asyncio

    client = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0)

    def calls() -> tuple[int, int]:
        message = client.messages.create(
            model=model,
            max_tokens=5,
            system="be brief",
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 5
        if model not in ("tinyllama", "llama-3.1-8b"):  # the demo model has its own sentence
            assert message.content[0].type == "text" and message.content[0].text == _words(5)
        with client.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == REPLY_TOKENS
        assert text
        return _cost(message.usage.input_tokens, 5), _cost(final.usage.input_tokens, REPLY_TOKENS)

    first, second = await asyncio.to_thread(calls)
    assert await _settled(stack, first + second) == first + second


async def test_anthropic_client_sees_a_policy_refusal(stack: Stack) -> None:
    import asyncio

    client = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await asyncio.to_thread(
            client.messages.create,
            model="claude-fake-1",
            max_tokens=0,
            messages=[{"role": "user", "content": "x"}],
        )


async def test_the_same_policies_guard_both_ingresses(stack: Stack) -> None:
    import asyncio

    with pytest.raises(openai.PermissionDeniedError) as caught:
        await stack.openai().chat.completions.create(
            model="claude-forbidden-1", messages=[{"role": "user", "content": "hi"}]
        )
    body: Any = caught.value.body
    assert body["policy"] == "models"
    client = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError, match="models"):
        await asyncio.to_thread(
            client.messages.create,
            model="claude-forbidden-1",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert stack.fakes["claude"].app[SEEN_KEY].requests == []  # refused before any provider call
    assert await _settled(stack, 0) == 0


# --- routing -----------------------------------------------------------------------------------


async def test_models_lists_what_the_upstreams_serve(stack: Stack) -> None:
    listed = await stack.openai().models.list()
    owners = {m.id: m.owned_by for m in listed.data}
    assert owners == {
        "claude-*": "claude",
        "gemini-*": "gemini",
        "GigaChat*": "giga",
        "yandexgpt*": "yandex",
        "tinyllama*": "ollama",
        "llama-*": "groq",
    }
