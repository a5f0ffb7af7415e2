"""What every fake shares: deterministic text, usage, and an aiohttp server on loopback."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

REPLY_TOKENS = 12
_SENTENCE = (
    "the fake provider answers with this fixed sentence so that every test can count "
    "its words and tokens exactly without any randomness"
)
WORDS = tuple(_SENTENCE.split(" "))
UNSAFE = "UNSAFE"
FAIL400 = "FAIL400"


def prompt_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def reply(limit: int | None) -> list[str]:
    n = REPLY_TOKENS if limit is None else max(0, min(limit, REPLY_TOKENS))
    return [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(n)]


def truncated(limit: int | None) -> bool:
    return limit is not None and limit < REPLY_TOKENS


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


@dataclass
class Seen:
    """What reached a fake (tests check the translated requests with it)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    token_exchanges: int = 0


SEEN_KEY: web.AppKey[Seen] = web.AppKey("seen", Seen)


async def record(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    doc = orjson.loads(raw) if raw else {}
    seen = request.app[SEEN_KEY]
    seen.requests.append({"path": request.path, "query": request.query_string, "body": doc})
    seen.headers.append(dict(request.headers))
    return doc if isinstance(doc, dict) else {}


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")
