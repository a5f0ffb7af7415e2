"""Replies in the client's API: whatever the provider spoke, an OpenAI client gets chat completions
(and `chat.completion.chunk` SSE ending in `[DONE]`), an Anthropic client gets Messages (and its SSE
events). A writer is picked by the ingress API from `WRITERS`."""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar

import orjson

from sidecar.providers.anthropic import STOP_REASON, message_of
from sidecar.providers.base import Completion


def _sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


class ReplyWriter:
    """One reply to one client. `usage_chunk`: the client asked for stream usage (OpenAI)."""

    prefix: ClassVar[str] = "chatcmpl-"

    def __init__(self, model: str, usage_chunk: bool) -> None:
        self.model = model
        self.usage_chunk = usage_chunk
        self.id = self.prefix + secrets.token_hex(12)
        self.created = int(time.time())

    def whole(self, completion: Completion) -> bytes:
        raise NotImplementedError

    def start(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        raise NotImplementedError

    def end(self, finish_reason: str | None, prompt: int | None, completion: int | None) -> bytes:
        raise NotImplementedError

    def error(self, message: str, code: str = "upstream_error") -> bytes:
        """The event that ends a stream the provider broke off (OpenAI-style SSE `error`)."""
        return _sse({"error": {"message": message, "type": "upstream_error", "code": code}}, "error")


class OpenAIWriter(ReplyWriter):
    def whole(self, completion: Completion) -> bytes:
        prompt, out = completion.prompt_tokens or 0, completion.completion_tokens or 0
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "logprobs": None,
                        "finish_reason": completion.finish_reason or "stop",
                    }
                ],
                "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
            }
        )

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        doc = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return _sse(doc)

    def start(self) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def text(self, text: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def end(self, finish_reason: str | None, prompt: int | None, completion: int | None) -> bytes:
        out = self._chunk([{"index": 0, "delta": {}, "finish_reason": finish_reason or "stop"}])
        if self.usage_chunk:
            p, c = prompt or 0, completion or 0
            usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            out += self._chunk([], usage=usage)
        return out + b"data: [DONE]\n\n"


class AnthropicWriter(ReplyWriter):
    prefix = "msg_"

    def whole(self, completion: Completion) -> bytes:
        return orjson.dumps(message_of(completion, self.model, self.id))

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _sse({"type": "message_start", "message": message}, "message_start") + _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )

    def text(self, text: str) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return _sse(delta, "content_block_delta")

    def end(self, finish_reason: str | None, prompt: int | None, completion: int | None) -> bytes:
        stop = STOP_REASON.get(finish_reason or "stop", "end_turn")
        return (
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            + _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"input_tokens": prompt or 0, "output_tokens": completion or 0},
                },
                "message_delta",
            )
            + _sse({"type": "message_stop"}, "message_stop")
        )

    def error(self, message: str, code: str = "upstream_error") -> bytes:
        # Anthropic's own stream error event (what its SDK raises as an APIStatusError)
        return _sse({"type": "error", "error": {"type": "api_error", "message": message}}, "error")


WRITERS: dict[str, type[ReplyWriter]] = {"openai.chat": OpenAIWriter, "anthropic.messages": AnthropicWriter}
