"""The demo model speaks OpenAI and Ollama well enough for their official clients, deterministically."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import ollama
import openai
import pytest
from aiohttp.test_utils import TestServer

from sidecar.demo_model import DemoSettings, count_tokens, create_demo_app, reply_words
from tests.support.servers import free_port, wait_for


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    server = TestServer(create_demo_app(DemoSettings(tokens_per_reply=8)), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def start(settings: DemoSettings) -> TestServer:
    server = TestServer(create_demo_app(settings), host="127.0.0.1")
    await server.start_server()
    return server


async def stats(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/demo/stats") as resp:
        body: dict[str, object] = await resp.json()
        return body


PROMPT = "What is Python?"  # 15 characters -> 4 prompt tokens


async def test_openai_chat_has_deterministic_usage(demo_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key="unused")
    first = await client.chat.completions.create(
        model="tinyllama", messages=[{"role": "user", "content": PROMPT}], max_tokens=5
    )
    second = await client.chat.completions.create(
        model="tinyllama", messages=[{"role": "user", "content": PROMPT}], max_tokens=5
    )
    assert first.usage is not None and second.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (4, 5)
    assert first.choices[0].message.content == second.choices[0].message.content == "".join(reply_words(5))
    assert first.choices[0].finish_reason == "length"
    full = await client.chat.completions.create(
        model="tinyllama", messages=[{"role": "user", "content": "x"}]
    )
    assert full.usage is not None and full.usage.completion_tokens == 8
    assert full.choices[0].finish_reason == "stop"
    await client.close()


async def test_openai_stream_with_usage_chunk(demo_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="tinyllama",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hexarch demo model"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)
    await client.close()


async def test_openai_completions_embeddings_models(demo_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key="unused")
    completion = await client.completions.create(model="tinyllama", prompt="abcdefgh", max_tokens=2)
    assert completion.choices[0].text == "Hexarch demo"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    stream = await client.completions.create(model="tinyllama", prompt="abc", max_tokens=2, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "Hexarch demo"
    # The client asks for base64 unless told otherwise; both encodings give the same vector.
    b64 = await client.embeddings.create(model="embed", input=["one", "two"])
    floats = await client.embeddings.create(model="embed", input="one", encoding_format="float")
    assert len(b64.data) == 2 and len(b64.data[0].embedding) == 8
    assert b64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    models = await client.models.list()
    assert "tinyllama" in [m.id for m in models.data]
    await client.close()


async def test_ollama_client_chat_generate_tags(demo_url: str) -> None:
    client = ollama.AsyncClient(host=demo_url)
    reply = await client.chat(
        model="tinyllama", messages=[{"role": "user", "content": PROMPT}], options={"num_predict": 4}
    )
    assert reply.message.content == "".join(reply_words(4))
    assert (reply.prompt_eval_count, reply.eval_count, reply.done) == (4, 4, True)
    parts = [
        p
        async for p in await client.chat(
            model="tinyllama", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    ]
    assert parts[-1].done and parts[-1].eval_count == 8 and parts[-1].prompt_eval_count == 4
    assert "".join(p.message.content or "" for p in parts) == "".join(reply_words(8))
    gen = await client.generate(model="tinyllama", prompt="12345678", options={"num_predict": 2})
    assert (gen.response, gen.prompt_eval_count, gen.eval_count) == ("Hexarch demo", 2, 2)
    tags = await client.list()
    assert [m.model for m in tags.models] == ["tinyllama:latest"]


async def test_ollama_streams_ndjson_by_default(demo_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{demo_url}/api/chat", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
            lines = [line for line in (await resp.text()).splitlines() if line]
    assert len(lines) == 9  # 8 words and the final done chunk


async def test_tinyllama_app_endpoints(demo_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{demo_url}/api/chat", json={"message": "What is AI?", "num_predict": 3}
        ) as r:
            assert (await r.json())["response"] == "Hexarch demo model"
        async with session.post(f"{demo_url}/api/chat-with-voice", json={"message": "Hello world"}) as r:
            assert r.content_type == "audio/mpeg"
            assert (await r.read()).startswith(b"ID3")
        async with session.get(f"{demo_url}/api/models") as r:
            assert "tinyllama" in (await r.json())["models"]
        async with session.get(f"{demo_url}/api/stats") as r:
            assert (await r.json())["total_requests"] == 2
        async with session.get(f"{demo_url}/health") as r:
            assert await r.json() == {"status": "ok", "model": "tinyllama"}


async def test_stats_count_what_reached_the_server(demo_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{demo_url}/v1", api_key="unused")
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}], max_tokens=1)
    seen = await stats(demo_url)
    assert seen["by_path"] == {"/v1/chat/completions": 1}
    recent = seen["recent"]
    assert isinstance(recent, list) and recent[0]["body"]["max_tokens"] == 1
    async with aiohttp.ClientSession() as session, session.post(f"{demo_url}/demo/reset") as resp:
        assert resp.status == 200
    assert (await stats(demo_url))["total"] == 0
    await client.close()


async def test_failure_rate_is_seeded_and_surfaces_as_500() -> None:
    outcomes = []
    for _ in range(2):
        server = await start(DemoSettings(failure_rate=0.5, seed=7))
        url = f"http://127.0.0.1:{server.port}"
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.post(f"{url}/v1/chat/completions", json={"messages": []}) as resp:
                    statuses.append(resp.status)
        outcomes.append(statuses)
        assert (await stats(url))["failures"] == statuses.count(500)
        await server.close()
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}
    server = await start(DemoSettings(failure_rate=1.0))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
    await client.close()
    await server.close()


async def test_latency_and_forced_status(demo_url: str) -> None:
    server = await start(DemoSettings(latency_ms=150))
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        async with session.post(
            f"http://127.0.0.1:{server.port}/api/generate", json={"stream": False}
        ) as resp:
            assert resp.status == 200
        assert time.monotonic() - began >= 0.15
        async with session.post(f"{demo_url}/api/chat", json={}, headers={"X-Demo-Status": "503"}) as resp:
            assert resp.status == 503
            assert "error" in await resp.json()
    await server.close()


async def test_bad_json_is_a_400(demo_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{demo_url}/v1/chat/completions", data=b"{nope") as resp:
            assert resp.status == 400
            assert "invalid JSON" in (await resp.json())["error"]["message"]
        async with session.post(f"{demo_url}/api/chat", data=b"[1]") as resp:
            assert resp.status == 400


def test_prompt_tokens_are_a_quarter_of_the_characters() -> None:
    assert [count_tokens("a" * n) for n in (0, 1, 4, 5, 400)] == [0, 1, 1, 2, 100]


def test_command_line_serves_on_the_given_port() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "sidecar.demo_model", "--port", str(port), "--tokens-per-reply", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def up() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                return bool(resp.status == 200)

        wait_for(up, 10, "demo model")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/generate",
            data=b'{"model": "tinyllama", "prompt": "x", "stream": false}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert b'"response":"Hexarch demo"' in resp.read()
    finally:
        proc.terminate()
        proc.wait(5)
