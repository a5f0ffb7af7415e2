"""Settlement jobs run after the handler, are drained at shutdown, and stay bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar.background import BackgroundJobs
from tests.sidecar.app_support import Harness, demo_server, flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer


async def test_jobs_run_after_the_caller_and_drain_waits_for_them() -> None:
    jobs = BackgroundJobs()
    done: list[int] = []

    async def job(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    for n in range(3):
        await jobs.run(job(n))
    assert done == [] and len(jobs) == 3  # the caller did not wait
    await jobs.drain(timeout=5)
    assert sorted(done) == [0, 1, 2] and len(jobs) == 0


async def test_past_the_bound_the_caller_runs_the_job_itself() -> None:
    jobs = BackgroundJobs(max_pending=1)
    release = asyncio.Event()
    done: list[str] = []

    async def slow() -> None:
        await release.wait()
        done.append("slow")

    async def quick() -> None:
        done.append("quick")

    await jobs.run(slow())
    await jobs.run(quick())  # one pending already: run inline
    assert done == ["quick"]
    release.set()
    await jobs.drain()
    assert done == ["quick", "slow"]


async def test_drain_cancels_what_outlives_its_bound() -> None:
    jobs = BackgroundJobs()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await jobs.run(stuck())
    await asyncio.sleep(0)
    await jobs.drain(timeout=0.05)
    assert cancelled.is_set() and len(jobs) == 0


# ---------------------------------------------------------------------------------------------
# The app: replies go out before settlement, and shutting down settles whatever is still pending.

POLICY = """
version: 1
pricing:
  "tinyllama*":
    input_per_million_usd: 1.0
    output_per_million_usd: 1.0
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: api_budget
    rules:
      - resource: tinyllama
        daily_budget_usd: 10
sidecar:
  anonymous:
    enabled: true
    id: drain-test
"""


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


async def test_shutdown_mid_flight_leaves_no_reservation_behind(
    opa: OpaServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = flushed_redis_url(redis_server, 10)
    body = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with demo_server(latency_ms=300) as demo:
        async with harness(POLICY, tmp_path, opa, url, demo) as h:
            calls = [asyncio.ensure_future(_post(h, body)) for _ in range(20)]
            await asyncio.sleep(0.15)  # every call admitted and waiting on the model
            # leaving closes the client (every call hangs up) and then the app, mid-flight
        await asyncio.gather(*calls, return_exceptions=True)
        # the app is closed: no waiting here, its shutdown must already have given back everything
        # (the calls were cancelled by the shutdown, so nothing stays charged and nothing reserved)
        client = redis.Redis.from_url(url)
        assert list(client.scan_iter("hexarch:*:rsv:*")) == []
        keys = list(client.scan_iter("hexarch:*api_budget/*"))
        assert len(keys) == 1 and int(client.get(keys[0]) or 0) == 0


async def _post(h: Harness, body: dict[str, object]) -> int:
    async with h.session.post(h.url("/api/chat"), json=body) as resp:
        await resp.read()
        return resp.status
