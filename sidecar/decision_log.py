"""The decision log: one line per request, to `logging.file` or stdout (docs/sidecar.md).

Each line says who asked (principal, team), for what (model, route, resources), what was decided
(outcome, status, code, the policies involved, OPA's own decision id when OPA logs decisions), how
long it took and what it used (tokens, cost). `logging.format` chooses JSON (default) or logfmt-style
`key=value` text. Bodies, headers and keys are never part of a line; the prompt text is, only with
`logging.log_prompts: true`.

The file is opened in append mode and reopened on SIGHUP, so logrotate can move it away
(`postrotate: kill -HUP <pid>`) without losing lines; the app installs the signal handler.

Lines written during one event-loop tick go out together: the first line of a tick schedules a flush
with `loop.call_soon`, which writes them all in one system call before the loop waits for I/O again
(a write per line was one of the sidecar's five system calls per request). Without a running loop
(tests, shutdown) a line is written at once; `close` and `reopen` flush what is pending first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from sidecar.settings import Settings

logger = logging.getLogger("hexarch.decision")


@dataclass
class DecisionRecord:
    decision_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    principal: str | None = None
    team: str | None = None
    model: str | None = None
    route: str | None = None  # the route pattern that matched (`/api/conversations/{id}`)
    resources: list[str] | None = None
    policies: list[str] = field(default_factory=list)  # policies with a violation, warning or limit
    opa_decision_id: str | None = None  # OPA's own id, present when OPA logs decisions
    prompt: str | None = None  # filled only with logging.log_prompts: true
    outcome: str = "unknown"
    status: int = 0
    policy: str | None = None
    code: str | None = None
    decision_ms: float | None = None
    upstream: str | None = None
    upstream_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd_micros: int | None = None
    warnings: int = 0
    finished: float | None = None  # when the reply was handed to the client
    settling: bool = False  # a settlement job will log this record once it has run

    def document(self, prompts: bool = False) -> dict[str, Any]:
        now = time.time()
        doc: dict[str, Any] = {
            "ts": now,
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "decision_id": self.decision_id,
            "opa_decision_id": self.opa_decision_id,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "principal": self.principal,
            "team": self.team,
            "model": self.model,
            "resources": self.resources,
            "outcome": self.outcome,
            "status": self.status,
            "policy": self.policy,
            "policies": self.policies,
            "code": self.code,
            "latency_ms": round(((self.finished or time.perf_counter()) - self.started) * 1000, 3),
            "decision_ms": self.decision_ms,
            "upstream": self.upstream,
            "upstream_ms": self.upstream_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd_micros": self.cost_usd_micros,
            "cost_usd": None if self.cost_usd_micros is None else self.cost_usd_micros / 1_000_000,
            "warnings": self.warnings,
        }
        if prompts:
            doc["prompt"] = self.prompt
        return doc

    def line(self, fmt: str = "json", prompts: bool = False) -> str:
        doc = self.document(prompts)
        if fmt == "text":
            return " ".join(f"{key}={_text_value(value)}" for key, value in doc.items() if value is not None)
        return orjson.dumps(doc).decode()


def _text_value(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return orjson.dumps(text).decode()  # quoted, with escapes: one record stays one line
    return text


class DecisionLog:
    """Where decision lines go: `logging.file` (append, reopened by `reopen`) or stdout."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.log_decisions
        self.path = settings.log_file
        self.format = settings.log_format
        self.prompts = settings.log_prompts
        self._stream: TextIO | None = None
        self._to_stdout = False
        self._pending: list[str] = []  # this tick's lines, written by `flush`

    def open(self) -> None:
        if not self.enabled:
            return
        if self.path is None:
            self._to_stdout = True  # whatever sys.stdout is when a line is written
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        # each flush (one tick's lines) reaches the file at once
        self._stream = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """Close and reopen the file (after logrotate moved it): new lines go to a new file."""
        if self.path is None or not self.enabled:
            return
        self.close()
        try:
            self.open()
        except OSError as exc:
            logger.error("cannot reopen the decision log %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        self.flush()
        stream, self._stream = self._stream, None
        self._to_stdout = False
        if stream is not None:
            stream.close()

    def write(self, record: DecisionRecord) -> None:
        if not self._to_stdout and self._stream is None:
            return
        self._pending.append(record.line(self.format, self.prompts) + "\n")
        if len(self._pending) > 1:
            return  # the flush of this tick is scheduled already
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop running: write it now
            self.flush()

    def flush(self) -> None:
        """Write the lines pending, in one call."""
        lines, self._pending = self._pending, []
        stream = sys.stdout if self._to_stdout else self._stream
        if not lines or stream is None:
            return
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError) as exc:  # disk full, closed stream: the requests still succeed
            logger.warning("decision log write failed (%d lines): %s", len(lines), exc)
