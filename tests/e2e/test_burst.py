"""A burst on a fresh stack: 400 simultaneous chat completions, none refused for a slow decision.

The stack runs as processes (`sidecar.stack`, OPA with its production GOMAXPROCS), nothing warmed up
before the burst, with either decision engine. Every request must be answered 200: the sidecar's
admission queues keep OPA's load at a few decisions at a time (sidecar/opa_client.py), so none
misses the decision timeout (`503 policy_engine_unavailable`, 128 of 400 before the queue), and
Redis's at one script call per pooled connection (sidecar/counters.py), so none times out waiting
for a connection (`503 counter_store_unavailable`, up to 27 of 400 with the Wasm engine before).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from bench.latency import BODY, bench_stack_options
from sidecar.stack import Stack
from tests.conftest import EXAMPLE_POLICY

BURST = 400


async def burst(url: str) -> tuple[Counter[int], list[bytes]]:
    statuses: Counter[int] = Counter()
    refusals: list[bytes] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(f"{url}/v1/chat/completions", json=BODY) as resp:
                body = await resp.read()
                statuses[resp.status] += 1
                if resp.status != 200:
                    refusals.append(body)

        await asyncio.gather(*(one() for _ in range(BURST)))
    return statuses, refusals


@pytest.mark.parametrize("engine", ["opa", "wasm"])
def test_a_burst_of_400_on_a_fresh_stack_gets_no_503(tmp_path: Path, engine: str) -> None:
    # the bench's stack: every rule evaluated, no limit reached
    options = bench_stack_options(
        EXAMPLE_POLICY, tmp_path, {"HEXARCH_ANONYMOUS": "true", "HEXARCH_DECISION_ENGINE": engine}
    )
    with Stack(options) as stack:
        statuses, refusals = asyncio.run(burst(stack.sidecar_url))
    assert statuses == Counter({200: BURST}), refusals[:3]
