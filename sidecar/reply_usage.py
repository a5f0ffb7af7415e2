"""Real token usage read from an upstream reply: OpenAI `usage`, Ollama `prompt_eval_count`/`eval_count`.

Streams are scanned line by line as they pass through (SSE `data: {...}` lines and Ollama's NDJSON);
only lines that can carry counts are decoded, so pass-through stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class TokenCounts:
    prompt_tokens: int
    completion_tokens: int


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def counts_of(doc: Any) -> TokenCounts | None:
    """Counts in one decoded reply object, or None when it carries none."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    if isinstance(usage, dict):
        prompt = _int(usage.get("prompt_tokens"))
        if prompt is None:
            prompt = _int(usage.get("input_tokens"))
        completion = _int(usage.get("completion_tokens"))
        if completion is None:
            completion = _int(usage.get("output_tokens"))
        if completion is None and prompt is not None:
            total = _int(usage.get("total_tokens"))
            completion = max(0, total - prompt) if total is not None else 0
        if prompt is not None and completion is not None:
            return TokenCounts(prompt, completion)
    # The TinyLlama app's flat reply may carry its counts at the top: {"response", "prompt_tokens", ...}
    prompt = _int(doc.get("prompt_tokens"))
    completion = _int(doc.get("completion_tokens"))
    if prompt is not None and completion is not None:
        return TokenCounts(prompt, completion)
    prompt = _int(doc.get("prompt_eval_count"))
    completion = _int(doc.get("eval_count"))
    if prompt is not None or completion is not None:
        return TokenCounts(prompt or 0, completion or 0)
    return None


def counts_of_body(raw: bytes) -> TokenCounts | None:
    try:
        return counts_of(orjson.loads(raw)) if raw else None
    except orjson.JSONDecodeError:
        return None


_MARKERS = (b"prompt_tokens", b"eval_count", b"input_tokens")


class StreamScanner:
    """Feed raw chunks; `counts` keeps the last counts seen (OpenAI's usage chunk, Ollama's done line)."""

    __slots__ = ("_tail", "counts")

    def __init__(self) -> None:
        self._tail = b""
        self.counts: TokenCounts | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        if b"\n" not in data:
            self._tail = data[-65536:]
            return
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        if self._tail:
            self._line(self._tail)
            self._tail = b""

    def _line(self, line: bytes) -> None:
        if not any(marker in line for marker in _MARKERS):
            return
        text = line.strip()
        if text.startswith(b"data:"):
            text = text[5:].strip()
        try:
            found = counts_of(orjson.loads(text))
        except orjson.JSONDecodeError:
            return
        if found is not None:
            self.counts = found


_EVENT_END = re.compile(rb"\r?\n\r?\n")
_MAX_PENDING = 65536


def _usage_only(event: bytes) -> bool:
    text = event.strip()
    if not text.startswith(b"data:") or b"usage" not in text:
        return False
    try:
        doc = orjson.loads(text[5:].strip())
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("choices") == [] and isinstance(doc.get("usage"), dict)


class UsageChunkFilter:
    """Removes the usage-only SSE event from a stream whose usage the sidecar asked for itself.

    A client that did not ask for `stream_options.include_usage` may index `choices[0]` of every
    chunk; the extra event (empty `choices`) would break it. Events are passed on whole, as soon as
    their blank-line terminator arrives; only text around a `"choices":[]` is ever decoded.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        ends = [m.end() for m in _EVENT_END.finditer(data)]
        if not ends:
            if len(data) > _MAX_PENDING:  # not SSE framing after all: stop holding bytes back
                self._pending = b""
                return data
            self._pending = data
            return b""
        complete, self._pending = data[: ends[-1]], data[ends[-1] :]
        if b'"choices":[]' not in complete and b'"choices": []' not in complete:
            return complete
        kept: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(complete):
            event = complete[start : end.end()]
            if not _usage_only(event):
                kept.append(event)
            start = end.end()
        return b"".join(kept)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"" if _usage_only(rest) else rest
