"""Added latency of the sidecar over a direct call to the model: `python -m bench.latency`.

It starts its own stack as separate processes on loopback, like production (redis-server, the demo
model with zero latency, the sidecar serving the compiled bundle, OPA polling it: `sidecar.stack`),
from a copy of examples/hexarch.yaml whose rate, token and budget limits are raised so nothing is
throttled while every rule is still evaluated. After a warm-up it sends the same chat completion
directly to the demo model and through the sidecar, interleaved in the same run so both see the
same machine state:

* sequential: alternate direct / sidecar calls, one at a time;
* concurrent: rounds of `--batch` calls at `--concurrency` in flight, direct then sidecar (the order
  alternates each round).

It prints one JSON document (and writes it to `--out` when given): p50/p99 of each path in ms, the
added p50/p99 (sidecar minus direct) and the versions of everything measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.floor_proxy import decision_input
from sidecar.stack import ROOT, Stack, StackOptions, find_binary, free_port, http_ok

EXAMPLE = ROOT / "examples" / "hexarch.yaml"
HUGE = 1_000_000_000
BODY = {
    "model": "tinyllama",
    "messages": [{"role": "user", "content": "What is Python? Answer in one sentence."}],
    "temperature": 0.7,
    "max_tokens": 16,
}
PATH = "/v1/chat/completions"
# What the sidecar asks OPA for BODY (DESIGN.md input document), to time the decision on its own.
DECISION_INPUT = decision_input(BODY)


def unthrottled_policy(source: Path, target: Path) -> None:
    """The example with every rate/token/budget limit raised far above what a benchmark sends."""
    doc = yaml.safe_load(source.read_text())
    for policy in doc.get("policies", []):
        for rule in policy.get("rules", []):
            for key in list(rule):
                if (
                    key.startswith(("requests_per_", "max_tokens_per_")) and key != "max_tokens_per_request"
                ) or key.endswith("_budget_usd"):
                    rule[key] = HUGE
    doc.pop("logging", None)  # its log file is relative to the cwd; the benchmark writes only to its temp dir
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation), in the unit of `samples`."""
    ordered = sorted(samples)
    rank = max(1, round(pct / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Samples:
    """Latencies (ms) of the calls answered 200, and the count of every other status."""

    ok: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    busy_seconds: float = 0.0  # wall time of the concurrent batches, for throughput

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": len(self.ok), "errors": dict(self.errors)}
        if self.busy_seconds > 0:
            out["throughput_rps"] = round(len(self.ok) / self.busy_seconds, 1)
        if self.ok:
            out |= {
                "p50_ms": round(percentile(self.ok, 50), 3),
                "p99_ms": round(percentile(self.ok, 99), 3),
                "mean_ms": round(statistics.fmean(self.ok), 3),
            }
        return out


def summary(direct: Samples, sidecar: Samples, floor: Samples) -> dict[str, Any]:
    d, s, f = direct.stats(), sidecar.stats(), floor.stats()
    result: dict[str, Any] = {"direct": d, "sidecar": s, "floor": f}

    def added(prefix: str, over: dict[str, Any], base: dict[str, Any]) -> None:
        if "p50_ms" in over and "p50_ms" in base:
            result[f"{prefix}_p50_ms"] = round(over["p50_ms"] - base["p50_ms"], 3)
            result[f"{prefix}_p99_ms"] = round(over["p99_ms"] - base["p99_ms"], 3)

    added("added", s, d)  # what the sidecar costs a caller
    added("floor_added", f, d)  # what OPA + one Redis call + a hop cost, with nothing else
    added("sidecar_over_floor", s, f)  # the sidecar's own share
    return result


Call = Callable[[Samples], Coroutine[Any, Any, None]]


def caller(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any] = BODY
) -> Call:
    payload = json.dumps(body).encode()

    async def call(into: Samples) -> None:
        began = time.perf_counter()
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            into.errors[type(exc).__name__] += 1
            return
        if status == 200:
            into.ok.append((time.perf_counter() - began) * 1000)
        else:
            # A refusal (503 when OPA misses its timeout under load) is counted, not timed.
            into.errors[str(status)] += 1

    return call


def rotated(paths: list[tuple[Call, Samples]], i: int) -> list[tuple[Call, Samples]]:
    """The paths in the i-th order, so no path always runs right after the same other one."""
    k = i % len(paths)
    return paths[k:] + paths[:k]


async def sequential(direct: Call, sidecar: Call, floor: Call, opa: Call, requests: int) -> dict[str, Any]:
    d, s, f, o = Samples(), Samples(), Samples(), Samples()
    paths = [(direct, d), (sidecar, s), (floor, f)]
    for i in range(requests):
        for call, into in rotated(paths, i):
            await call(into)
        await opa(o)
    result = summary(d, s, f)
    # Part of the added latency: one decision asked of OPA directly (HTTP round trip + evaluation).
    result["opa_decision_only"] = o.stats()
    return result


async def concurrent(
    direct: Call, sidecar: Call, floor: Call, requests: int, concurrency: int, batch: int
) -> dict[str, Any]:
    d, s, f = Samples(), Samples(), Samples()
    paths = [(direct, d), (sidecar, s), (floor, f)]

    async def run_batch(call: Call, into: Samples) -> None:
        remaining = batch

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await call(into)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        into.busy_seconds += time.perf_counter() - began

    rounds = max(1, math.ceil(requests / batch))
    for i in range(rounds):
        for call, into in rotated(paths, i):
            await run_batch(call, into)
    result = summary(d, s, f)
    result["concurrency"] = concurrency
    return result


def versions(stack: Stack) -> dict[str, str]:
    def output(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except OSError as exc:
            return f"unavailable: {exc}"

    opa = output([find_binary("opa", "HEXARCH_OPA"), "version"]).splitlines()
    redis = output([find_binary("redis-server", "HEXARCH_REDIS_SERVER"), "--version"])
    found: dict[str, str] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(len(os.sched_getaffinity(0))),
        "opa": opa[0].removeprefix("Version: ") if opa else "unknown",
        "redis": next((p.removeprefix("v=") for p in redis.split() if p.startswith("v=")), redis),
    }
    for dist in ("hexarch", "aiohttp", "uvloop", "orjson", "redis"):
        try:
            found[dist if dist != "redis" else "redis-py"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


async def measure(
    stack: Stack, floor_url: str, requests: int, concurrency: int, batch: int, warmup: int
) -> dict[str, Any]:
    assert stack.demo_url is not None
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        direct = caller(session, stack.demo_url + PATH, headers)
        sidecar = caller(session, stack.sidecar_url + PATH, headers)
        floor = caller(session, floor_url + PATH, headers)
        opa = caller(session, stack.opa_url + "/v1/data/hexarch/decision", headers, {"input": DECISION_INPUT})
        # Warm-up: connections, OPA's compiled query cache, Redis script cache, Python code paths.
        scratch = Samples()
        for _ in range(warmup):
            await direct(scratch)
            await sidecar(scratch)
            await floor(scratch)
        await concurrent(direct, sidecar, floor, batch * 3, concurrency, batch)
        began = time.monotonic()
        seq_window = (time.time(), 0.0)
        seq = await sequential(direct, sidecar, floor, opa, requests)
        seq_window = (seq_window[0], time.time())
        conc = await concurrent(direct, sidecar, floor, requests, concurrency, batch)
        elapsed = time.monotonic() - began
    seq["sidecar_log_p50_ms"] = sidecar_log_medians(stack.work_dir / "sidecar.log", seq_window)
    return {"sequential": seq, "concurrent": conc, "elapsed_seconds": round(elapsed, 1)}


def sidecar_log_medians(log: Path, window: tuple[float, float]) -> dict[str, float]:
    """Medians of the sidecar's own decision-log timings over the sequential phase: where the added
    time goes (`decision_ms` is the OPA call, `upstream_ms` the forward; the rest is the sidecar)."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"decision_ms"' in line:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if window[0] <= row.get("ts", 0) <= window[1] and row.get("status") == 200:
                rows.append(row)
    out: dict[str, float] = {"count": len(rows)}
    for key in ("latency_ms", "decision_ms", "upstream_ms"):
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = round(statistics.median(values), 3)
    if {"latency_ms", "decision_ms", "upstream_ms"} <= out.keys():
        out["own_ms"] = round(out["latency_ms"] - out["decision_ms"] - out["upstream_ms"], 3)
    return out


@contextlib.contextmanager
def floor_proxy(stack: Stack) -> Iterator[str]:
    """`bench.floor_proxy` on a free port, talking to the stack's OPA, Redis and demo model."""
    assert stack.demo_url is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (stack.work_dir / "floor-proxy.log").open("wb")
    cmd = [sys.executable, "-m", "bench.floor_proxy", "--port", str(port), "--opa", stack.opa_url]
    cmd += ["--redis", stack.redis_url, "--upstream", stack.demo_url]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not http_ok(url + "/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the floor proxy did not start; see {log.name}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=2000, help="calls per path and mode (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    parser.add_argument("--batch", type=int, default=200, help="calls per concurrent round (default 200)")
    parser.add_argument("--warmup", type=int, default=200, help="sequential warm-up calls per path")
    parser.add_argument("--policy", type=Path, default=EXAMPLE, help="policy to copy (limits are raised)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hexarch-bench-") as tmp:
        policy = Path(tmp) / "hexarch.yaml"
        unthrottled_policy(args.policy, policy)
        options = StackOptions(
            policy=policy,
            demo=True,
            port=free_port(),
            opa_port=free_port(),
            redis_port=free_port(),
            demo_port=free_port(),
            work_dir=Path(tmp) / "run",
            sidecar_log_file=True,
        )
        stack = Stack(options)
        stack.start()
        try:
            with floor_proxy(stack) as floor_url:
                try:
                    import uvloop

                    runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = uvloop.run
                except ImportError:
                    runner = asyncio.run
                result = runner(
                    measure(stack, floor_url, args.requests, args.concurrency, args.batch, args.warmup)
                )
                result = {
                    "sequential": result["sequential"],
                    "concurrent": result["concurrent"],
                    "requests": args.requests,
                    "endpoint": f"POST {PATH} (non-streaming, max_tokens {BODY['max_tokens']})",
                    "elapsed_seconds": result["elapsed_seconds"],
                    "versions": versions(stack),
                }
        finally:
            stack.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
