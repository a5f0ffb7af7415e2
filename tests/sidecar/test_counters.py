"""Counter semantics, run against Redis (sidecar.counters) and the in-process stand-in alike.

Time is an injected clock; every test uses its own subjects, so the shared redis-server needs no flush.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from sidecar.counters import Counters, CounterStore, Limit, Usage, budget_period, window_geometry
from sidecar.local_counters import LocalCounters
from sidecar.redis_client import create_redis
from tests.sidecar.counter_support import T0, FakeClock, budget, rate, subject, tokens
from tests.support.servers import RedisServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["redis", "local"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[CounterStore]:
    counters: CounterStore
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        counters = Counters(create_redis(server.url), clock=clock)
    else:
        counters = LocalCounters(clock=clock)
    await counters.load_scripts()
    yield counters
    await counters.close()


async def admit_n(store: CounterStore, limits: list[Limit], n: int) -> list[bool]:
    return [(await store.admit(f"r{i}", limits)).admitted for i in range(n)]


# ---- request rates: exact count, boundary, sliding ------------------------------------------


async def test_rate_admits_exactly_the_limit_then_refuses_with_headers_data(store: CounterStore) -> None:
    lim = rate(subject(), 3)
    first = await store.admit("a", [lim])
    assert first.admitted and first.blocking is None
    assert (first.states[0].used, first.states[0].remaining) == (1, 2)
    assert await admit_n(store, [lim], 2) == [True, True]
    refused = await store.admit("d", [lim])
    assert not refused.admitted
    state = refused.blocking
    assert state is not None and state.limit == lim
    assert (state.used, state.remaining) == (3, 0)  # before this request: nothing was consumed
    # all three sit in the bucket [T0, T0+1 s); it stops counting at T0 + 60 s + 1 s
    assert state.retry_after == 61
    assert state.reset_seconds == 61


@pytest.mark.parametrize("offset", [0.0, 0.25, 0.999])
async def test_usage_counts_for_at_least_the_window_and_at_most_one_bucket_more(
    store: CounterStore, clock: FakeClock, offset: float
) -> None:
    lim = rate(subject(), 1)
    bucket_ms, _ = window_geometry(60)
    assert bucket_ms == 1000
    clock.advance(offset)
    consumed_at = clock.now
    assert (await store.admit("a", [lim])).admitted
    expiry = (math.floor(consumed_at) + 60 + 1) * 1.0  # end of the consumption's bucket + window
    assert consumed_at + 60 < expiry <= consumed_at + 61

    clock.now = consumed_at + 60  # the exact sliding window would admit here; we are conservative
    assert not (await store.admit("b", [lim])).admitted
    clock.now = expiry - 0.001
    refused = await store.admit("c", [lim])
    assert not refused.admitted and refused.blocking is not None
    assert refused.blocking.retry_after == 1
    clock.now = expiry
    assert (await store.admit("d", [lim])).admitted


async def test_window_slides_bucket_by_bucket(store: CounterStore, clock: FakeClock) -> None:
    lim = rate(subject(), 2)
    assert (await store.admit("a", [lim])).admitted  # at T0
    clock.advance(30)
    assert (await store.admit("b", [lim])).admitted  # at T0+30
    clock.advance(15)
    refused = await store.admit("c", [lim])
    assert refused.blocking is not None and refused.blocking.retry_after == 16  # T0+61 - T0+45
    clock.now = T0 + 61
    assert (await store.admit("d", [lim])).admitted  # the T0 request left
    refused = await store.admit("e", [lim])
    assert refused.blocking is not None and refused.blocking.retry_after == 30  # T0+30 leaves at T0+91
    clock.now = T0 + 91
    assert (await store.admit("f", [lim])).admitted


async def test_idle_for_longer_than_a_window_starts_empty(store: CounterStore, clock: FakeClock) -> None:
    lim = rate(subject(), 2, window=3600, ident="rate_limit/0/rph")
    assert await admit_n(store, [lim], 3) == [True, True, False]
    clock.advance(3 * 3600)
    again = await store.admit("x", [lim])
    assert again.admitted and again.states[0].used == 1


async def test_a_lagging_clock_never_rewinds_a_window(store: CounterStore, clock: FakeClock) -> None:
    lim = rate(subject(), 2)
    clock.advance(100)
    assert await admit_n(store, [lim], 2) == [True, True]
    clock.advance(-90)  # another replica whose clock is 90 s behind
    assert not (await store.admit("late", [lim])).admitted


# ---- tokens, per-request caps, warn ---------------------------------------------------------


async def test_token_window_settles_to_actual_usage(store: CounterStore) -> None:
    subj = subject()
    first = await store.admit("a", [tokens(subj, 1000, 600)])
    assert first.admitted
    assert not (await store.admit("b", [tokens(subj, 1000, 600)])).admitted
    await store.settle(first, Usage(prompt_tokens=40, completion_tokens=60, cost_usd_micros=0))
    second = await store.admit("c", [tokens(subj, 1000, 600)])
    assert second.admitted and second.states[0].used == 700


async def test_per_request_cap_is_checked_in_process(store: CounterStore) -> None:
    subj = subject()
    cap = tokens(subj, 100, 101, window=0, ident="tok/0/request")
    others = rate(subj, 5)
    refused = await store.admit("a", [others, cap])
    assert not refused.admitted
    assert refused.blocking is not None and refused.blocking.limit == cap
    assert refused.blocking.retry_after is None
    assert refused.states[0].used == 0  # the rate limit was looked at, not consumed
    ok = await store.admit("b", [others, tokens(subj, 100, 100, window=0, ident="tok/0/request")])
    assert ok.admitted and ok.states[1].remaining == 0
    warned = await store.admit("c", [tokens(subj, 100, 150, window=0, ident="tok/0/request", action="warn")])
    assert warned.admitted and warned.warnings and warned.warnings[0].limit.action == "warn"


async def test_warn_at_threshold_and_warn_action_over_limit(store: CounterStore) -> None:
    subj = subject()
    lim = rate(subj, 10, warn_at=0.7)
    flags = [(await store.admit(f"r{i}", [lim])).states[0].warn for i in range(8)]
    assert flags == [False] * 6 + [True, True]  # 7 of 10 is exactly 0.7
    soft = rate(subject(), 1, action="warn")
    results = [await store.admit(f"w{i}", [soft]) for i in range(3)]
    assert all(r.admitted for r in results)
    assert [r.states[0].used for r in results] == [1, 2, 3]  # counted, never refused
    assert [bool(r.warnings) for r in results] == [False, True, True]


# ---- budgets --------------------------------------------------------------------------------


async def test_budget_refuses_until_period_end_and_settles_actual_cost(store: CounterStore) -> None:
    subj = subject()
    lim = budget(subj, 10_000, 4_000, warn_at=0.75)
    a = await store.admit("a", [lim])
    b = await store.admit("b", [lim])
    assert a.admitted and b.admitted and b.states[0].used == 8_000 and b.warnings
    refused = await store.admit("c", [lim])
    assert not refused.admitted and refused.blocking is not None
    month_end = budget_period("month", T0, __import__("zoneinfo").ZoneInfo("UTC"))[1]
    assert refused.blocking.retry_after == math.ceil(month_end - T0)
    assert refused.blocking.reset_seconds == math.ceil(month_end - T0)
    await store.settle(a, Usage(10, 10, 1_500))
    await store.settle(b, Usage(10, 10, 2_500))
    c = await store.admit("c", [lim])
    assert c.admitted and c.states[0].used == 8_000
    never = await store.admit("d", [budget(subj, 10_000, 10_001)])
    assert never.blocking is not None and never.blocking.retry_after is None


async def test_budget_periods_follow_the_timezone(clock: FakeClock) -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/New_York")
    clock.now = 1796090400.0  # 2026-12-01 02:00 UTC = 2026-11-30 21:00 in New York
    assert budget_period("month", clock.now, tz)[0] == "2026-11"
    assert budget_period("day", clock.now, tz)[0] == "2026-11-30"
    assert budget_period("month", clock.now, ZoneInfo("UTC"))[0] == "2026-12"
    _, end = budget_period("day", clock.now, tz)
    assert end - clock.now == 3 * 3600  # midnight in New York
    local = LocalCounters(timezone="America/New_York", clock=clock)
    lim = budget(subject(), 100, 60, period="day", ident="budget/0/day")
    assert (await local.admit("a", [lim])).admitted
    assert not (await local.admit("b", [lim])).admitted
    clock.advance(3 * 3600)  # a new day in New York
    assert (await local.admit("c", [lim])).admitted


# ---- settle / refund idempotency, all-or-nothing --------------------------------------------


async def test_settle_twice_is_settle_once(store: CounterStore) -> None:
    subj = subject()
    limits = [tokens(subj, 10_000, 1_000), budget(subj, 100_000, 5_000), rate(subj, 10)]
    adm = await store.admit("a", limits)
    await store.settle(adm, Usage(100, 200, 700))
    await store.settle(adm, Usage(100, 200, 700))
    await store.refund(adm)  # after a settle, a refund finds nothing to give back
    peek = await store.admit("b", limits)
    assert [s.used for s in peek.states] == [300 + 1_000, 700 + 5_000, 2]


async def test_refund_restores_everything_including_requests(store: CounterStore) -> None:
    subj = subject()
    limits = [tokens(subj, 10_000, 1_000), budget(subj, 100_000, 5_000), rate(subj, 1)]
    adm = await store.admit("a", limits)
    assert adm.admitted
    assert not (await store.admit("b", limits)).admitted
    await store.refund(adm)
    await store.refund(adm)
    await store.settle(adm, Usage(1, 1, 1))  # after a refund, a settle finds nothing
    again = await store.admit("c", limits)
    assert again.admitted
    assert [s.used for s in again.states] == [1_000, 5_000, 1]


async def test_refused_admission_writes_nothing_and_settle_is_a_no_op(store: CounterStore) -> None:
    subj = subject()
    limits = [rate(subj, 5), tokens(subj, 100, 101)]
    refused = await store.admit("a", limits)
    assert not refused.admitted and refused.blocking is not None
    assert refused.blocking.limit.unit == "tokens" and refused.blocking.retry_after is None
    await store.settle(refused, Usage(1, 1, 1))
    await store.refund(refused)
    assert (await store.admit("b", [rate(subj, 5)])).states[0].used == 1


async def test_a_refusing_group_rolls_back_the_groups_already_admitted(store: CounterStore) -> None:
    global_subject, user = subject(), subject()
    limits = [rate(global_subject, 10), rate(user, 1, ident="per_user/0/rpm")]
    assert (await store.admit("a", limits)).admitted
    refused = await store.admit("b", limits)
    assert not refused.admitted
    assert refused.blocking is not None and refused.blocking.limit.subject == user
    assert refused.states[0].used <= 1  # reported before this request
    only_global = await store.admit("c", [rate(global_subject, 10)])
    assert only_global.states[0].used == 2  # the refused request's global unit was given back


async def test_blocking_is_the_limit_that_waits_longest(store: CounterStore, clock: FakeClock) -> None:
    subj = subject()
    short, long_ = rate(subj, 1), budget(subj, 10, 10)
    assert (await store.admit("a", [short, long_])).admitted
    refused = await store.admit("b", [short, long_])
    assert refused.blocking is not None and refused.blocking.limit == long_
    assert [s.refused for s in refused.states] == [True, True]


async def test_no_limits_means_admitted(store: CounterStore) -> None:
    adm = await store.admit("a", [])
    assert adm.admitted and adm.states == () and adm.warnings == ()
    await store.settle(adm, Usage(1, 1, 1))


async def test_settling_more_than_reserved_may_pass_the_limit(store: CounterStore) -> None:
    subj = subject()
    adm = await store.admit("a", [tokens(subj, 1000, 100)])
    await store.settle(adm, Usage(prompt_tokens=700, completion_tokens=800, cost_usd_micros=0))
    after = await store.admit("b", [tokens(subj, 1000, 1)])
    assert not after.admitted and after.states[0].used == 1500  # recorded as used, then refused


async def test_peek_reads_without_consuming(store: CounterStore) -> None:
    assert isinstance(store, Counters | LocalCounters)
    subj = subject()
    limits = [rate(subj, 2), budget(subj, 100, 60)]
    assert (await store.admit("a", limits)).admitted
    for _ in range(2):
        states = await store.peek(limits)
        assert [s.used for s in states] == [1, 60]
        assert [s.refused for s in states] == [False, True]  # a second budget reservation would not fit
