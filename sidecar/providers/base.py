"""The one small interface every provider adapter implements, and the registry of them.

The sidecar's canonical request is an OpenAI chat completions body. An adapter says what that body
becomes on a provider's wire (`request`), which headers authenticate it (`auth_headers`), and how a
reply (`reply`), a stream (`stream_decoder`), usage, a finish reason and an error body
(`error_message`) are read back. Finish reasons come back in OpenAI's vocabulary; a provider's
safety stop is `content_filter`. Adding a provider is one module that subclasses `Adapter` and
registers itself with `@register("name")`, plus its fake under tests/fakes/.

    Adapter
    ├── OpenAIAdapter      api: openai     (OpenAI, Groq, OpenRouter, llama.cpp, vLLM, Gemini's /openai)
    ├── OllamaAdapter      api: ollama     (/api/chat, NDJSON streams)
    ├── GeminiAdapter      api: gemini     (generateContent, streamGenerateContent?alt=sse)
    ├── AnthropicAdapter   api: anthropic  (/v1/messages, SSE events)
    ├── YandexGptAdapter   api: yandexgpt  (foundationModels/v1/completion)
    └── GigaChatAdapter    api: gigachat   (OAuth client credentials, then /chat/completions)
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from sidecar.settings import UpstreamSettings

CONTENT_FILTER = "content_filter"


@dataclass(frozen=True)
class Wire:
    """One request on a provider's wire; `path` is appended to the upstream's base_url."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    query: str = ""
    passthrough: bool = False  # the client's own request relayed: its headers (filtered) go along


@dataclass
class Completion:
    """A whole reply, read back."""

    text: str
    finish_reason: str | None  # OpenAI vocabulary: stop | length | content_filter | tool_calls
    native_finish: str | None  # what the provider said, for the log
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Delta:
    """One piece of a stream, read back: text, and at its end the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    native_finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class StreamDecoder:
    """Bytes of a provider stream in, Deltas out. Subclasses implement `event`."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Delta]:
        self._buffer += chunk
        out: list[Delta] = []
        for record in self._records():
            out.extend(self.event(record))
        return out

    def _records(self) -> Iterator[bytes]:
        raise NotImplementedError

    def event(self, record: bytes) -> list[Delta]:
        raise NotImplementedError


class SseDecoder(StreamDecoder):
    """Server-sent events: records end with a blank line; `event`/`data` fields are joined."""

    def _records(self) -> Iterator[bytes]:
        self._buffer = self._buffer.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            record, self._buffer = self._buffer.split(b"\n\n", 1)
            yield record

    def event(self, record: bytes) -> list[Delta]:
        name = ""
        data: list[bytes] = []
        for line in record.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip())
        payload = b"\n".join(data)
        if not payload or payload == b"[DONE]":
            return []
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return []
        return self.sse(name, doc) if isinstance(doc, dict) else []

    def sse(self, name: str, doc: dict[str, Any]) -> list[Delta]:
        raise NotImplementedError


class NdjsonDecoder(StreamDecoder):
    """One JSON object per line."""

    def _records(self) -> Iterator[bytes]:
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                yield line

    def event(self, record: bytes) -> list[Delta]:
        try:
            doc = orjson.loads(record)
        except orjson.JSONDecodeError:
            return []
        return self.line(doc) if isinstance(doc, dict) else []

    def line(self, doc: dict[str, Any]) -> list[Delta]:
        raise NotImplementedError


@dataclass
class Adapter:
    """One upstream's wire API. `secret` is its key (never logged: see __repr__)."""

    upstream: UpstreamSettings
    secret: str | None = field(default=None, repr=False)
    api: ClassVar[str] = ""
    # False: the provider speaks the OpenAI chat API itself, an OpenAI client's body goes unchanged.
    translates: ClassVar[bool] = True
    stream_content_type: ClassVar[str] = "text/event-stream"

    def __post_init__(self) -> None:
        """Per-upstream state (GigaChat's token cache) is set up here by the adapters that keep any."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upstream={self.upstream.name!r})"

    async def auth_headers(
        self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool = True
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    def forget_credentials(self) -> bool:
        """The provider refused our credentials: drop a cached token (GigaChat). True when one was
        dropped, so the call is worth one more try with a fresh token."""
        return False

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        raise NotImplementedError

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def error_message(self, status: int, raw: bytes) -> str:
        """The provider's own message out of an error body (its shape differs per provider), with
        our credentials cut out should the provider echo them."""
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            doc = None
        found = find_message(doc)
        if not found:
            text = raw.decode("utf-8", "replace").strip()
            found = text[:300] if text else f"HTTP {status}"
        return self.redact(found)

    def redact(self, text: str) -> str:
        for secret in self.credentials():
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def credentials(self) -> tuple[str, ...]:
        """Every secret this adapter sends (the key, and a token made from it)."""
        return (self.secret,) if self.secret else ()


def find_message(doc: Any) -> str | None:
    """`error.message`, `message` or `detail` in a decoded error body."""
    if isinstance(doc, list) and doc:
        return find_message(doc[0])
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail", "error_description"):
        if isinstance(doc.get(key), str):
            return str(doc[key])
    return None


ADAPTERS: dict[str, type[Adapter]] = {}


def register(api: str) -> Callable[[type[Adapter]], type[Adapter]]:
    def add(cls: type[Adapter]) -> type[Adapter]:
        cls.api = api
        ADAPTERS[api] = cls
        return cls

    return add


def adapter_for(upstream: UpstreamSettings, secret: str | None) -> Adapter:
    # importing the modules registers them
    from sidecar.providers import anthropic, gemini, gigachat, ollama, openai, yandexgpt  # noqa: F401

    return ADAPTERS[upstream.api](upstream, secret)


# ---------------------------------------------------------------------------------------------
# Reading the canonical (OpenAI chat) request


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def split_system(chat: Mapping[str, Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system text or None, [(role, text)] of the other messages) of an OpenAI chat body."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    messages = chat.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        text = text_of(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        else:
            turns.append(("assistant" if role == "assistant" else "user", text))
    return ("\n".join(system) if system else None), turns


def max_tokens_of(chat: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = chat.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def stops_of(chat: Mapping[str, Any]) -> list[str] | None:
    stop = chat.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return None


def number(chat: Mapping[str, Any], name: str) -> float | None:
    value = chat.get(name)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_int(value: Any) -> int | None:
    """Token counts; YandexGPT sends them as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def json_body(doc: Any) -> bytes:
    return orjson.dumps(doc)


def obj(doc: Any, key: str) -> dict[str, Any]:
    """`doc[key]` when both are JSON objects, else {} (replies are read defensively)."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def seq(doc: Any, key: str) -> list[Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else []
