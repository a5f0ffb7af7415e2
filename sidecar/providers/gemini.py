"""Gemini's native API: `POST /v1beta/models/{model}:generateContent` and
`:streamGenerateContent?alt=sse`, `systemInstruction`, `generationConfig.maxOutputTokens`, the key in
`x-goog-api-key` (https://ai.google.dev/api/generate-content). `SAFETY`, `BLOCKLIST`,
`PROHIBITED_CONTENT`, `SPII`, `RECITATION` and a blocked prompt are safety stops."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

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
    seq,
    split_system,
    stops_of,
)

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": CONTENT_FILTER,
    "RECITATION": CONTENT_FILTER,
    "BLOCKLIST": CONTENT_FILTER,
    "PROHIBITED_CONTENT": CONTENT_FILTER,
    "SPII": CONTENT_FILTER,
    "IMAGE_SAFETY": CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": "stop",
    "OTHER": "stop",
}


def _read(doc: Mapping[str, Any]) -> Delta:
    """Text, finish and usage of one GenerateContentResponse (whole or a stream piece)."""
    out = Delta()
    candidates = doc.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    if isinstance(first, dict):
        content = obj(first, "content")
        parts = seq(content, "parts")
        out.text = "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        native = first.get("finishReason")
        if isinstance(native, str) and native != "FINISH_REASON_UNSPECIFIED":
            out.native_finish = native
            out.finish_reason = FINISH.get(native, "stop")
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        out.native_finish = f"prompt blocked: {feedback['blockReason']}"
        out.finish_reason = CONTENT_FILTER
    usage = doc.get("usageMetadata")
    if isinstance(usage, dict):
        out.prompt_tokens = as_int(usage.get("promptTokenCount"))
        completion = as_int(usage.get("candidatesTokenCount"))
        thoughts = as_int(usage.get("thoughtsTokenCount")) or 0
        if completion is not None or out.prompt_tokens is not None:
            out.completion_tokens = (completion or 0) + thoughts
    return out


@register("gemini")
class GeminiAdapter(Adapter):
    async def auth_headers(
        self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool = True
    ) -> dict[str, str]:
        return {"x-goog-api-key": self.secret} if self.secret else {}

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        system, turns = split_system(chat)
        body: dict[str, Any] = {
            "contents": [
                {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
                for role, text in turns
            ]
        }
        if system is not None:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if (cap := max_tokens_of(chat)) is not None:
            config["maxOutputTokens"] = cap
        for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
            if (value := number(chat, ours)) is not None:
                config[theirs] = value
        if (stops := stops_of(chat)) is not None:
            config["stopSequences"] = stops
        if config:
            body["generationConfig"] = config
        name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        method = "streamGenerateContent" if stream else "generateContent"
        path = f"/v1beta/{quote(name, safe='/')}:{method}"
        headers = {"Content-Type": "application/json"}
        return Wire("POST", path, headers, json_body(body), "alt=sse" if stream else "")

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        d = _read(doc)
        return Completion(d.text, d.finish_reason, d.native_finish, d.prompt_tokens, d.completion_tokens)

    def stream_decoder(self) -> SseDecoder:
        return _GeminiStream()


class _GeminiStream(SseDecoder):
    def sse(self, name: str, doc: dict[str, Any]) -> list[Delta]:
        return [_read(doc)]
