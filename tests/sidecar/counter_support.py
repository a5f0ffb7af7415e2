"""Helpers for the counter tests: an injected clock, limit builders, a worker for a second process."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from sidecar.counters import Counters, Limit
from sidecar.redis_client import create_redis

# 2026-11-22 12:00:00 UTC: a whole minute, so offsets below are easy to place inside buckets
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def subject() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def rate(subj: str, limit: int, *, window: int = 60, ident: str = "rate_limit/0/rpm", **kw: Any) -> Limit:
    return Limit(
        ident,
        "rate_limit",
        "requests",
        "global",
        subj,
        limit,
        1,
        kw.pop("action", "block"),
        window_seconds=window,
        **kw,
    )


def tokens(
    subj: str, limit: int, cost: int, *, window: int = 60, ident: str = "tok/0/tpm", **kw: Any
) -> Limit:
    return Limit(
        ident,
        "tok",
        "tokens",
        "principal",
        subj,
        limit,
        cost,
        kw.pop("action", "block"),
        window_seconds=window,
        **kw,
    )


def budget(
    subj: str, limit: int, cost: int, *, period: str = "month", ident: str = "budget/0/month", **kw: Any
) -> Limit:
    return Limit(
        ident,
        "budget",
        "usd_micros",
        "team",
        subj,
        limit,
        cost,
        kw.pop("action", "block"),
        period=period,
        **kw,
    )


def process_worker(url: str, limit: int, subj: str, tasks: int, barrier: Any, results: Any) -> None:
    """Runs in its own OS process with its own client: fire `tasks` concurrent admits after the barrier.

    Puts (admitted count, error text or "") on `results`, so a failing child never leaves the parent
    waiting. Timeouts are generous: this checks exactness, not speed, on a possibly busy machine.
    """

    async def run() -> int:
        counters = Counters(create_redis(url, max_connections=32, socket_timeout=10, pool_timeout=10))
        try:
            await counters.load_scripts()
            lim = rate(subj, limit)
            barrier.wait(60)

            async def one(i: int) -> bool:
                # spread over 200 ms, so both processes' requests interleave at Redis
                await asyncio.sleep(random.random() / 5)
                return (await counters.admit(f"p{i}", [lim])).admitted

            replies = await asyncio.gather(*(one(i) for i in range(tasks)))
            return sum(replies)
        finally:
            await counters.close()

    try:
        results.put((asyncio.run(run()), ""))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put((0, f"{type(exc).__name__}: {exc}"))
