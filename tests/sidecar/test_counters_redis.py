"""What only a real Redis shows: concurrency across tasks and processes, TTLs, NOSCRIPT, failures."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar import redis_keys
from sidecar.counters import Counters, Usage
from sidecar.errors import CounterStoreError
from sidecar.redis_client import create_redis
from tests.sidecar.counter_support import FakeClock, budget, process_worker, rate, subject, tokens
from tests.support.servers import RedisServer, free_port, start_redis, wait_for


async def command(client: Redis, *args: object) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def counters(redis_server: RedisServer) -> AsyncIterator[Counters]:
    store = Counters(create_redis(redis_server.url))
    await store.load_scripts()
    yield store
    await store.close()


async def keys_of(raw: Redis, subj: str) -> list[str]:
    return sorted([k async for k in raw.scan_iter(match=redis_keys.subject_pattern(subj))])


# ---- exactness under concurrency ------------------------------------------------------------


async def test_3l_concurrent_tasks_admit_exactly_l(counters: Counters) -> None:
    limit = 40
    lim = rate(subject(), limit)
    replies = await asyncio.gather(*(counters.admit(f"r{i}", [lim]) for i in range(3 * limit)))
    assert sum(r.admitted for r in replies) == limit
    assert sorted(r.states[0].used for r in replies if r.admitted) == list(range(1, limit + 1))


def test_3l_concurrent_requests_over_two_processes_admit_exactly_l(redis_server: RedisServer) -> None:
    limit = 50
    subj = subject()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=process_worker, args=(redis_server.url, limit, subj, 3 * limit // 2, barrier, results)
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    assert [error for _, error in outcomes] == ["", ""]
    assert sum(admitted for admitted, _ in outcomes) == limit


async def test_budget_never_exceeded_under_200_concurrent_admit_and_settle(
    counters: Counters, raw: Redis
) -> None:
    subj = subject()
    cap = 1_000_000
    reserve = 20_000  # the decision's upper-bound cost; actual usage is at most this
    lim = budget(subj, cap, reserve)
    rng = random.Random(7)
    settled: list[int] = []
    seen_used: list[int] = []

    async def one(i: int) -> None:
        # arrivals spread over 20 ms, so later requests can meet budget freed by earlier settlements
        # (all 200 at one instant would each see only reservations, however fast the store)
        await asyncio.sleep(i / 10_000)
        adm = await counters.admit(f"b{i}", [lim])
        if not adm.admitted:
            return
        seen_used.append(adm.states[0].used)
        await asyncio.sleep(rng.random() / 100)
        if i % 10 == 0:  # a failed upstream call
            await counters.refund(adm)
            return
        actual = rng.randint(0, reserve)
        await counters.settle(adm, Usage(0, 0, actual))
        settled.append(actual)

    await asyncio.gather(*(one(i) for i in range(200)))
    keys = [k for k in await keys_of(raw, subj) if ":rsv:" not in k]
    assert len(keys) == 1
    total = int(await raw.get(keys[0]) or 0)
    assert total == sum(settled)
    assert total <= cap
    assert max(seen_used) <= cap  # no admission ever reserved past the budget
    assert len(settled) > cap // reserve  # settling below the reservation let more requests in


async def test_a_resent_admit_script_does_not_consume_twice(counters: Counters) -> None:
    # what redis-py's one retry on a dropped connection resends: the same script, same reservation
    from zoneinfo import ZoneInfo

    from sidecar.counters import _plan

    subj = subject()
    _, groups = _plan("resent.1", [rate(subj, 5), budget(subj, 100, 7)], time.time(), ZoneInfo("UTC"))
    call = groups[0].script_args("a", int(time.time() * 1000), 60_000)
    first, second = await counters._run_admit([call, call])
    assert first[0] == 1 and second[0] == 2
    assert (second[1], second[4]) == (1, 7)  # already consumed once, not again
    assert (await counters.admit("x", [rate(subj, 5)])).states[0].used == 2


# ---- key layout and TTLs --------------------------------------------------------------------


async def test_every_key_has_a_ttl_and_follows_the_layout(redis_server: RedisServer, raw: Redis) -> None:
    clock = FakeClock()
    store = Counters(create_redis(redis_server.url), clock=clock, reservation_ttl_seconds=120)
    subj = subject()
    limits = [
        rate(subj, 10),
        tokens(subj, 1000, 10),
        budget(subj, 1000, 10),
        budget(subj, 1000, 10, period="day", ident="budget/1/day"),
    ]
    adm = await store.admit("req-1", limits)
    assert adm.admitted
    keys = await keys_of(raw, subj)
    prefix = f"hexarch:{{{subj}}}:"
    assert keys == sorted(
        [
            f"{prefix}budget/0/month:2026-11",
            f"{prefix}budget/1/day:2026-11-22",
            f"{prefix}rate_limit/0/rpm:60s",
            f"{prefix}rsv:{adm.reservation_id}",
            f"{prefix}tok/0/tpm:60s",
        ]
    )
    ttls = {k: await raw.pttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert 60_000 < ttls[f"{prefix}rate_limit/0/rpm:60s"] <= 62_000  # window + one bucket + 1 s slack
    assert 0 < ttls[f"{prefix}rsv:{adm.reservation_id}"] <= 120_000
    # the day ends at midnight (12 h after T0): the key goes with it (no margin: redis memory is bounded)
    assert 12 * 3600_000 - 5_000 < ttls[f"{prefix}budget/1/day:2026-11-22"] <= 12 * 3600_000
    await store.settle(adm, Usage(1, 2, 3))
    after = await keys_of(raw, subj)
    assert f"{prefix}rsv:{adm.reservation_id}" not in after
    assert all([await raw.pttl(k) > 0 for k in after])
    budgets = [await raw.get(k) for k in after if "budget" in k]
    assert budgets == ["3", "3"]  # integer micro-USD, settled to the actual cost
    await store.close()


async def test_awkward_subjects_keep_one_hash_tag(counters: Counters, raw: Redis) -> None:
    for subj in ["", "a}b", "{x}", "50%"]:
        tag = redis_keys.subject_tag(subj)
        assert tag and "{" not in tag and "}" not in tag
        key = redis_keys.counter_key(subj, "rate_limit/0/rpm", "60s")
        assert key.split("{", 1)[1].split("}", 1)[0] == tag
    assert redis_keys.subject_tag("") != redis_keys.subject_tag("%00")
    assert redis_keys.subject_tag("{") != redis_keys.subject_tag("%7B")
    adm = await counters.admit("odd", [rate("", 1), rate("a}b", 1)])
    assert adm.admitted
    await counters.refund(adm)


# ---- scripts: EVALSHA and NOSCRIPT ----------------------------------------------------------


async def test_survives_script_flush(counters: Counters, raw: Redis) -> None:
    subj = subject()
    adm = await counters.admit("a", [tokens(subj, 1000, 500)])
    await raw.script_flush()
    await counters.settle(adm, Usage(50, 50, 0))  # settle.lua reloaded on NOSCRIPT
    await raw.script_flush()
    nxt = await counters.admit("b", [tokens(subj, 1000, 500), rate(subject(), 5)])  # pipelined groups
    assert nxt.admitted and nxt.states[0].used == 600


async def test_survives_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port)
    store = Counters(create_redis(server.url))
    try:
        await store.load_scripts()
        assert (await store.admit("a", [rate(subject(), 5)])).admitted
        server.stop()
        with pytest.raises(CounterStoreError):
            await store.admit("b", [rate(subject(), 5)])
        server = start_redis(port)  # empty script cache, and every pooled connection is dead
        assert (await store.admit("c", [rate(subject(), 5)])).admitted
        assert await store.ping()
    finally:
        await store.close()
        server.stop()


# ---- failure: fail fast ---------------------------------------------------------------------


async def test_dead_redis_fails_fast_with_counter_store_error() -> None:
    server = start_redis()
    store = Counters(create_redis(server.url))
    try:
        await store.load_scripts()
        adm = await store.admit("a", [rate(subject(), 5)])
        server.stop()
        started = time.monotonic()
        with pytest.raises(CounterStoreError):
            await store.admit("b", [rate(subject(), 5), rate(subject(), 5)])
        with pytest.raises(CounterStoreError):
            await store.settle(adm, Usage(1, 1, 1))
        # a per-request cap refuses without the store: still a plain refusal, not a store failure
        subj = subject()
        cap = tokens(subj, 10, 11, window=0, ident="tok/0/request")
        refused = await store.admit("c", [rate(subj, 5), cap])
        assert not refused.admitted and refused.blocking is not None and refused.blocking.limit == cap
        assert not await store.ping()
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()
        server.stop()


async def test_hung_redis_times_out_within_the_socket_timeout() -> None:
    server = start_redis()
    store = Counters(create_redis(server.url, socket_timeout=0.3))
    try:
        await store.load_scripts()
        os.kill(server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(CounterStoreError):
            await store.admit("a", [rate(subject(), 5)])
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        await store.close()
        server.stop()


async def test_a_cancelled_admission_gives_back_what_it_took() -> None:
    server = start_redis()
    store = Counters(create_redis(server.url, socket_timeout=5))
    subj = subject()
    try:
        await store.load_scripts()
        os.kill(server.proc.pid, signal.SIGSTOP)  # the call is on the wire, Redis not yet answering
        pending = asyncio.ensure_future(store.admit("gone", [rate(subj, 1)]))
        await asyncio.sleep(0.1)
        pending.cancel()
        os.kill(server.proc.pid, signal.SIGCONT)
        with pytest.raises(asyncio.CancelledError):
            await pending
        for _ in range(50):  # the refund runs in the background once Redis answers
            if (await store.peek([rate(subj, 1)]))[0].used == 0 and not store._background:
                break
            await asyncio.sleep(0.02)
        assert (await store.admit("next", [rate(subj, 1)])).admitted
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        await store.close()
        server.stop()


async def test_a_replayed_group_is_rolled_back_when_another_group_refuses(
    counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py resends a call whose connection dropped; admit.lua then answers 2 ("already
    # admitted under this reservation") for what the lost first run consumed. Fixed reservation
    # ids let the test play that first run itself.
    monkeypatch.setattr("sidecar.counters.new_reservation_id", lambda request_id: f"{request_id}.replay")
    a, b = subject(), subject()
    assert (await counters.admit("first-run", [rate(a, 5)])).admitted  # the run whose reply was lost
    assert (await counters.admit("fill", [rate(b, 1)])).admitted
    replayed = await counters.admit("first-run", [rate(a, 5), rate(b, 1)])
    assert not replayed.admitted and replayed.blocking is not None and replayed.blocking.limit.subject == b
    (state,) = await counters.peek([rate(a, 5)])
    assert state.used == 0  # the refused admission took nothing from a, replay or not


async def test_a_failed_group_call_gives_back_what_the_other_groups_took(
    counters: Counters, raw: Redis
) -> None:
    a, b = subject(), subject()
    assert (await counters.admit("shape", [rate(b, 5)])).admitted
    (b_key,) = [k for k in await keys_of(raw, b) if ":rsv:" not in k]
    await raw.delete(b_key)
    await raw.set(b_key, "not a window")  # b's script call now fails (WRONGTYPE)
    with pytest.raises(CounterStoreError):
        await counters.admit("half", [rate(a, 5), rate(b, 5)])
    (state,) = await counters.peek([rate(a, 5)])
    assert state.used == 0  # a's call succeeded, and was given back
    assert [k for k in await keys_of(raw, a) if ":rsv:" in k] == []


async def test_unreachable_redis_at_start_fails_fast() -> None:
    store = Counters(create_redis(f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    with pytest.raises(CounterStoreError):
        await store.load_scripts()
    with pytest.raises(CounterStoreError):
        await store.admit("a", [rate(subject(), 1)])
    assert time.monotonic() - started < 1.0
    await store.close()


# ---- Redis Cluster (a one-node cluster owning every slot enforces the same-slot rule) -----------


async def test_redis_cluster_runs_every_group_in_one_slot(tmp_path: Path) -> None:
    conf = tmp_path / "nodes.conf"
    # the cluster bus port defaults to port + 10000, which may not exist: give it its own free port
    bus = str(free_port())
    extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(conf), "--cluster-port", bus]
    server = start_redis(extra=extra)
    try:
        admin = Redis(port=server.port, decode_responses=True)
        await command(admin, "CLUSTER", "ADDSLOTSRANGE", 0, 16383)

        async def cluster_ok() -> bool:
            info = await command(admin, "CLUSTER", "INFO")
            return "cluster_state:ok" in str(info)

        for _ in range(100):
            if await cluster_ok():
                break
            await asyncio.sleep(0.05)
        store = Counters(create_redis(f"redis+cluster://127.0.0.1:{server.port}"))
        await store.load_scripts()
        subj, user = subject(), "a}b{c"
        limits = [rate(subj, 2), tokens(subj, 100, 10), budget(user, 100, 10), rate(user, 1, ident="u/0/rpm")]
        adm = await store.admit("a", limits)
        assert adm.admitted
        slots = {await command(admin, "CLUSTER", "KEYSLOT", k) for k in adm.groups[1].keys}
        slots.add(await command(admin, "CLUSTER", "KEYSLOT", adm.groups[1].reservation_key))
        assert len(slots) == 1
        assert not (await store.admit("b", limits)).admitted
        await store.settle(adm, Usage(1, 2, 3))
        await command(admin, "SCRIPT", "FLUSH")
        await store.refund(adm)
        assert (await store.admit("c", [rate(subj, 2)])).states[0].used == 2
        burst = [rate(subject(), 20), budget(subject(), 10**6, 1)]  # two slots per admission
        replies = await asyncio.gather(*(store.admit(f"burst{i}", burst) for i in range(60)))
        assert sum(r.admitted for r in replies) == 20
        await store.close()
        await admin.aclose()
    finally:
        server.stop()


def test_wait_for_is_available() -> None:
    # guards the import above: servers.wait_for is what start_redis relies on
    assert callable(wait_for)
