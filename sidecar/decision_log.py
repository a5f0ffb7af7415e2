"""One structured log line per request: who, what was decided, how long, what it cost.

Written as JSON to the `hexarch.decision` logger. Prompts, bodies, headers and keys are never part
of it; the principal appears by id only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

logger = logging.getLogger("hexarch.decision")


@dataclass
class DecisionRecord:
    decision_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    principal: str | None = None
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

    def line(self) -> str:
        doc: dict[str, Any] = {
            "ts": time.time(),
            "decision_id": self.decision_id,
            "method": self.method,
            "path": self.path,
            "principal": self.principal,
            "outcome": self.outcome,
            "status": self.status,
            "policy": self.policy,
            "code": self.code,
            "latency_ms": round(((self.finished or time.perf_counter()) - self.started) * 1000, 3),
            "decision_ms": self.decision_ms,
            "upstream": self.upstream,
            "upstream_ms": self.upstream_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd_micros": self.cost_usd_micros,
            "warnings": self.warnings,
        }
        return orjson.dumps(doc).decode()


def emit(record: DecisionRecord) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(record.line())
