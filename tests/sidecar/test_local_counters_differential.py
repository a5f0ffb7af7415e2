"""The fail_open store (`LocalCounters`, a Python mirror of admit.lua/settle.lua) and Redis running
the scripts agree on random sequences of admissions, settlements, refunds and clock steps.

Hypothesis generates the sequences (derandomized: the same every run); both stores get the same
injected clock and the same calls; every admission's outcome and per-limit state must be equal."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.counters import Admission, Counters, Limit, Usage
from sidecar.local_counters import LocalCounters
from sidecar.redis_client import create_redis
from tests.sidecar.counter_support import FakeClock, budget, rate, tokens
from tests.support.servers import RedisServer


@dataclass(frozen=True)
class Admit:
    which: tuple[bool, bool, bool]  # rate, tokens, budget
    token_cost: int
    usd_cost: int


@dataclass(frozen=True)
class Finish:
    index: int  # which earlier admission
    refund: bool
    completion: int
    usd: int


@dataclass(frozen=True)
class Advance:
    seconds: float


ops = st.lists(
    st.one_of(
        st.builds(
            Admit,
            st.tuples(st.booleans(), st.booleans(), st.booleans()),
            st.integers(0, 40),
            st.integers(0, 3000),
        ),
        st.builds(Finish, st.integers(0, 30), st.booleans(), st.integers(0, 60), st.integers(0, 5000)),
        st.builds(Advance, st.sampled_from([0.0, 0.4, 1.0, 5.0, 17.5, 45.0, 61.0])),
    ),
    min_size=1,
    max_size=40,
)


def _limits(subj: str, op: Admit, rate_limit: int, token_limit: int, usd_limit: int) -> list[Limit]:
    chosen: list[Limit] = []
    if op.which[0]:
        chosen.append(rate(subj, rate_limit))
    if op.which[1]:
        chosen.append(tokens(subj, token_limit, op.token_cost))
    if op.which[2]:
        chosen.append(budget(subj, usd_limit, op.usd_cost))
    return chosen


def _view(adm: Admission) -> tuple[object, ...]:
    return (
        adm.admitted,
        tuple((s.limit.id, s.used, s.remaining, s.retry_after, s.reset_seconds, s.warn) for s in adm.states),
    )


async def _run(url: str, sequence: list[Admit | Finish | Advance], limits: tuple[int, int, int]) -> None:
    clock = FakeClock()
    redis_store = Counters(create_redis(url), clock=clock)
    local = LocalCounters(clock=clock)
    subj = f"d-{uuid.uuid4().hex[:10]}"
    admitted: list[tuple[Admission, Admission]] = []
    try:
        for n, op in enumerate(sequence):
            if isinstance(op, Advance):
                clock.advance(op.seconds)
            elif isinstance(op, Admit):
                chosen = _limits(subj, op, *limits)
                a = await redis_store.admit(f"r{n}", chosen)
                b = await local.admit(f"r{n}", chosen)
                assert _view(a) == _view(b), (n, op)
                if a.admitted:
                    admitted.append((a, b))
            elif admitted:
                a, b = admitted.pop(op.index % len(admitted))
                if op.refund:
                    await redis_store.refund(a)
                    await local.refund(b)
                else:
                    usage = Usage(3, op.completion, op.usd)
                    await redis_store.settle(a, usage)
                    await local.settle(b, usage)
        # the final states agree too (a peek consumes nothing)
        probe = [rate(subj, limits[0]), tokens(subj, limits[1], 1), budget(subj, limits[2], 1)]
        assert [(s.used, s.remaining) for s in await redis_store.peek(probe)] == [
            (s.used, s.remaining) for s in await local.peek(probe)
        ]
    finally:
        await redis_store.close()
        await local.close()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=ops, limits=st.tuples(st.integers(1, 6), st.integers(10, 120), st.integers(1000, 20000)))
def test_local_counters_agree_with_the_redis_scripts(
    redis_server: RedisServer, sequence: list[Admit | Finish | Advance], limits: tuple[int, int, int]
) -> None:
    asyncio.run(_run(f"redis://127.0.0.1:{redis_server.port}/12", sequence, limits))
