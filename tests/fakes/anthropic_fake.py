"""Anthropic Messages API (https://docs.anthropic.com/en/api/messages, /en/api/messages-streaming).

`POST /v1/messages`: `x-api-key` (or `Authorization: Bearer`), `anthropic-version` required,
`max_tokens` required, top-level `system`; SSE events message_start, content_block_start, ping,
content_block_delta, content_block_stop, message_delta, message_stop. A safety stop is
`stop_reason: "refusal"`. Errors: `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes.common import (
    FAIL400,
    SEEN_KEY,
    UNSAFE,
    Seen,
    json_response,
    prompt_tokens,
    record,
    reply,
    truncated,
)

KEY = "sk-ant-fake-key-0123456789"


def _error(status: int, kind: str, message: str) -> web.Response:
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _sse(event: str, doc: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(doc) + b"\n\n"


async def messages(request: web.Request) -> web.StreamResponse:
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if key != KEY:
        return _error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(400, "invalid_request_error", "anthropic-version header is required")
    body = await record(request)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int):
        return _error(400, "invalid_request_error", "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "invalid_request_error", "messages: Field required")
    text = _text(body.get("system")) + "".join(
        _text(m.get("content")) for m in messages if isinstance(m, dict)
    )
    if FAIL400 in text:
        return _error(400, "invalid_request_error", "messages.0.content: the fake refuses FAIL400")
    unsafe = UNSAFE in text
    words = [] if unsafe else reply(max_tokens)
    stop = "refusal" if unsafe else ("max_tokens" if truncated(max_tokens) else "end_turn")
    usage = {"input_tokens": prompt_tokens(text), "output_tokens": len(words)}
    message: dict[str, Any] = {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "".join(words)}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return json_response(message)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    await resp.write(_sse("message_start", {"type": "message_start", "message": start}))
    await resp.write(
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
    )
    await resp.write(_sse("ping", {"type": "ping"}))
    for word in words:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
        await resp.write(_sse("content_block_delta", delta))
    await resp.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": len(words)},
    }
    await resp.write(_sse("message_delta", end))
    await resp.write(_sse("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    return resp


def create_app() -> web.Application:
    app = web.Application()
    app[SEEN_KEY] = Seen()
    app.router.add_post("/v1/messages", messages)
    return app
