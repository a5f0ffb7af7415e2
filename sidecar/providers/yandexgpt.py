"""YandexGPT, the foundation models text generation API: `POST /foundationModels/v1/completion` with
`modelUri` = `gpt://<folder_id>/<model>`, `completionOptions` (`maxTokens` as a string), messages of
`{role, text}`; the key as `Authorization: Api-Key <key>` or an IAM token as `Bearer <token>`, the folder
in `x-folder-id` (https://yandex.cloud/en/docs/foundation-models/text-generation/api-ref/TextGeneration/completion).
A streamed reply is one JSON object per line, each carrying the whole text so far.
`ALTERNATIVE_STATUS_CONTENT_FILTER` is a safety stop."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from sidecar.providers.base import (
    CONTENT_FILTER,
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
)

FINISH = {
    "ALTERNATIVE_STATUS_FINAL": "stop",
    "ALTERNATIVE_STATUS_TRUNCATED_FINAL": "length",
    "ALTERNATIVE_STATUS_CONTENT_FILTER": CONTENT_FILTER,
    "ALTERNATIVE_STATUS_TOOL_CALLS": "tool_calls",
}


def _read(doc: Mapping[str, Any]) -> tuple[str, str | None, str | None, int | None, int | None]:
    result = obj(doc, "result") or dict(doc)
    alternatives = result.get("alternatives")
    first = alternatives[0] if isinstance(alternatives, list) and alternatives else {}
    first = first if isinstance(first, dict) else {}
    message = obj(first, "message")
    native = first.get("status")
    finish = FINISH.get(native) if isinstance(native, str) else None
    usage = obj(result, "usage")
    return (
        str(message.get("text") or ""),
        finish,
        native if finish is not None else None,
        as_int(usage.get("inputTextTokens")),
        as_int(usage.get("completionTokens")),
    )


@register("yandexgpt")
class YandexGptAdapter(Adapter):
    stream_content_type = "application/json"

    async def auth_headers(
        self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool = True
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.secret:
            scheme = "Bearer" if self.upstream.key_type == "iam_token" else "Api-Key"
            headers["Authorization"] = f"{scheme} {self.secret}"
        if self.upstream.folder_id:
            headers["x-folder-id"] = self.upstream.folder_id
        return headers

    def model_uri(self, model: str) -> str:
        if "://" in model:
            return model
        return f"gpt://{self.upstream.folder_id or ''}/{model}"

    def request(self, chat: Mapping[str, Any], model: str, stream: bool) -> Wire:
        system, turns = split_system(chat)
        messages = ([{"role": "system", "text": system}] if system is not None else []) + [
            {"role": role, "text": text} for role, text in turns
        ]
        options: dict[str, Any] = {"stream": stream}
        if (temperature := number(chat, "temperature")) is not None:
            options["temperature"] = temperature
        if (cap := max_tokens_of(chat)) is not None:
            options["maxTokens"] = str(cap)
        body = {"modelUri": self.model_uri(model), "completionOptions": options, "messages": messages}
        return Wire(
            "POST", "/foundationModels/v1/completion", {"Content-Type": "application/json"}, json_body(body)
        )

    def reply(self, doc: Mapping[str, Any]) -> Completion:
        return Completion(*_read(doc))

    def stream_decoder(self) -> NdjsonDecoder:
        return _YandexStream()


class _YandexStream(NdjsonDecoder):
    """Each line repeats the whole text so far: pass on what is new."""

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0

    def line(self, doc: dict[str, Any]) -> list[Delta]:
        text, finish, native, prompt, completion = _read(doc)
        new = text[self._sent :]
        self._sent = max(self._sent, len(text))
        if finish is None and not new:
            return []
        return [Delta(new, finish, native, prompt if finish else None, completion if finish else None)]
