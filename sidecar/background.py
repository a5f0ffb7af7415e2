"""Bookkeeping that runs after the reply is sent: settlements and refunds, tracked by the app.

A handler that awaited its own settlement would hold the keep-alive connection (aiohttp serves one
request per connection at a time) for a Redis round trip the client never needed to wait for. The
work is spawned here instead, and the app's cleanup context drains it on shutdown before Redis is
closed, so a settlement is still run exactly once, just not on the client's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from sidecar.periodic import STOP_GRACE_SECONDS

logger = logging.getLogger("hexarch.sidecar")

# Past this many pending jobs (Redis stalled, each job waiting out its socket timeout) the handler
# runs its job itself: the backlog stays bounded and the slowdown reaches the clients instead.
MAX_PENDING = 1024
# How long shutdown waits for pending jobs before cancelling them (their reservations then expire
# by TTL, docs/counters.md).
DRAIN_SECONDS = 5.0


class BackgroundJobs:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._pending: set[asyncio.Task[None]] = set()
        self._max_pending = max_pending

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, job: Coroutine[Any, Any, None]) -> None:
        """Start `job` in the background, or await it here when too many are pending already."""
        if len(self._pending) >= self._max_pending:
            await job
        else:
            self.spawn(job)

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Start `job` in the background, whatever the backlog (for a handler being cancelled)."""
        task = asyncio.get_running_loop().create_task(job)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # jobs handle their expected failures; anything else is a bug worth a traceback
            logger.error("background job failed", exc_info=exc)

    async def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        """Wait for every pending job (and jobs they start), cancelling what is left after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._pending), timeout=left)
        if self._pending:
            stuck = set(self._pending)
            logger.warning("cancelling %d settlements still pending at shutdown", len(stuck))
            for task in stuck:
                task.cancel()
            # bounded too: a job whose cancellation a client library absorbs must not hang shutdown
            await asyncio.wait(stuck, timeout=STOP_GRACE_SECONDS)
