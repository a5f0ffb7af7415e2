"""Streams end honestly: a runaway upstream is cut at the reserved output with a `length` ending, an
upstream dying mid-stream reaches the client as an error event, and a broken stream is charged what
was relayed, not the whole reservation. The upstream is a stand-in model provider (SSE and NDJSON)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.stream_guard import StreamGuard
from tests.sidecar.app_support import Harness, flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer

DB = 15
TOKENS_PER_HOUR = 1000
POLICY = f"""
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: openai
  model: tinyllama
policies:
  - id: token_limit
    rules:
      - resource: tinyllama
        max_tokens_per_hour: {TOKENS_PER_HOUR}
sidecar:
  anonymous:
    enabled: true
    id: guest
"""


async def _fake_stream(request: web.Request) -> web.StreamResponse:
    """SSE for /v1/..., NDJSON for /api/...; X-Fake-Mode: runaway (500 tokens, ignores max_tokens,
    reports usage at the end) | die (5 tokens, then the connection drops)."""
    mode = request.headers.get("X-Fake-Mode", "runaway")
    sse = request.path.startswith("/v1/")
    if mode == "whole":  # not streamed, ignores max_tokens: 500 tokens and an honest usage report
        text = " ".join(f"t{i}" for i in range(500))
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 500, "total_tokens": 503},
            }
        )
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if sse else "application/x-ndjson"}
    )
    await resp.prepare(request)
    count = 500 if mode == "runaway" else 5
    for i in range(count):
        if sse:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        else:
            line = {"model": "tinyllama", "message": {"role": "assistant", "content": f"t{i}"}, "done": False}
            await resp.write(orjson.dumps(line) + b"\n")
    if mode == "die":
        assert request.transport is not None
        request.transport.abort()
        return resp
    if sse:
        usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": count}}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
    else:
        await resp.write(
            orjson.dumps({"model": "tinyllama", "done": True, "prompt_eval_count": 3, "eval_count": count})
            + b"\n"
        )
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def h(opa: OpaServer, redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _fake_stream)
    app.router.add_post("/api/chat", _fake_stream)
    fake = TestServer(app, host="127.0.0.1")
    await fake.start_server()
    try:
        decisions = tmp_path / "decisions.log"  # the decision log: what each request settled
        text = POLICY + f"logging:\n  file: {decisions}\n"
        async with harness(text, tmp_path, opa, redis_url, fake) as h:
            yield h
    finally:
        await fake.close()


def _body(path: str, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "tinyllama",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if path.startswith("/v1/"):
        body["max_tokens"] = max_tokens
    else:
        body["options"] = {"num_predict": max_tokens}
    return body


async def _stream(h: Harness, path: str, mode: str, max_tokens: int) -> list[bytes]:
    async with h.session.post(
        h.url(path), json=_body(path, max_tokens), headers={"X-Fake-Mode": mode}
    ) as resp:
        assert resp.status == 200
        lines = []
        try:
            async for line in resp.content:
                lines.append(line.strip())
        except Exception:  # noqa: BLE001 - a broken stream ends the loop; what arrived is checked
            pass
    return [line for line in lines if line]


def _settled(h: Harness) -> list[dict[str, Any]]:
    path = h.settings.log_file
    assert path is not None
    text = Path(path).read_text() if Path(path).exists() else ""
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def _wait_settled(h: Harness, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        found = [d for d in _settled(h) if d.get("completion_tokens") is not None]
        if len(found) >= n:
            return found
        await asyncio.sleep(0.02)
    return _settled(h)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_runaway_stream_is_cut_at_the_reservation(h: Harness, path: str, redis_url: str) -> None:
    lines = await _stream(h, path, "runaway", 20)
    if path.startswith("/v1/"):
        events = [orjson.loads(line[5:]) for line in lines if line.startswith(b"data: {")]
        content = [e for e in events if e["choices"] and e["choices"][0].get("delta", {}).get("content")]
        assert len(content) == 20
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert lines[-1] == b"data: [DONE]"
    else:
        docs = [orjson.loads(line) for line in lines]
        assert len([d for d in docs if not d.get("done")]) == 20
        assert docs[-1]["done"] is True and docs[-1]["done_reason"] == "length"
    [record] = await _wait_settled(h, 1)
    assert record["completion_tokens"] == 20
    # the token window holds at most what was reserved: the runaway's 500 tokens never settled
    client = redis.Redis.from_url(redis_url)
    counted = sum(int(client.hget(k, "sum") or 0) for k in client.keys("hexarch:*token_limit*"))
    assert counted <= TOKENS_PER_HOUR
    assert counted == record["prompt_tokens"] + 20


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_upstream_dying_mid_stream_is_an_error_event_and_charges_what_was_relayed(
    h: Harness, path: str
) -> None:
    lines = await _stream(h, path, "die", 200)
    if path.startswith("/v1/"):
        assert b"event: error" in lines
        error = orjson.loads(lines[-1][5:])
        assert error["error"]["code"] == "upstream_error"
    else:
        assert "error" in orjson.loads(lines[-1])
    [record] = await _wait_settled(h, 1)
    assert record["completion_tokens"] == 5  # not the 200 reserved


def test_guard_keeps_partial_lines_until_they_complete() -> None:
    guard = StreamGuard(sse=False, cap=2)
    assert guard.feed(b'{"message":{"content":"a"}') == b""
    assert guard.feed(b"}\n{") == b'{"message":{"content":"a"}}\n'
    out = guard.feed(
        b'"message":{"content":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}}\n{"message":{"content":"c"}}\n'
    )
    assert guard.capped and guard.produced == 1  # the 9-token event would pass the cap of 2: cut
    assert b'"done_reason":"length"' in out and b'"c"' not in out


async def test_non_streamed_runaway_is_the_remaining_worst_case(h: Harness, redis_url: str) -> None:
    """Measured for docs/hardening.md: a whole (non-streamed) reply cannot be cut once the upstream
    sent it, so it settles what the upstream reports: 500 tokens against 20 reserved (25x one
    request's reservation). The overshoot is bounded by one reply per admitted request, and the
    window then refuses until it has room again."""
    body = {**_body("/v1/chat/completions", 20), "stream": False}
    async with h.session.post(
        h.url("/v1/chat/completions"), json=body, headers={"X-Fake-Mode": "whole"}
    ) as resp:
        assert resp.status == 200
    [record] = await _wait_settled(h, 1)
    assert record["completion_tokens"] == 500
    client = redis.Redis.from_url(redis_url)
    counted = sum(int(client.hget(k, "sum") or 0) for k in client.keys("hexarch:*token_limit*"))
    assert counted == 503  # the upstream's own report, 483 over the reservation


def test_guard_does_not_buffer_an_endless_line() -> None:
    guard = StreamGuard(sse=True, cap=5)
    blob = b"x" * (2 << 20)
    assert guard.feed(blob) == blob
    assert guard.produced == 0 and not guard.capped


async def test_official_clients_read_the_length_ending(h: Harness) -> None:
    """The cut stream ends the way each SDK expects: they parse it to the end without an error."""
    import ollama
    import openai

    client = openai.AsyncOpenAI(base_url=h.url("/v1"), api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="tinyllama",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=7,
        stream=True,
        extra_headers={"X-Fake-Mode": "runaway"},
    )
    chunks = [c async for c in stream]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 7
    assert chunks[-1].choices[0].finish_reason == "length"
    await client.close()

    parts = [
        p
        async for p in await ollama.AsyncClient(host=h.url(""), headers={"X-Fake-Mode": "runaway"}).chat(
            model="tinyllama",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"num_predict": 7},
        )
    ]
    assert sum(1 for p in parts if p.message.content) == 7
    assert parts[-1].done and parts[-1].done_reason == "length"
