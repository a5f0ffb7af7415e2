"""Streams end honestly and stay within what was reserved.

`StreamGuard` sits on a relayed stream (OpenAI-style SSE or Ollama NDJSON) and:

- **counts the output** as it passes: each event carrying generated text counts one token, or
  ceil(chars / 4) for an event with more than 16 characters (an upstream that packs many tokens in
  one event). `produced` is what a stream that broke off without a usage report is charged (instead
  of the whole reservation);
- **caps it**: when an event would take `produced` past `cap` (the output the request reserved:
  the upstream runs past what it was granted) it stops relaying before that event and ends the
  stream the way the wire API ends a length-limited reply: a final chunk with
  `finish_reason: "length"` and `data: [DONE]` (SSE), or a `{"done": true, "done_reason": "length"}`
  line (Ollama). An upstream that ignores `max_tokens` can then not settle past the reservation;
- **reports failures**: `error_bytes(message)` is the error event a client reads when the upstream
  dies mid-stream: `event: error` + `data: {"error": {...}}` (SSE) or `{"error": "..."}` (NDJSON),
  instead of a cleanly ended stream that silently truncated the reply.

Lines are processed whole: a partial line waits in a buffer for the rest.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

MULTI_TOKEN_CHARS = 16
# A "line" longer than this is not an SSE/NDJSON event: it is passed on uncounted, not buffered
MAX_LINE_BYTES = 1 << 20


def _content_of(doc: Any) -> str:
    """Generated text in one decoded stream event (OpenAI chat/completions, Ollama chat/generate)."""
    if not isinstance(doc, dict):
        return ""
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            return text if isinstance(text, str) else ""
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    message = doc.get("message")
    if isinstance(message, dict):
        text = message.get("content")
        return text if isinstance(text, str) else ""
    text = doc.get("response")
    return text if isinstance(text, str) else ""


def tokens_of(text: str) -> int:
    if not text:
        return 0
    return 1 if len(text) <= MULTI_TOKEN_CHARS else math.ceil(len(text) / 4)


class StreamGuard:
    def __init__(self, sse: bool, cap: int | None, model: str | None = None) -> None:
        self.sse = sse
        self.cap = cap if cap is not None and cap > 0 else None
        self.model = model
        self.produced = 0
        self.capped = False
        self._buffer = b""
        self._last_id: str | None = None
        self._ollama_field = "message"  # or "response" (generate): the ending line carries it

    def feed(self, chunk: bytes) -> bytes:
        """The part of `chunk` to pass on (whole lines); after the cap is reached, nothing more."""
        if self.capped:
            return b""
        data = self._buffer + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > MAX_LINE_BYTES:
                self._buffer = b""
                return data
            self._buffer = data
            return b""
        self._buffer = data[cut + 1 :]
        out: list[bytes] = []
        for line in data[: cut + 1].splitlines(keepends=True):
            tokens = self._count(line)
            if self.cap is not None and tokens and self.produced + tokens > self.cap:
                # the upstream runs past the output it was granted: end the reply here
                self.capped = True
                if self.sse and out and out[-1].strip():
                    out.append(b"\n")  # close an event left open
                out.append(self._final_length())
                self._buffer = b""
                break
            self.produced += tokens
            out.append(line)
        return b"".join(out)

    def take(self, text: str) -> bool:
        """For a stream the sidecar writes itself (translated from another provider's API): count
        `text`; False, and capped, when it would take the output past the cap (not to be sent)."""
        if self.capped:
            return False
        tokens = tokens_of(text)
        if self.cap is not None and tokens and self.produced + tokens > self.cap:
            self.capped = True
            return False
        self.produced += tokens
        return True

    def finish(self) -> bytes:
        """What is left in the buffer when the upstream ended normally."""
        rest, self._buffer = self._buffer, b""
        if not rest or self.capped:
            return b""
        tokens = self._count(rest)
        if self.cap is not None and tokens and self.produced + tokens > self.cap:
            self.capped = True
            return self._final_length()
        self.produced += tokens
        return rest

    def _count(self, line: bytes) -> int:
        """Tokens of generated text in one line (0 for anything else)."""
        text = line.strip()
        if self.sse:
            if not text.startswith(b"data:"):
                return 0
            text = text[5:].strip()
            if not text or text == b"[DONE]":
                return 0
        elif not text:
            return 0
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return 0
        if isinstance(doc, dict):
            if isinstance(doc.get("id"), str):
                self._last_id = doc["id"]
            if "message" in doc:
                self._ollama_field = "message"
            elif "response" in doc:
                self._ollama_field = "response"
        return tokens_of(_content_of(doc))

    def _final_length(self) -> bytes:
        if self.sse:
            final: dict[str, Any] = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            }
            if self._last_id is not None:
                final["id"] = self._last_id
            if self.model is not None:
                final["model"] = self.model
            return b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n"
        line: dict[str, Any] = {"done": True, "done_reason": "length"}
        if self.model is not None:
            line["model"] = self.model
        if self._ollama_field == "message":
            line["message"] = {"role": "assistant", "content": ""}
        else:
            line["response"] = ""
        return orjson.dumps(line) + b"\n"

    def error_bytes(self, message: str, code: str = "upstream_error") -> bytes:
        """The error event that ends a stream the upstream broke off."""
        if self.sse:
            doc = {"error": {"message": message, "type": "upstream_error", "code": code}}
            return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"
        return orjson.dumps({"error": message}) + b"\n"
