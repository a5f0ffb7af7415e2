"""Each provider fake is judged by the provider's official Python SDK: if the SDK parses the fake's
replies, streams, usage, finish reasons and errors, the fake speaks the provider's wire format.

YandexGPT's SDK (`yandex-cloud-ml-sdk`) reaches the foundation models over gRPC, not the REST
completion API the sidecar speaks, so its fake is checked against the documented REST reply in
tests/sidecar/test_providers.py instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anthropic
import gigachat
import gigachat.exceptions
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import anthropic_fake, gemini_fake, gigachat_fake
from tests.fakes.common import REPLY_TOKENS, SEEN_KEY, WORDS, base_url, serving


def _words(n: int) -> str:
    return " ".join(WORDS[:n])


@pytest.fixture
async def anthropic_server() -> AsyncIterator[TestServer]:
    async with serving(anthropic_fake.create_app()) as server:
        yield server


@pytest.fixture
async def gemini_server() -> AsyncIterator[TestServer]:
    async with serving(gemini_fake.create_app()) as server:
        yield server


@pytest.fixture
async def gigachat_server() -> AsyncIterator[TestServer]:
    async with serving(gigachat_fake.create_app()) as server:
        yield server


# --- Anthropic ---------------------------------------------------------------------------------


async def test_anthropic_sdk_reads_the_fake(anthropic_server: TestServer) -> None:
    client = anthropic.Anthropic(
        base_url=base_url(anthropic_server), api_key=anthropic_fake.KEY, max_retries=0
    )

    def calls() -> None:
        message = client.messages.create(
            model="claude-fake-1",
            max_tokens=5,
            system="be brief",
            messages=[{"role": "user", "content": "hello"}],
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == _words(5)
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 5
        assert message.usage.input_tokens == 4  # "be brief" + "hello" = 13 chars

        with client.messages.stream(
            model="claude-fake-1", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == _words(REPLY_TOKENS)
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == REPLY_TOKENS

        refused = client.messages.create(
            model="claude-fake-1", max_tokens=50, messages=[{"role": "user", "content": "UNSAFE"}]
        )
        assert refused.stop_reason == "refusal"

        with pytest.raises(anthropic.BadRequestError, match="FAIL400"):
            client.messages.create(
                model="claude-fake-1", max_tokens=5, messages=[{"role": "user", "content": "FAIL400"}]
            )
        wrong = anthropic.Anthropic(base_url=base_url(anthropic_server), api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            wrong.messages.create(
                model="claude-fake-1", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )

    await asyncio.to_thread(calls)


# --- Gemini ------------------------------------------------------------------------------------


async def test_google_genai_sdk_reads_the_fake(gemini_server: TestServer) -> None:
    client = genai.Client(
        api_key=gemini_fake.KEY,
        http_options=genai_types.HttpOptions(base_url=base_url(gemini_server), api_version="v1beta"),
    )

    def calls() -> None:
        config = genai_types.GenerateContentConfig(max_output_tokens=4, system_instruction="be brief")
        response = client.models.generate_content(model="gemini-2.0-flash", contents="hello", config=config)
        assert response.text == _words(4)
        assert response.candidates is not None
        assert response.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
        assert response.usage_metadata is not None
        assert response.usage_metadata.candidates_token_count == 4
        assert response.usage_metadata.prompt_token_count == 4

        pieces = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="hello"))
        assert "".join(p.text or "" for p in pieces) == _words(REPLY_TOKENS)
        last = pieces[-1]
        assert (
            last.candidates is not None and last.candidates[0].finish_reason == genai_types.FinishReason.STOP
        )
        assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count == REPLY_TOKENS

        blocked = client.models.generate_content(model="gemini-2.0-flash", contents="UNSAFE")
        assert blocked.candidates is not None
        assert blocked.candidates[0].finish_reason == genai_types.FinishReason.SAFETY

        with pytest.raises(genai_errors.ClientError, match="FAIL400"):
            client.models.generate_content(model="gemini-2.0-flash", contents="FAIL400")

    await asyncio.to_thread(calls)
    sent = gemini_server.app[SEEN_KEY].requests
    assert sent[0]["body"]["systemInstruction"]["parts"][0]["text"] == "be brief"
    assert sent[0]["body"]["generationConfig"]["maxOutputTokens"] == 4
    assert sent[1]["query"] == "alt=sse"


# --- GigaChat ----------------------------------------------------------------------------------


async def test_gigachat_sdk_reads_the_fake(gigachat_server: TestServer) -> None:
    url = base_url(gigachat_server)
    client = gigachat.GigaChat(
        base_url=f"{url}/api/v1",
        auth_url=f"{url}/api/v2/oauth",
        credentials=gigachat_fake.CREDENTIALS,
        scope=gigachat_fake.SCOPE,
        model="GigaChat",
        verify_ssl_certs=False,
        max_retries=0,
    )

    def calls() -> None:
        reply = client.chat({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3})
        assert reply.choices[0].message.content == _words(3)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3

        chunks = list(client.stream({"messages": [{"role": "user", "content": "hello"}]}))
        assert "".join(c.choices[0].delta.content for c in chunks) == _words(REPLY_TOKENS)
        assert chunks[-1].choices[0].finish_reason == "stop"

        filtered = client.chat("UNSAFE")
        assert filtered.choices[0].finish_reason == "blacklist"

    await asyncio.to_thread(calls)
    assert gigachat_server.app[SEEN_KEY].token_exchanges == 1  # the SDK reused its token


async def test_gigachat_sdk_sees_wrong_credentials(gigachat_server: TestServer) -> None:
    url = base_url(gigachat_server)
    client = gigachat.GigaChat(
        base_url=f"{url}/api/v1",
        auth_url=f"{url}/api/v2/oauth",
        credentials="d3Jvbmc6d3Jvbmc=",
        scope=gigachat_fake.SCOPE,
        model="GigaChat",
        verify_ssl_certs=False,
        max_retries=0,
    )
    with pytest.raises(gigachat.exceptions.AuthenticationError):
        await asyncio.to_thread(client.chat, "hello")
