"""Background loops stop when asked, even when a round swallows its cancellation (sidecar/periodic.py)."""

from __future__ import annotations

import asyncio

from sidecar.periodic import Periodic


async def test_rounds_run_until_stopped_and_the_step_sets_the_next_delay() -> None:
    rounds: list[float] = []
    loop = asyncio.get_running_loop()

    async def step() -> float:
        rounds.append(loop.time())
        return 0.01

    periodic = Periodic("test loop", step, every=0.05)
    periodic.start()
    while len(rounds) < 5:
        await asyncio.sleep(0.01)
    await periodic.stop()
    count = len(rounds)
    await asyncio.sleep(0.1)
    assert len(rounds) == count  # no round after stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "test loop"]


async def test_a_round_that_absorbs_its_cancellation_still_ends_the_loop() -> None:
    # what the API's sweeper ran into: a cancel landing inside a client library's await was absorbed
    # there, the loop went on, and whoever awaited it next waited forever
    in_round = asyncio.Event()
    absorbed = 0

    async def step() -> None:
        nonlocal absorbed
        in_round.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            absorbed += 1  # swallowed on purpose
            asyncio.current_task().uncancel()  # type: ignore[union-attr]

    periodic = Periodic("absorbing loop", step, every=0.01)
    periodic.start()
    await in_round.wait()
    await asyncio.wait_for(periodic.stop(grace=0.2), timeout=5)
    assert absorbed == 1
    # the loop has ended by itself: nothing is left for the event loop's teardown to wait on
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "absorbing loop"]


async def test_stop_is_bounded_when_a_round_never_ends() -> None:
    released = False

    async def step() -> None:
        while not released:  # a round no cancellation can end
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    periodic = Periodic("stuck loop", step, every=0.01)
    periodic.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(periodic.stop(grace=0.1), timeout=5)  # returns, with a warning logged
    stuck = [t for t in asyncio.all_tasks() if t.get_name() == "stuck loop"]
    assert len(stuck) == 1 and not stuck[0].done()
    # let the deliberately stuck round end (it then sees the stop and the loop returns)
    released = True
    stuck[0].cancel()
    await asyncio.wait(stuck, timeout=5)
    assert stuck[0].done()
