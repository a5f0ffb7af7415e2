"""Hexarch side by side with a direct call, the floor proxy and LiteLLM: `python -m bench.latency`.

`make bench` runs it (after scripts/setup_bench.sh installed the pinned LiteLLM proxy into
.tools/litellm-venv and matplotlib into .venv). It starts, as separate processes on loopback:

* the stack (`sidecar.stack`): redis-server, the demo model with zero latency, the sidecar with the
  OPA engine (`decision_engine: opa`) serving the compiled bundle, OPA polling it;
* a second sidecar on the same Redis, OPA and model with `decision_engine: wasm`;
* the floor proxy (`bench.floor_proxy`: one OPA call, one Redis call, one forward, nothing else);
* the pass-through proxy (`bench.floor_proxy --bare`: parse and forward, no OPA, no Redis);
* the LiteLLM proxy (offline, no policy at all) in front of the same demo model.

The policy is a copy of examples/hexarch.yaml whose rate, token and budget limits are raised so
nothing is throttled while every rule is still evaluated. After a warm-up every phase interleaves
the paths (their order rotates every round) so each sees the same machine state:

* sequential: one non-streaming chat completion at a time; p50/p90/p99/p99.9 of each path and the
  added latency of each proxy (its percentile minus the direct call's);
* streaming: the same with `stream: true`; time to the first and to the last byte;
* throughput: rounds of `--batch` calls at 8, 32 and 128 in flight (`--concurrency`): requests per
  second and latency percentiles;
* `--soak SECONDS`: fixed load (32 in flight) on the OPA-engine sidecar, its RSS sampled every 5 s.

It writes one JSON document (`bench.json`, fields in docs/performance.md) and a PNG plot of the
latency distributions (`bench.png`) to `--out-dir` (default bench/results/) and prints the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
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
RESULTS = ROOT / "bench" / "results"
LITELLM_VENV = ROOT / ".tools" / "litellm-venv"
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
PERCENTILES = (50, 90, 99, 99.9)
CONCURRENCY = (8, 32, 128)
SOAK_IN_FLIGHT = 32


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


def bench_stack_options(source: Path, tmp: Path, extra_env: dict[str, str] | None = None) -> StackOptions:
    """The bench's stack in `tmp`: an unthrottled copy of `source`, the demo model, free ports and
    the sidecar's decision log in a file (read for the per-phase medians)."""
    policy = tmp / "hexarch.yaml"
    unthrottled_policy(source, policy)
    return StackOptions(
        policy=policy,
        demo=True,
        port=free_port(),
        opa_port=free_port(),
        redis_port=free_port(),
        demo_port=free_port(),
        work_dir=tmp / "run",
        sidecar_log_file=True,
        extra_env=extra_env or {},
    )


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation), in the unit of `samples`."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def pct_key(pct: float) -> str:
    return f"p{str(pct).replace('.', '').removesuffix('0') if pct != int(pct) else int(pct)}_ms"


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
            for pct in PERCENTILES:
                out[pct_key(pct)] = round(percentile(self.ok, pct), 3)
            out["mean_ms"] = round(statistics.fmean(self.ok), 3)
        return out


def added(paths: dict[str, dict[str, Any]], base: str = "direct") -> dict[str, dict[str, float]]:
    """Each proxy's percentiles minus the direct call's: the latency it adds."""
    out: dict[str, dict[str, float]] = {}
    for name, stats in paths.items():
        if name == base:
            continue
        keys = [pct_key(p) for p in PERCENTILES]
        if all(k in stats and k in paths[base] for k in keys):
            out[name] = {k: round(stats[k] - paths[base][k], 3) for k in keys}
    return out


Call = Callable[[Samples], Coroutine[Any, Any, None]]


@dataclass
class Target:
    """One path: where to send the chat completion, with which headers."""

    name: str
    url: str
    headers: dict[str, str]


def caller(session: aiohttp.ClientSession, target: Target, body: dict[str, Any] = BODY) -> Call:
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **target.headers}

    async def call(into: Samples) -> None:
        began = time.perf_counter()
        try:
            async with session.post(target.url, data=payload, headers=headers) as resp:
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


def stream_caller(session: aiohttp.ClientSession, target: Target) -> Callable[[Samples, Samples], Any]:
    """A streaming call timed twice: to its first body byte and to its last."""
    payload = json.dumps({**BODY, "stream": True}).encode()
    headers = {"Content-Type": "application/json", **target.headers}

    async def call(first: Samples, last: Samples) -> None:
        began = time.perf_counter()
        try:
            async with session.post(target.url, data=payload, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    first.errors[str(resp.status)] += 1
                    last.errors[str(resp.status)] += 1
                    return
                got_first = False
                async for _chunk in resp.content.iter_any():
                    if not got_first:
                        first.ok.append((time.perf_counter() - began) * 1000)
                        got_first = True
                last.ok.append((time.perf_counter() - began) * 1000)
        except aiohttp.ClientError as exc:
            first.errors[type(exc).__name__] += 1
            last.errors[type(exc).__name__] += 1

    return call


def rotated(items: list[Any], i: int) -> list[Any]:
    """The items in the i-th order, so no path always runs right after the same other one."""
    k = i % len(items)
    return items[k:] + items[:k]


async def sequential(calls: dict[str, Call], opa: Call, requests: int) -> dict[str, Any]:
    samples = {name: Samples() for name in calls}
    decision = Samples()
    order = list(calls)
    for i in range(requests):
        for name in rotated(order, i):
            await calls[name](samples[name])
        await opa(decision)
    paths = {name: s.stats() for name, s in samples.items()}
    # Part of the added latency: one decision asked of OPA directly (HTTP round trip + evaluation).
    raw = {name: s.ok for name, s in samples.items()}
    return {"paths": paths, "added": added(paths), "opa_decision_only": decision.stats(), "_raw": raw}


async def streaming(calls: dict[str, Callable[[Samples, Samples], Any]], requests: int) -> dict[str, Any]:
    first = {name: Samples() for name in calls}
    last = {name: Samples() for name in calls}
    order = list(calls)
    for i in range(requests):
        for name in rotated(order, i):
            await calls[name](first[name], last[name])
    ttfb = {name: s.stats() for name, s in first.items()}
    ttlb = {name: s.stats() for name, s in last.items()}
    return {
        "paths": {name: {"first_byte": ttfb[name], "last_byte": ttlb[name]} for name in calls},
        "added_first_byte": added(ttfb),
        "added_last_byte": added(ttlb),
    }


async def run_batch(call: Call, into: Samples, batch: int, concurrency: int) -> None:
    remaining = batch

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call(into)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    into.busy_seconds += time.perf_counter() - began


async def throughput(calls: dict[str, Call], requests: int, concurrency: int, batch: int) -> dict[str, Any]:
    samples = {name: Samples() for name in calls}
    order = list(calls)
    for i in range(max(1, math.ceil(requests / batch))):
        for name in rotated(order, i):
            await run_batch(calls[name], samples[name], batch, concurrency)
    return {name: s.stats() for name, s in samples.items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def soak(call: Call, pid: int, seconds: float) -> dict[str, Any]:
    """Fixed load on one path for `seconds`; the process's RSS every 5 s."""
    into = Samples()
    samples: list[tuple[float, float]] = []
    stop = time.monotonic() + seconds
    began = time.monotonic()

    async def worker() -> None:
        while time.monotonic() < stop:
            await call(into)

    async def sampler() -> None:
        while time.monotonic() < stop:
            samples.append((round(time.monotonic() - began, 1), rss_mb(pid)))
            await asyncio.sleep(5)
        samples.append((round(time.monotonic() - began, 1), rss_mb(pid)))

    await asyncio.gather(sampler(), *(worker() for _ in range(SOAK_IN_FLIGHT)))
    into.busy_seconds = time.monotonic() - began
    values = [rss for _, rss in samples]
    # the first minute is the warm-up of caches and pools; growth is judged after it
    settled = [rss for t, rss in samples if t >= min(60.0, seconds / 5)] or values
    return {
        "seconds": seconds,
        "in_flight": SOAK_IN_FLIGHT,
        "requests": into.stats(),
        "rss_mb": {
            "start": values[0],
            "end": values[-1],
            "max": max(values),
            "settled_min": min(settled),
            "settled_max": max(settled),
            "growth_after_warmup": round(settled[-1] - settled[0], 1),
        },
        "samples": samples,
    }


def versions(litellm: str | None) -> dict[str, str]:
    def output(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except OSError as exc:
            return f"unavailable: {exc}"

    opa = output([find_binary("opa", "HEXARCH_OPA"), "version"]).splitlines()
    redis = output([find_binary("redis-server", "HEXARCH_REDIS_SERVER"), "--version"])
    found: dict[str, str] = {
        "python": platform.python_version(),
        "opa": opa[0].removeprefix("Version: ") if opa else "unknown",
        "redis": next((p.removeprefix("v=") for p in redis.split() if p.startswith("v=")), redis),
        "litellm": litellm or "not run",
    }
    for dist in ("hexarch", "aiohttp", "uvloop", "orjson", "redis", "wasmtime"):
        try:
            found[dist if dist != "redis" else "redis-py"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
    }


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


# --------------------------------------------------------------------------------------------
# The processes besides the stack
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def child(name: str, cmd: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """A process started for the run, stopped at its end; yields its pid once `url` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not http_ok(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def floor_proxy(stack: Stack, port: int) -> contextlib.AbstractContextManager[int]:
    """`bench.floor_proxy` on `port`, talking to the stack's OPA, Redis and demo model."""
    assert stack.demo_url is not None
    cmd = [sys.executable, "-m", "bench.floor_proxy", "--port", str(port), "--opa", stack.opa_url]
    cmd += ["--redis", stack.redis_url, "--upstream", stack.demo_url]
    return child(
        "the floor proxy", cmd, f"http://127.0.0.1:{port}/health", stack.work_dir / "floor-proxy.log"
    )


def passthrough_proxy(stack: Stack, port: int) -> contextlib.AbstractContextManager[int]:
    """`bench.floor_proxy --bare` on `port`: parse and forward to the stack's demo model, nothing else."""
    assert stack.demo_url is not None
    cmd = [sys.executable, "-m", "bench.floor_proxy", "--bare", "--port", str(port)]
    cmd += ["--upstream", stack.demo_url]
    return child(
        "the pass-through proxy", cmd, f"http://127.0.0.1:{port}/health", stack.work_dir / "passthrough.log"
    )


def wasm_sidecar(stack: Stack, policy: Path, port: int) -> contextlib.AbstractContextManager[int]:
    """A second sidecar, deciding in-process (`decision_engine: wasm`), on the stack's services."""
    env = {**os.environ, **stack.sidecar_env()}
    env |= {"HEXARCH_LISTEN": f"127.0.0.1:{port}", "HEXARCH_DECISION_ENGINE": "wasm"}
    cmd = [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(policy)]
    return child(
        "the wasm sidecar", cmd, f"http://127.0.0.1:{port}/readyz", stack.work_dir / "wasm-sidecar.log", env
    )


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    cmd = [str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or None


def litellm_proxy(stack: Stack, port: int, key: str) -> contextlib.AbstractContextManager[int]:
    """The LiteLLM proxy, offline (local cost map), in front of the stack's demo model."""
    assert stack.demo_url is not None
    config = stack.work_dir / "litellm.yaml"
    model = {"model": f"openai/{BODY['model']}", "api_base": f"{stack.demo_url}/v1", "api_key": "x"}
    config.write_text(
        yaml.safe_dump({"model_list": [{"model_name": BODY["model"], "litellm_params": model}]})
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key}
    env["LITELLM_LOG"] = "ERROR"
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--num_workers", "1"]
    url = f"http://127.0.0.1:{port}/health/liveliness"
    return child("the LiteLLM proxy", cmd, url, stack.work_dir / "litellm.log", env)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


async def measure(targets: list[Target], opa_url: str, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=max(args.concurrency))
    async with aiohttp.ClientSession(connector=connector) as session:
        calls = {t.name: caller(session, t) for t in targets}
        streams = {t.name: stream_caller(session, t) for t in targets}
        opa = caller(
            session, Target("opa", opa_url + "/v1/data/hexarch/decision", {}), {"input": DECISION_INPUT}
        )
        # Warm-up: connections, OPA's compiled query cache, Redis script cache, Python code paths.
        scratch = Samples()
        for i in range(args.warmup):
            for name in rotated(list(calls), i):
                await calls[name](scratch)
        await throughput(calls, args.batch * 2, max(args.concurrency), args.batch)
        began = time.monotonic()
        window = time.time()
        seq = await sequential(calls, opa, args.requests)
        # a request's decision-log line is written after its settlement, a moment after the reply:
        # the window closes once the last ones are in, before any other phase sends traffic
        await asyncio.sleep(0.5)
        seq_window = (window, time.time())
        stream = await streaming(streams, max(10, args.requests // 4))
        rates = {
            str(c): await throughput(calls, args.requests, c, max(args.batch, c * 4))
            for c in args.concurrency
        }
        elapsed = time.monotonic() - began
    return {
        "sequential": seq,
        "streaming": stream,
        "throughput": rates,
        "elapsed_seconds": round(elapsed, 1),
        "_window": seq_window,
    }


def targets_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's must-show figures, computed from this run."""
    seq_added = result["sequential"]["added"]
    rates = result["throughput"].get("32", {})
    out: dict[str, Any] = {}
    if "hexarch_opa" in seq_added:
        out["opa_added_p50_ms"] = seq_added["hexarch_opa"]["p50_ms"]
    if "hexarch_wasm" in seq_added:
        out["wasm_added_p50_ms"] = seq_added["hexarch_wasm"]["p50_ms"]
    if "hexarch_opa" in rates:
        out["opa_rps_at_32"] = rates["hexarch_opa"].get("throughput_rps")
    if "litellm" in seq_added and "hexarch_opa" in seq_added:
        lite, ours = seq_added["litellm"]["p50_ms"], seq_added["hexarch_opa"]["p50_ms"]
        out["litellm_added_p50_ms"] = lite
        out["litellm_over_opa_added_p50"] = round(lite / ours, 1) if ours > 0 else None
    if "litellm" in rates and "hexarch_opa" in rates:
        lite_rps = rates["litellm"].get("throughput_rps") or 0
        out["litellm_rps_at_32"] = lite_rps
        out["opa_over_litellm_rps_at_32"] = (
            round(rates["hexarch_opa"]["throughput_rps"] / lite_rps, 1) if lite_rps else None
        )
    return out


def plot(result: dict[str, Any], raw: dict[str, list[float]], target: Path) -> None:
    """Latency distributions (sequential, CDF) and throughput by in-flight count, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, values in raw.items():
        ordered = sorted(values)
        if not ordered:
            continue
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        left.plot(ordered, ys, label=name)
    left.set_xscale("log")
    left.set_xlabel("latency of one chat completion, ms (log)")
    left.set_ylabel("fraction of requests")
    left.set_title("sequential latency distribution")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    levels = list(result["throughput"])
    names = list(raw)
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        values = [result["throughput"][lvl].get(name, {}).get("throughput_rps", 0) for lvl in levels]
        right.bar([i + k * width for i in range(len(levels))], values, width, label=name)
    right.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(levels))], [f"{lvl} in flight" for lvl in levels]
    )
    right.set_ylabel("requests / s")
    right.set_title(f"throughput ({result['machine']['cpus']} cores)")
    right.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=2000, help="calls per path and phase (default 2000)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=CONCURRENCY,
        help="in-flight levels, comma-separated (default 8,32,128)",
    )
    parser.add_argument("--batch", type=int, default=400, help="calls per concurrent round (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="sequential warm-up calls per path")
    parser.add_argument("--policy", type=Path, default=EXAMPLE, help="policy to copy (limits are raised)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where bench.json and bench.png go")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (the suite's short run)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG (no matplotlib needed)")
    parser.add_argument("--soak", type=float, nargs="?", const=300.0, default=0.0, help="soak seconds (300)")
    args = parser.parse_args(argv)

    lite_version = None if args.no_litellm else litellm_version()
    if not args.no_litellm and lite_version is None:
        parser.error(f"LiteLLM is not installed in {LITELLM_VENV}: run scripts/setup_bench.sh (make bench)")
    before = machine()
    with tempfile.TemporaryDirectory(prefix="hexarch-bench-") as tmp:
        options = bench_stack_options(args.policy, Path(tmp))
        policy = options.policy
        with contextlib.ExitStack() as running:
            stack = Stack(options)
            stack.start()
            running.callback(stack.stop)
            assert stack.demo_url is not None
            targets = [
                Target("direct", stack.demo_url + PATH, {}),
                Target("hexarch_opa", stack.sidecar_url + PATH, {}),
            ]
            wasm_port = free_port()
            running.enter_context(wasm_sidecar(stack, policy, wasm_port))
            targets.append(Target("hexarch_wasm", f"http://127.0.0.1:{wasm_port}{PATH}", {}))
            floor_port = free_port()
            running.enter_context(floor_proxy(stack, floor_port))
            targets.append(Target("floor", f"http://127.0.0.1:{floor_port}{PATH}", {}))
            bare_port = free_port()
            running.enter_context(passthrough_proxy(stack, bare_port))
            targets.append(Target("passthrough", f"http://127.0.0.1:{bare_port}{PATH}", {}))
            if lite_version is not None:
                key = "sk-bench-" + secrets.token_hex(16)
                lite_port = free_port()
                running.enter_context(litellm_proxy(stack, lite_port, key))
                targets.append(
                    Target(
                        "litellm", f"http://127.0.0.1:{lite_port}{PATH}", {"Authorization": f"Bearer {key}"}
                    )
                )
            sidecar_pid = next(c.proc.pid for c in stack.children if c.name == "sidecar")
            try:
                import uvloop

                runner: Callable[[Coroutine[Any, Any, Any]], Any] = uvloop.run
            except ImportError:
                runner = asyncio.run
            measured = runner(measure(targets, stack.opa_url, args))
            seq_window = measured.pop("_window")
            measured["sequential"]["sidecar_log_p50_ms"] = sidecar_log_medians(
                stack.work_dir / "sidecar.log", seq_window
            )
            if args.soak > 0:
                soak_target = next(t for t in targets if t.name == "hexarch_opa")

                async def run_soak() -> dict[str, Any]:
                    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                        return await soak(caller(session, soak_target), sidecar_pid, args.soak)

                measured["soak"] = runner(run_soak())
            raw_seq = measured["sequential"].pop("_raw")
    result: dict[str, Any] = {
        "machine": before | {"load_average_1m_after": round(os.getloadavg()[0], 2)},
        "versions": versions(lite_version),
        "endpoint": f"POST {PATH} (max_tokens {BODY['max_tokens']}; demo model, zero latency)",
        "paths": [t.name for t in targets],
        "requests": args.requests,
        **measured,
    }
    result["targets"] = targets_summary(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (args.out_dir / "bench.json").write_text(text + "\n")
    if not args.no_plot:
        plot(result, raw_seq, args.out_dir / "bench.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
