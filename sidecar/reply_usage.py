"""Real token usage read from an upstream reply: OpenAI `usage`, Ollama `prompt_eval_count`/`eval_count`.

Streams are scanned line by line as they pass through (SSE `data: {...}` lines and Ollama's NDJSON);
only lines that can carry counts are decoded, so pass-through stays cheap.
"""

from __future__ import annotations

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
