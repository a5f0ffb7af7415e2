"""Settlement jobs run after the handler, are drained at shutdown, and stay bounded."""

from __future__ import annotations

import asyncio

from sidecar.background import BackgroundJobs


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
