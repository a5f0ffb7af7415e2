"""GigaChat: an OAuth token from the client credentials (`POST <auth_url>` with
`Authorization: Basic <credentials>`, `RqUID` and `scope`, answered with `access_token` and
`expires_at` in ms), cached and fetched again `TOKEN_MARGIN_SECONDS` before it expires, then
`POST <base_url>/chat/completions` in an OpenAI-like shape with SSE streams
(https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/gigachat-api). Its base_url is the
API root, e.g. https://gigachat.devices.sberbank.ru/api/v1. `blacklist` is a safety stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from sidecar.errors import UpstreamUnavailable
from sidecar.providers.base import (
    CONTENT_FILTER,
    Adapter,
    Completion,
    SseDecoder,
    Wire,
    json_body,
    max_tokens_of,
    number,
    register,
    split_system,
)
from sidecar.providers.openai import ChatCompletionStream, chat_completion

DEFAULT_AUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
DEFAULT_SCOPE = "GIGACHAT_API_PERS"
TOKEN_MARGIN_SECONDS = 60.0
FINISH = {
    "stop": "stop",
    "length": "length",
    "function_call": "tool_calls",
    "blacklist": CONTENT_FILTER,
    "error": "stop",
}


@register("gigachat")
class GigaChatAdapter(Adapter):
    def __post_init__(self) -> None:
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.exchanges = 0  # token exchanges made (for tests and the log)

    async def auth_headers(
        self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool = True
    ) -> dict[str, str]:
        if not self.secret:
            return {}
        async with self._lock:
            if self._token is None or time.time() >= self._expires - TOKEN_MARGIN_SECONDS:
                await self._exchange(session, tls)
        return {"Authorization": f"Bearer {self._token}"}

    def credentials(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret, self._token) if s)

    def forget_credentials(self) -> bool:
        had = self._token is not None
        self._token = None
        return had

    async def _exchange(self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool) -> None:
        url = self.upstream.auth_url or DEFAULT_AUTH_URL
        headers = {
            "Authorization": f"Basic {self.secret}",
            "RqUID": str(uuid.uuid4()),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        timeout = aiohttp.ClientTimeout(total=self.upstream.timeout_seconds)
        try:
            async with session.post(
                url,
                data={"scope": self.upstream.scope or DEFAULT_SCOPE},
                headers=headers,
                timeout=timeout,
                ssl=tls,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.upstream.name}': the GigaChat token exchange failed ({type(exc).__name__})"
            ) from exc
        doc: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
        if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
            raise UpstreamUnavailable(
                f"upstream '{self.upstream.name}': the GigaChat token exchange answered HTTP {status}: "
                f"{self.error_message(status, raw)}"
            )
        self._token = doc["access_token"]
        expires = doc.get("expires_at")
        # expires_at is in milliseconds since the epoch
        self._expires = expires / 1000 if isinstance(expires, int | float) else time.time() + 1800
        self.exchanges += 1

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        system, turns = split_system(chat)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": role, "content": text} for role, text in turns
        ]
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if (cap := max_tokens_of(chat)) is not None:
            body["max_tokens"] = cap
        for name in ("temperature", "top_p", "repetition_penalty"):
            if (value := number(chat, name)) is not None:
                body[name] = value
        return Wire("POST", "/chat/completions", {"Content-Type": "application/json"}, json_body(body))

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        return chat_completion(doc, FINISH)  # GigaChat answers in the chat-completions shape

    def stream_decoder(self) -> SseDecoder:
        return ChatCompletionStream(FINISH)
