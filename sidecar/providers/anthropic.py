"""Anthropic Messages: `POST /v1/messages` with top-level `system`, a required `max_tokens`, the key in
`x-api-key` and a dated `anthropic-version`; streams are SSE events (message_start,
content_block_delta, message_delta, message_stop). `refusal` is a safety stop
(https://docs.anthropic.com/en/api/messages, .../messages-streaming).

The same module reads the Messages API the other way round for the `/v1/messages` ingress:
`chat_of_messages` turns an Anthropic request into the canonical OpenAI chat body.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from sidecar.errors import BadRequest
from sidecar.providers.base import (
    CONTENT_FILTER,
    Adapter,
    Completion,
    Delta,
    SseDecoder,
    Wire,
    as_int,
    json_body,
    max_tokens_of,
    number,
    obj,
    register,
    split_system,
    stops_of,
)

VERSION = "2023-06-01"
# Anthropic requires max_tokens; a request that names none gets this (the sidecar's own cap, when
# a budget applies, is written into the body before this is read).
DEFAULT_MAX_TOKENS = 4096
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": CONTENT_FILTER,
}
# OpenAI finish reason -> Anthropic stop_reason, for replies sent to Anthropic clients.
STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    CONTENT_FILTER: "refusal",
}


def _text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        return ""
    return "".join(
        b["text"]
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


@register("anthropic")
class AnthropicAdapter(Adapter):
    async def auth_headers(
        self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool = True
    ) -> dict[str, str]:
        headers = {"anthropic-version": VERSION}
        if self.secret:
            headers["x-api-key"] = self.secret
        return headers

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        system, turns = split_system(chat)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens_of(chat) or DEFAULT_MAX_TOKENS,
            "messages": [{"role": role, "content": text} for role, text in turns],
        }
        if system is not None:
            body["system"] = system
        for name in ("temperature", "top_p", "top_k"):
            if (value := number(chat, name)) is not None:
                body[name] = value
        if (stops := stops_of(chat)) is not None:
            body["stop_sequences"] = stops
        if stream:
            body["stream"] = True
        return Wire("POST", "/v1/messages", {"Content-Type": "application/json"}, json_body(body))

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        native = doc.get("stop_reason")
        usage = obj(doc, "usage")
        return Completion(
            _text(doc.get("content")),
            FINISH.get(native, "stop") if isinstance(native, str) else None,
            native if isinstance(native, str) else None,
            as_int(usage.get("input_tokens")),
            as_int(usage.get("output_tokens")),
        )

    def stream_decoder(self) -> SseDecoder:
        return _AnthropicStream()


class _AnthropicStream(SseDecoder):
    def __init__(self) -> None:
        super().__init__()
        self._prompt: int | None = None

    def sse(self, name: str, doc: dict[str, Any]) -> list[Delta]:
        kind = doc.get("type", name)
        if kind == "message_start":
            message = obj(doc, "message")
            usage = obj(message, "usage")
            self._prompt = as_int(usage.get("input_tokens"))
            return []
        if kind == "content_block_delta":
            delta = obj(doc, "delta")
            text = delta.get("text") if delta.get("type") == "text_delta" else None
            return [Delta(text)] if isinstance(text, str) and text else []
        if kind == "message_delta":
            delta = obj(doc, "delta")
            usage = obj(doc, "usage")
            native = delta.get("stop_reason")
            prompt = as_int(usage.get("input_tokens"))
            return [
                Delta(
                    "",
                    FINISH.get(native, "stop") if isinstance(native, str) else None,
                    native if isinstance(native, str) else None,
                    prompt if prompt is not None else self._prompt,
                    as_int(usage.get("output_tokens")),
                )
            ]
        return []


# ---------------------------------------------------------------------------------------------
# The /v1/messages ingress: an Anthropic request read as the canonical OpenAI chat body


def chat_of_messages(body: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body an Anthropic Messages request means. Raises BadRequest on a wrong shape."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens is required and must be a positive integer", param="max_tokens")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "content": _text(system)})
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("each message needs role 'user' or 'assistant'", param="messages")
        out.append({"role": message["role"], "content": _text(message.get("content"))})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": out, "max_tokens": max_tokens}
    for name in ("temperature", "top_p", "top_k", "stream"):
        if name in body:
            chat[name] = body[name]
    if isinstance(body.get("stop_sequences"), list):
        chat["stop"] = body["stop_sequences"]
    return chat


def message_of(completion: Completion, model: str, message_id: str) -> dict[str, Any]:
    """A whole Anthropic Message for an Anthropic client."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": completion.text}],
        "stop_reason": STOP_REASON.get(completion.finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": completion.prompt_tokens or 0,
            "output_tokens": completion.completion_tokens or 0,
        },
    }


def error_of(status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
