"""CPU time the sidecar process spends per request: `python -m bench.cpu_per_request`.

Wall-clock latency on a shared 2-core machine is noisy; the CPU the sidecar process itself burns per
request is not (much). This starts the bench stack (`sidecar.stack`: redis-server, OPA, the demo
model with zero latency, the sidecar) with the unthrottled example policy (bench/latency.py), and
for each phase reads the sidecar's utime+stime from /proc/PID/stat and Redis's `INFO commandstats`
before and after:

* sequential: N non-streaming chat completions, one at a time;
* concurrent: N of them with `--concurrency` (32) in flight.

After the last reply it waits until Redis has seen no new command for 0.3 s (settlements run after
the replies), so their CPU is counted. Reported per request: sidecar CPU ms, Redis calls (all
commands, and EVALSHA), each phase repeated `--rounds` times (the median is reported).

`--baseline DIR` starts a second sidecar from another source tree (e.g. `git archive` of an older
commit unpacked in DIR) on the same OPA, Redis and model, and interleaves its phases with this
tree's: before and after, measured in the same minute on the same machine state. The median of the
per-round ratios (this tree / baseline) is reported too: on a shared machine it is steadier than
either median alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench.latency import BODY, EXAMPLE, PATH, bench_stack_options, child
from sidecar.stack import ROOT, Stack, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def command_calls(client: redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in info.items()}


def quiet(client: redis.Redis, still: float = 0.3, limit: float = 15.0) -> None:
    """Until Redis saw no command (but these INFO calls) for `still` seconds."""
    deadline = time.monotonic() + limit
    last = sum(n for name, n in command_calls(client).items() if name != "info")
    while time.monotonic() < deadline:
        time.sleep(still)
        now = sum(n for name, n in command_calls(client).items() if name != "info")
        if now == last:
            return
        last = now


async def send(url: str, requests: int, concurrency: int) -> int:
    """`requests` chat completions, `concurrency` in flight; how many were not 200."""
    payload = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json"}
    failures = 0
    left = requests

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal failures, left
            while left > 0:
                left -= 1
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def phase(url: str, pid: int, client: redis.Redis, requests: int, concurrency: int) -> dict[str, Any]:
    quiet(client)
    cpu0, calls0 = cpu_seconds(pid), command_calls(client)
    failures = asyncio.run(send(url, requests, concurrency))
    quiet(client)
    cpu1, calls1 = cpu_seconds(pid), command_calls(client)
    calls = {k: n - calls0.get(k, 0) for k, n in calls1.items() if k != "info" and n != calls0.get(k, 0)}
    return {
        "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / requests,
        "redis_calls_per_request": sum(calls.values()) / requests,
        "redis_evalsha_per_request": calls.get("evalsha", 0) / requests,
        "redis_commands": calls,
        "failures": failures,
    }


@contextlib.contextmanager
def baseline_sidecar(stack: Stack, policy: Path, root: Path, port: int) -> Iterator[int]:
    """A sidecar from the source tree `root`, on the stack's OPA, Redis and model."""
    env = {**os.environ, **stack.sidecar_env(), "PYTHONPATH": str(root)}
    env["HEXARCH_LISTEN"] = f"127.0.0.1:{port}"
    env["HEXARCH_SERVE_BUNDLE"] = "false"  # OPA polls the first sidecar's bundle
    cmd = [
        sys.executable,
        "-c",
        "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "runpy.run_module('sidecar.cli', run_name='__main__')",
        str(root),
    ]
    cmd += ["serve", "--config", str(policy)]
    with child(
        "the baseline sidecar",
        cmd,
        f"http://127.0.0.1:{port}/readyz",
        stack.work_dir / "baseline-sidecar.log",
        env,
    ) as pid:
        yield pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cpu_per_request",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, concurrent phase (32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each phase (median reported)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per sidecar")
    parser.add_argument("--engine", choices=("opa", "wasm"), default="opa", help="decision engine")
    parser.add_argument("--baseline", type=Path, help="another source tree to compare, interleaved")
    parser.add_argument("--policy", type=Path, default=EXAMPLE, help="policy to copy (limits are raised)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hexarch-cpu-") as tmp:
        options = bench_stack_options(args.policy, Path(tmp), {"HEXARCH_DECISION_ENGINE": args.engine})
        policy = options.policy
        with contextlib.ExitStack() as running:
            stack = running.enter_context(Stack(options))
            pid = next(c.proc.pid for c in stack.children if c.name == "sidecar")
            targets = {"this_tree": (stack.sidecar_url + PATH, pid)}
            if args.baseline is not None:
                port = free_port()
                base_pid = running.enter_context(
                    baseline_sidecar(stack, policy, args.baseline.resolve(), port)
                )
                targets["baseline"] = (f"http://127.0.0.1:{port}{PATH}", base_pid)
            client = redis.Redis.from_url(stack.redis_url)
            running.callback(client.close)
            for url, _ in targets.values():
                asyncio.run(send(url, args.warmup, args.concurrency))
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                name: {"sequential": [], "concurrent": []} for name in targets
            }
            for i in range(args.rounds):
                order = list(targets) if i % 2 == 0 else list(reversed(targets))
                for name in order:
                    url, target_pid = targets[name]
                    runs[name]["sequential"].append(phase(url, target_pid, client, args.requests, 1))
                    runs[name]["concurrent"].append(
                        phase(url, target_pid, client, args.requests, args.concurrency)
                    )
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "engine": args.engine,
        "requests_per_phase": args.requests,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "endpoint": f"POST {PATH} (max_tokens {BODY['max_tokens']}; demo model, zero latency)",
        "baseline": str(args.baseline) if args.baseline else None,
        "source": str(ROOT),
    }
    for name, phases in runs.items():
        result[name] = {
            ph: {
                "cpu_ms_per_request_median": round(
                    statistics.median(r["cpu_ms_per_request"] for r in rounds), 4
                ),
                "cpu_ms_per_request_rounds": [round(r["cpu_ms_per_request"], 4) for r in rounds],
                "redis_calls_per_request": round(rounds[-1]["redis_calls_per_request"], 3),
                "redis_evalsha_per_request": round(rounds[-1]["redis_evalsha_per_request"], 3),
                "redis_commands_last_round": rounds[-1]["redis_commands"],
                "failures": sum(r["failures"] for r in rounds),
            }
            for ph, rounds in phases.items()
        }
    if "baseline" in runs:
        # paired by round (each round measures both trees back to back): the machine's load drifts
        # between rounds far more than within one
        result["ratio_to_baseline_median"] = {
            ph: round(
                statistics.median(
                    a["cpu_ms_per_request"] / b["cpu_ms_per_request"]
                    for a, b in zip(runs["this_tree"][ph], runs["baseline"][ph], strict=True)
                ),
                3,
            )
            for ph in ("sequential", "concurrent")
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
