"""Ollama's native chat API: `POST /api/chat`, options.num_predict, NDJSON streams,
`prompt_eval_count`/`eval_count` and `done_reason` (https://github.com/ollama/ollama/blob/main/docs/api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.providers.base import (
    Adapter,
    Completion,
    Delta,
    NdjsonDecoder,
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

FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def _finish(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    if doc.get("done") is not True:
        return None, None
    native = doc.get("done_reason")
    native = native if isinstance(native, str) else "stop"
    return FINISH.get(native, "stop"), native


@register("ollama")
class OllamaAdapter(Adapter):
    stream_content_type = "application/x-ndjson"

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        system, turns = split_system(chat)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": role, "content": text} for role, text in turns
        ]
        options: dict[str, Any] = {}
        if (cap := max_tokens_of(chat)) is not None:
            options["num_predict"] = cap
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed")):
            if (value := number(chat, ours)) is not None:
                options[theirs] = value
        if (stops := stops_of(chat)) is not None:
            options["stop"] = stops
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if options:
            body["options"] = options
        return Wire("POST", "/api/chat", {"Content-Type": "application/json"}, json_body(body))

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        message = obj(doc, "message")
        finish, native = _finish(doc)
        return Completion(
            str(message.get("content") or ""),
            finish,
            native,
            as_int(doc.get("prompt_eval_count")),
            as_int(doc.get("eval_count")),
        )

    def stream_decoder(self) -> NdjsonDecoder:
        return _OllamaStream()


class _OllamaStream(NdjsonDecoder):
    def line(self, doc: dict[str, Any]) -> list[Delta]:
        message = obj(doc, "message")
        text = str(message.get("content") or "")
        finish, native = _finish(doc)
        if doc.get("done") is True:
            return [
                Delta(
                    text,
                    finish,
                    native,
                    as_int(doc.get("prompt_eval_count")),
                    as_int(doc.get("eval_count")),
                )
            ]
        return [Delta(text)] if text else []
