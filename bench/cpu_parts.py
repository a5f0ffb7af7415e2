"""What each call the sidecar makes per request costs its process: `python -m bench.cpu_parts`.

`bench.cpu_per_request` gives the sidecar's whole CPU per request; this splits it by the library
calls a request makes, each timed on its own from one Python process (uvloop, as the sidecar runs)
against the bench stack (`sidecar.stack`: redis-server, OPA with the compiled example policy, the
demo model with zero latency; bench/latency.py's unthrottled copy of the policy):

* `decision_http`: `OpaClient.decide`, the decision over HTTP (aiohttp, orjson), as the OPA engine
  asks for it (bench/decision_input.json's request);
* `decision_wasm`: `WasmPolicy.evaluate` of the same input in-process (the Wasm engine);
* `forward_http`: a plain aiohttp POST of the bench's chat completion to the demo model, read whole;
* `admission`: `Counters.admit` of the decision's limits (one EVALSHA of admit.lua);
* `settlement`: `Counters.settle` of that admission (one EVALSHA of settle.lua);
* `evalsha_trivial`: one EVALSHA of `return 1` through the sidecar's Redis client.

For each: CPU of this process per call (`time.process_time`, so time spent waiting for OPA, Redis
or the model is not counted) and the wall-clock p50, as the median over `--rounds` rounds of
`--calls` calls. The sum of the first five is the least CPU a guarded request can cost the sidecar
with these libraries, before its own code (docs/performance.md, "Where the sidecar's CPU goes").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.latency import BODY, PATH, bench_stack_options
from compiler.api import compile_policy
from sidecar.counters import Admission, Counters, Usage, limits_from_decision
from sidecar.opa_client import OpaClient
from sidecar.redis_client import create_redis
from sidecar.stack import Stack
from sidecar.wasm_engine import WasmPolicy, default_opa_binary, wasm_from_bundle

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hexarch.yaml"
INPUT = ROOT / "bench" / "decision_input.json"
JSON = {"Content-Type": "application/json"}


async def timed(call: Callable[[int], Awaitable[Any]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of CPU µs per call and of the wall-clock p50 µs."""
    for i in range(min(200, calls)):
        await call(i)
    cpu: list[float] = []
    wall: list[float] = []
    n = 0
    for _ in range(rounds):
        samples: list[float] = []
        started = time.process_time()
        for _ in range(calls):
            t = time.perf_counter()
            await call(n)
            samples.append(time.perf_counter() - t)
            n += 1
        cpu.append((time.process_time() - started) / calls * 1e6)
        wall.append(statistics.median(samples) * 1e6)
    return {"cpu_us": round(statistics.median(cpu), 1), "wall_p50_us": round(statistics.median(wall), 1)}


async def measure(stack: Stack, policy: Path, calls: int, rounds: int) -> dict[str, Any]:
    doc = json.loads(INPUT.read_text())
    opa = OpaClient(stack.opa_url, 1000)
    await opa.start()
    redis = create_redis(stack.redis_url)
    counters = Counters(redis)
    await counters.load_scripts()
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    module, data = wasm_from_bundle(compile_policy(policy).data, default_opa_binary())
    wasm = WasmPolicy(module, {"hexarch": {"config": orjson.loads(data)}}, "bench")
    raw_input = orjson.dumps(doc)
    try:
        decision = await opa.decide(doc)
        if wasm.evaluate(raw_input) != {k: v for k, v in decision.items() if k != "opa_decision_id"}:
            raise RuntimeError("the Wasm engine and OPA disagree on the bench input")
        limits = limits_from_decision(decision.get("limits") or ())
        body = orjson.dumps(BODY)
        forward_url = f"{stack.demo_url}{PATH}"
        trivial = await redis.script_load("return 1")
        admissions: list[Admission] = []

        async def decision_http(_: int) -> None:
            await opa.decide(doc)

        async def decision_wasm(_: int) -> None:
            wasm.evaluate(raw_input)

        async def forward_http(_: int) -> None:
            async with session.post(forward_url, data=body, headers=JSON) as resp:
                await resp.read()

        async def admission(i: int) -> None:
            admissions.append(await counters.admit(f"bench-parts-{i}", limits))

        async def settlement(i: int) -> None:
            await counters.settle(admissions[i], Usage(12, 16, 5))

        async def evalsha_trivial(_: int) -> None:
            await redis.evalsha(trivial, 0)

        out: dict[str, Any] = {}
        for name, call in (
            ("decision_http", decision_http),
            ("decision_wasm", decision_wasm),
            ("forward_http", forward_http),
            ("admission", admission),
            ("settlement", settlement),
            ("evalsha_trivial", evalsha_trivial),
        ):
            out[name] = await timed(call, calls, rounds)
        out["limits"] = len(limits)
        return out
    finally:
        await session.close()
        await counters.close()
        await opa.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_parts", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per part (median reported)")
    parser.add_argument("--policy", type=Path, default=EXAMPLE, help="policy to copy (limits are raised)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        run: Callable[..., Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hexarch-parts-") as tmp:
        options = bench_stack_options(args.policy, Path(tmp))
        with Stack(options) as stack:
            parts = run(measure(stack, options.policy, args.calls, args.rounds))
    report = {
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "calls": args.calls,
        "rounds": args.rounds,
        "parts": parts,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
