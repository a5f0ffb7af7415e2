"""Gemini API (https://ai.google.dev/api/generate-content): `POST /v1beta/models/{model}:generateContent`
and `:streamGenerateContent?alt=sse`, the key in `x-goog-api-key` (or `?key=`), `contents` of
`{role, parts: [{text}]}`, `systemInstruction`, `generationConfig.maxOutputTokens`; replies carry
`candidates[].finishReason` (STOP, MAX_TOKENS, SAFETY...) and `usageMetadata`. Errors:
`{"error": {"code", "message", "status"}}`.
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

KEY = "AIza-fake-gemini-key-0123456789"


def _error(code: int, status: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message, "status": status}}, code)


def _parts_text(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    return "".join(p.get("text", "") for p in node.get("parts") or () if isinstance(p, dict))


def _response(
    model: str, text: str, finish: str | None, prompt: int, completion: int | None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    if finish == "SAFETY":
        candidate["content"] = {"role": "model", "parts": []}
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
        ]
    doc: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "fake-response"}
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if completion is not None:
        usage["candidatesTokenCount"] = completion
        usage["totalTokenCount"] = prompt + completion
    doc["usageMetadata"] = usage
    return doc


async def models(request: web.Request) -> web.StreamResponse:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if key != KEY:
        return _error(
            403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers. Please use an API key."
        )
    tail = request.match_info["tail"]
    model, _, method = tail.partition(":")
    if method not in ("generateContent", "streamGenerateContent"):
        return _error(404, "NOT_FOUND", f"method {method} is not found")
    body = await record(request)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified")
    text = _parts_text(body.get("systemInstruction")) + "".join(_parts_text(c) for c in contents)
    if FAIL400 in text:
        return _error(400, "INVALID_ARGUMENT", "the fake refuses FAIL400")
    config = body.get("generationConfig") or {}
    limit = config.get("maxOutputTokens")
    unsafe = UNSAFE in text
    words = [] if unsafe else reply(limit)
    finish = "SAFETY" if unsafe else ("MAX_TOKENS" if truncated(limit) else "STOP")
    prompt = prompt_tokens(text)
    if method == "generateContent":
        return json_response(_response(model, "".join(words), finish, prompt, len(words)))
    if request.query.get("alt") != "sse":
        return _error(400, "INVALID_ARGUMENT", "this fake streams only with alt=sse")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, word in enumerate(words):
        last = i == len(words) - 1
        doc = _response(model, word, finish if last else None, prompt, len(words) if last else None)
        await resp.write(b"data: " + orjson.dumps(doc) + b"\r\n\r\n")
    if not words:
        await resp.write(b"data: " + orjson.dumps(_response(model, "", finish, prompt, 0)) + b"\r\n\r\n")
    await resp.write_eof()
    return resp


def create_app() -> web.Application:
    app = web.Application()
    app[SEEN_KEY] = Seen()
    app.router.add_post("/v1beta/models/{tail}", models)
    return app
