"""OpenAI chat completions, as spoken by OpenAI, Groq, OpenRouter, llama.cpp, vLLM and Gemini's
OpenAI endpoint. An OpenAI client's body goes through unchanged; replies are read back only when
the client speaks another API (the Anthropic Messages ingress)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.providers.base import (
    Adapter,
    Completion,
    Delta,
    SseDecoder,
    Wire,
    as_int,
    json_body,
    obj,
    register,
)

FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}


def _usage(doc: Mapping[str, Any]) -> tuple[int | None, int | None]:
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None, None
    return as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))


@register("openai")
class OpenAIAdapter(Adapter):
    translates = False

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        body = {**chat, "model": model, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return Wire("POST", "/v1/chat/completions", {"Content-Type": "application/json"}, json_body(body))

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        return chat_completion(doc, FINISH)

    def stream_decoder(self) -> SseDecoder:
        return ChatCompletionStream(FINISH)


def _finish(native: Any, finish: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The OpenAI finish reason for a provider's own (`finish`: its table; unknown ones: stop)."""
    if not isinstance(native, str) or not native:
        return None, None
    return finish.get(native, "stop"), native


def chat_completion(doc: Mapping[str, Any], finish: Mapping[str, str]) -> Completion:
    """A chat-completions reply (OpenAI's shape, also GigaChat's) read back with `finish`."""
    choices = doc.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = obj(first, "message")
    reason, native = _finish(first.get("finish_reason"), finish)
    prompt, completion = _usage(doc)
    return Completion(str(message.get("content") or ""), reason, native, prompt, completion)


class ChatCompletionStream(SseDecoder):
    """A chat-completions stream (OpenAI's chunks, also GigaChat's) read back with `finish`."""

    def __init__(self, finish: Mapping[str, str]) -> None:
        super().__init__()
        self._finish = finish

    def sse(self, name: str, doc: dict[str, Any]) -> list[Delta]:
        out: list[Delta] = []
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = obj(choice, "delta")
            reason, native = _finish(choice.get("finish_reason"), self._finish)
            text = str(delta.get("content") or "")
            if text or native:
                out.append(Delta(text, reason, native))
        prompt, completion = _usage(doc)
        if prompt is not None or completion is not None:
            out.append(Delta(prompt_tokens=prompt, completion_tokens=completion))
        return out
