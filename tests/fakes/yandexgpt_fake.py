"""YandexGPT foundation models text generation
(https://yandex.cloud/en/docs/foundation-models/text-generation/api-ref/TextGeneration/completion).

`POST /foundationModels/v1/completion` with `Authorization: Api-Key <key>` or `Bearer <IAM token>`,
`modelUri` `gpt://<folder>/<model>`, `completionOptions {stream, temperature, maxTokens (string)}`,
messages of `{role, text}`. The reply is `{"result": {"alternatives": [{"message", "status"}], "usage":
{"inputTextTokens", "completionTokens", "totalTokens"} (strings), "modelVersion"}}`; with `stream`
one such object per line, each with the whole text so far. A safety stop is
`ALTERNATIVE_STATUS_CONTENT_FILTER`. Errors: `{"error": {"grpcCode", "httpCode", "message", "httpStatus"}}`.
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

KEY = "AQVN-fake-yandex-api-key"
IAM_TOKEN = "t1.fake-iam-token"
FOLDER = "b1gfakefolder"


def _error(http: int, grpc: int, message: str) -> web.Response:
    status = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}.get(http, "Error")
    return json_response(
        {
            "error": {
                "grpcCode": grpc,
                "httpCode": http,
                "message": message,
                "httpStatus": status,
                "details": [],
            }
        },
        http,
    )


def _result(text: str, status: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "result": {
            "alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
            "usage": {
                "inputTextTokens": str(prompt),
                "completionTokens": str(completion),
                "totalTokens": str(prompt + completion),
            },
            "modelVersion": "23.10.2024",
        }
    }


async def completion(request: web.Request) -> web.StreamResponse:
    auth = request.headers.get("Authorization", "")
    if auth not in (f"Api-Key {KEY}", f"Bearer {IAM_TOKEN}"):
        return _error(401, 16, "Unknown api key")
    body = await record(request)
    uri = str(body.get("modelUri") or "")
    if not uri.startswith(f"gpt://{FOLDER}/"):
        return _error(403, 7, f"Permission to [resource-manager.folder {uri}] denied")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, 3, "messages: field is required")
    text = "".join(str(m.get("text", "")) for m in messages if isinstance(m, dict))
    if FAIL400 in text:
        return _error(400, 3, "the fake refuses FAIL400")
    options = body.get("completionOptions") or {}
    raw_limit = options.get("maxTokens")
    limit = int(raw_limit) if isinstance(raw_limit, str | int) and str(raw_limit).isdigit() else None
    unsafe = UNSAFE in text
    words = [] if unsafe else reply(limit)
    final = (
        "ALTERNATIVE_STATUS_CONTENT_FILTER"
        if unsafe
        else ("ALTERNATIVE_STATUS_TRUNCATED_FINAL" if truncated(limit) else "ALTERNATIVE_STATUS_FINAL")
    )
    prompt = prompt_tokens(text)
    if not options.get("stream"):
        return json_response(_result("".join(words), final, prompt, len(words)))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for i in range(1, len(words) + 1):
        status = final if i == len(words) else "ALTERNATIVE_STATUS_PARTIAL"
        await resp.write(orjson.dumps(_result("".join(words[:i]), status, prompt, i)) + b"\n")
    if not words:
        await resp.write(orjson.dumps(_result("", final, prompt, 0)) + b"\n")
    await resp.write_eof()
    return resp


def create_app() -> web.Application:
    app = web.Application()
    app[SEEN_KEY] = Seen()
    app.router.add_post("/foundationModels/v1/completion", completion)
    return app
