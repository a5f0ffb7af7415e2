"""GigaChat API (https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/gigachat-api).

`POST /api/v2/oauth` with `Authorization: Basic <credentials>`, an `RqUID` header and the form field
`scope` answers `{"access_token", "expires_at"}` (milliseconds); `POST /api/v1/chat/completions` with
`Authorization: Bearer <token>` answers in an OpenAI-like shape; `finish_reason` `blacklist` is its
safety stop; streams are SSE `data:` lines ending with `data: [DONE]`. Tokens here live
`token_seconds` (short in tests, so refreshing is exercised).
"""

from __future__ import annotations

import secrets
import time
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

CREDENTIALS = "ZmFrZS1jbGllbnQtaWQ6ZmFrZS1jbGllbnQtc2VjcmV0"  # base64("fake-client-id:fake-client-secret")
SCOPE = "GIGACHAT_API_PERS"
TOKENS_KEY: web.AppKey[dict[str, float]] = web.AppKey("tokens", dict)
TTL_KEY: web.AppKey[float] = web.AppKey("ttl", float)


async def oauth(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != f"Basic {CREDENTIALS}":
        return json_response({"code": 6, "message": "credentials doesn't match db data"}, 401)
    if not request.headers.get("RqUID"):
        return json_response({"code": 5, "message": "RqUID is required"}, 400)
    form = await request.post()
    if form.get("scope") != SCOPE:
        return json_response({"code": 7, "message": "scope is wrong"}, 400)
    request.app[SEEN_KEY].token_exchanges += 1
    token = secrets.token_hex(16)
    expires = time.time() + request.app[TTL_KEY]
    request.app[TOKENS_KEY][token] = expires
    return json_response({"access_token": token, "expires_at": int(expires * 1000)})


def _chunk(model: str, delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None) -> bytes:
    choice: dict[str, Any] = {"delta": delta, "index": 0}
    if finish is not None:
        choice["finish_reason"] = finish
    doc: dict[str, Any] = {
        "choices": [choice],
        "created": int(time.time()),
        "model": model,
        "object": "chat.completion",
    }
    if usage is not None:
        doc["usage"] = usage
    return b"data: " + orjson.dumps(doc) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    expires = request.app[TOKENS_KEY].get(token)
    if expires is None or expires <= time.time():
        return json_response({"status": 401, "message": "Token has expired"}, 401)
    body = await record(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return json_response({"status": 422, "message": "messages: field required"}, 422)
    text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    if FAIL400 in text:
        return json_response({"status": 400, "message": "the fake refuses FAIL400"}, 400)
    limit = body.get("max_tokens")
    unsafe = UNSAFE in text
    words = reply(limit) if not unsafe else ["I", " cannot", " discuss", " that"]
    finish = "blacklist" if unsafe else ("length" if truncated(limit) else "stop")
    prompt = prompt_tokens(text)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(words),
        "total_tokens": prompt + len(words),
        "precached_prompt_tokens": 0,
    }
    model = str(body.get("model") or "GigaChat")
    if not body.get("stream"):
        return json_response(
            {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": "".join(words)},
                        "index": 0,
                        "finish_reason": finish,
                    }
                ],
                "created": int(time.time()),
                "model": model,
                "object": "chat.completion",
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, word in enumerate(words):
        last = i == len(words) - 1
        await resp.write(
            _chunk(
                model,
                {"content": word, "role": "assistant"},
                finish if last else None,
                usage if last else None,
            )
        )
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def create_app(token_seconds: float = 1800.0) -> web.Application:
    app = web.Application()
    app[SEEN_KEY] = Seen()
    app[TOKENS_KEY] = {}
    app[TTL_KEY] = token_seconds
    app.router.add_post("/api/v2/oauth", oauth)
    app.router.add_post("/api/v1/chat/completions", chat)
    return app
