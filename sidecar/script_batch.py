"""Lua script calls sent after the reply (settlements, usage statistics), batched per event-loop tick.

Each settled request costs two script calls (settle.lua, stats.lua). Sent one by one, each pays
redis-py's per-call path (pool checkout, retry wrapper, command packing, one write and one read
syscall) and a Redis round trip. Here a call is queued and the queue is flushed by a callback
scheduled with `loop.call_soon` when the first call of a tick arrives: every call queued in the same
tick (both calls of one settlement, and those of every other request settling in that tick) goes in
one pipeline. No timer is involved, so a call waits at most for the rest of the current tick's ready
callbacks before it is written (docs/performance.md "Sidecar CPU per request"); under load the
batches simply grow.

A call's reply (or the error Redis returned for it) resolves its future; a failure of the whole
pipeline (connection lost, timeout) fails every call of the batch. NOSCRIPT (SCRIPT FLUSH, restarted
Redis) is answered by resending those calls as EVAL with the script's source, once.

Only a standalone Redis is batched: a Redis Cluster client sends each call on its own (redis-py
routes every call to the node holding its keys' slot), see `create_batcher`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

logger = logging.getLogger("hexarch.sidecar")

_LUA_DIR = Path(__file__).resolve().parent / "lua"
# One pipeline carries at most this many calls; a larger tick is split (a huge reply is read in one
# go, and one slow batch must not hold every settlement).
MAX_BATCH = 256
# Pipelines on the wire at once: each holds one pooled connection (sidecar/redis_client.py keeps
# half the pool for admissions).
MAX_FLIGHTS = 4
# Calls queued or on the wire past which a new call fails at once (Redis stalled: the backlog stays
# bounded; the caller logs it and the reservation expires by TTL, docs/counters.md).
MAX_PENDING = 4096


@dataclass(frozen=True)
class Script:
    """A Lua script by name, with its source and SHA1 (EVALSHA's handle)."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        text = (_LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
        return cls(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest())


class BatchFull(Exception):
    """More than MAX_PENDING calls are waiting for Redis."""


_Call = tuple[Script, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Queues script calls and sends each tick's calls in one pipeline (standalone Redis only)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[_Call] = []
        self._scheduled = False
        self._pending = 0
        self._flights: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return self._pending

    def submit(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one EVALSHA; the future resolves with its reply, or with the error Redis returned
        for it as a value (an exception instance), or fails when the whole pipeline failed."""
        if self._pending >= MAX_PENDING:
            raise BatchFull(f"{MAX_PENDING} script calls are waiting for Redis")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        self._pending += 1
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), MAX_BATCH):
            task = loop.create_task(self._send(queue[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        if self._flights is None:
            self._flights = asyncio.Semaphore(MAX_FLIGHTS)
        try:
            async with self._flights:
                replies = await self._pipeline(batch, resend=False)
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:
                    again = await self._pipeline([batch[i] for i in missing], resend=True)
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:  # the whole pipeline failed (or shutdown cancelled it)
            for *_, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
        else:
            for (*_, future), reply in zip(batch, replies, strict=True):
                if not future.done():  # a caller cancelled meanwhile leaves its future cancelled
                    future.set_result(reply)
        finally:
            self._pending -= len(batch)

    async def _pipeline(self, batch: Sequence[_Call], *, resend: bool) -> list[Any]:
        if len(batch) == 1:
            # a tick with one call (sequential traffic): redis-py's single-command path costs less
            # CPU than a pipeline of one (69 vs 80 µs, docs/performance.md)
            script, keys, args, _ = batch[0]
            try:
                if resend:
                    return [await self._redis.eval(script.source, len(keys), *keys, *args)]
                return [await self._redis.evalsha(script.sha, len(keys), *keys, *args)]
            except ResponseError as exc:  # this call's own error (NOSCRIPT included), as a value
                return [exc]
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            if resend:
                pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
            else:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (at most `timeout`) for the batches on the wire, before the client is closed."""
        if self._queue:
            self._flush()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def create_batcher(redis: Any) -> ScriptBatcher | None:
    """A batcher for a standalone client; None for Redis Cluster, whose calls go one by one (redis-py
    refuses EVALSHA in a cluster pipeline, and routes each single call to its slot's node)."""
    return ScriptBatcher(redis) if isinstance(redis, Redis) else None
