"""Background loops that stop when asked: the reservation sweeper, the Wasm bundle watcher, the
injector's certificate reload.

Each loop waits on a stop event between rounds instead of relying on task cancellation alone. On
Python 3.11, `asyncio.wait_for` returns the inner result and drops a cancellation that arrives just
as the inner call completes (CPython gh-86296, fixed in 3.12), and redis-py sends every command
through `wait_for` when a socket timeout is set: cancelling a task in the middle of a Redis call
is lost about one time in ten (measured with redis-py 8.1). The API's sweeper, a Redis call every
second, then ran on after `cancel()`, and the event loop's teardown waited on it forever (the CI
run that never finished). The event is checked before every round, so a loop ends after the
round in progress whatever happened to a cancel.
`stop()` sets it, waits a bounded time, cancels only as a last resort and never waits unboundedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("hexarch.sidecar")

# How long `stop()` waits for the round in progress, then again after cancelling it.
STOP_GRACE_SECONDS = 2.0


class Periodic:
    """Runs `step` every `every` seconds until `stop()`; `step` may return the next delay."""

    def __init__(self, name: str, step: Callable[[], Awaitable[float | None]], every: float) -> None:
        self.name = name
        self._step = step
        self._every = every
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        delay = self._every
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            following = await self._step()
            delay = self._every if following is None else following

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            # still running after the grace periods: leave it (it ends after its round), never hang
            logger.warning("%s did not stop within %.0f s", self.name, 2 * grace)
            return
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s failed", self.name, exc_info=exc)
