"""Reconciliation after fail_open: what the local limiter admitted reaches Redis when Redis is back.

While Redis is down, fail_open admits through `LocalCounters` (per process, in memory). Without this
module that traffic never reached the shared counters: a monthly budget did not see a day spent
during an outage. `JournaledCounters` wraps the local store and journals every settled admission
(its stored limits and the real usage; a refund journals nothing). `flush(redis)` replays the journal
into Redis with the same scripts as normal traffic: each entry is admitted with its limits switched
to `warn` (so it is always counted, never refused: the traffic already happened) and then settled
with its real usage. Flushes run when the Redis breaker closes and after every journaled settlement
while Redis is healthy; a flush stops at the first Redis failure and keeps the rest for the next one.

Replayed entries count in the current window/period (a rate window that has passed meanwhile gets
the entry in its successor: conservative). The journal is bounded (`MAX_ENTRIES`); past it the
oldest entries are dropped and counted in `hexarch_reconciled_total{result="dropped"}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from sidecar.counters import Admission, CounterStore, Limit, LimitState, Usage, new_reservation_id
from sidecar.errors import CounterStoreError
from sidecar.metrics import Metrics

logger = logging.getLogger("hexarch.sidecar")
MAX_ENTRIES = 100_000


class JournaledCounters:
    """A CounterStore (the fail_open stand-in) that remembers what it let through."""

    def __init__(self, local: CounterStore, metrics: Metrics, max_entries: int = MAX_ENTRIES) -> None:
        self.local = local
        self._metrics = metrics
        self._journal: deque[tuple[tuple[Limit, ...], Usage]] = deque()
        self._max = max_entries
        self._lock = asyncio.Lock()
        self.on_journal: Callable[[], None] | None = None  # set by the app: flush when Redis is up

    def __len__(self) -> int:
        return len(self._journal)

    async def load_scripts(self) -> None:
        await self.local.load_scripts()

    async def admit(self, request_id: str, limits: Sequence[Limit]) -> Admission:
        return await self.local.admit(request_id, limits)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        return await self.local.peek(limits)

    async def settle(self, admission: Admission, usage: Usage) -> None:
        await self.local.settle(admission, usage)
        if admission.admitted:
            stored = tuple(s.limit for s in admission.states if not s.limit.is_request_cap)
            if stored:
                self._journal.append((stored, usage))
                while len(self._journal) > self._max:
                    self._journal.popleft()
                    self._metrics.child(self._metrics.reconciled, "dropped").inc()
                if self.on_journal is not None:
                    self.on_journal()

    async def refund(self, admission: Admission) -> None:
        await self.local.refund(admission)

    async def ping(self) -> bool:
        return await self.local.ping()

    async def close(self) -> None:
        await self.local.close()

    async def flush(self, redis: CounterStore) -> int:
        """Replay the journal into `redis`; the number of entries written."""
        written = 0
        async with self._lock:
            while self._journal:
                limits, usage = self._journal[0]
                counted = [replace(lim, action="warn") for lim in limits]
                try:
                    admission = await redis.admit(new_reservation_id("reconcile"), counted)
                    await redis.settle(admission, usage)
                except CounterStoreError as exc:
                    logger.debug("reconciliation paused (%d entries left): %s", len(self._journal), exc)
                    break
                self._journal.popleft()
                written += 1
                self._metrics.child(self._metrics.reconciled, "written").inc()
        if written:
            logger.info("reconciled %d fail_open admissions into Redis", written)
        return written
