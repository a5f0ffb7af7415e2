"""Kill (SIGKILL + restart) and hang (SIGSTOP/SIGCONT) of OPA and Redis under a steady stream.

While a dependency is down its circuit breaker opens: fail_closed answers 503 at once, fail_open
lets traffic through (under the local limiter for Redis), no request gets a 500, one incident logs
one "breaker open" line and one "is back" line with a count, and traffic recovers without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from tests.sidecar.app_support import Harness, demo_server, harness, start_policy_opa
from tests.support.servers import OpaServer, RedisServer, start_redis, wait_for

POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 100000
sidecar:
  anonymous:
    enabled: true
    id: guest
"""
CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}
pytestmark = pytest.mark.slow


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def opa_srv(tmp_path: Path) -> Iterator[OpaServer]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    server = start_policy_opa(policy, tmp_path)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, opa_srv: OpaServer, redis_srv: RedisServer, tmp_path: Path
) -> AsyncIterator[Harness]:
    fail_mode = request.param
    overrides = {
        "HEXARCH_FAIL_MODE": fail_mode,
        "HEXARCH_BREAKER_FAILURES": "2",
        "HEXARCH_BREAKER_SECONDS": "0.5",
        "HEXARCH_LOG_DECISIONS": "false",
    }
    async with (
        demo_server() as demo,
        harness(POLICY, tmp_path, opa_srv, redis_srv.url, demo, overrides=overrides) as h,
    ):
        yield h


async def _post(h: Harness) -> tuple[int, str, float]:
    started = time.perf_counter()
    async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
        doc = await resp.json(content_type=None)
        took = time.perf_counter() - started
        code = doc.get("error", {}).get("code", "") if isinstance(doc, dict) else ""
        return resp.status, code, took


async def _metric(h: Harness, name: str, dependency: str) -> float:
    async with h.session.get(h.url("/metrics")) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'{name}{{dependency="{dependency}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_stopped(pid: int) -> None:
    def stopped() -> bool:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state in ("T", "t")

    wait_for(stopped, 10, f"process {pid} to stop")


def _redis_requests(server: RedisServer) -> int:
    """Requests the rate limit's window hash in Redis has counted (its running sum)."""
    client = redis.Redis.from_url(server.url)
    try:
        keys = [k for k in client.keys("hexarch:*rate_limit/0/rpm*")]
        return sum(int(client.hget(k, "sum") or 0) for k in keys)
    finally:
        client.close()


async def _metric_plain(h: Harness, series: str) -> float:
    async with h.session.get(h.url("/metrics")) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _restart_redis(old: RedisServer) -> RedisServer:
    return start_redis(port=old.port)


def _restart_opa(old: OpaServer) -> OpaServer:
    with old.log.open("ab") as fh:
        proc = subprocess.Popen(old.proc.args, stdout=fh, stderr=subprocess.STDOUT)
    server = OpaServer(old.port, proc, old.log)
    wait_for(lambda: server.healthy(True), 20, "restarted opa")
    return server


CASES = [
    pytest.param(dep, fault, mode, id=f"{dep}-{fault}-{mode}")
    for dep in ("opa", "redis")
    for fault in ("hang", "kill")
    for mode in ("fail_closed", "fail_open")
]


@pytest.mark.parametrize(("dependency", "fault", "stack"), CASES, indirect=["stack"])
async def test_outage_is_cut_by_the_breaker_and_recovers(
    dependency: str,
    fault: str,
    stack: Harness,
    opa_srv: OpaServer,
    redis_srv: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = stack
    fail_open = h.settings.fail_mode == "fail_open"
    down_answer = 200 if fail_open else 503
    caplog.set_level(logging.WARNING, logger="hexarch.sidecar")
    ok = 0
    for _ in range(5):
        status, _, _ = await _post(h)
        assert status == 200
        ok += 1

    proc = opa_srv.proc if dependency == "opa" else redis_srv.proc
    os.kill(proc.pid, signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
    if fault == "kill":
        proc.wait(5)
    else:
        _wait_stopped(proc.pid)  # a signal is delivered asynchronously: be sure it took effect

    # the first failures wait for the timeout (or are refused); then the breaker opens
    for _ in range(6):
        status, code, _ = await _post(h)
        assert status == down_answer, code
        ok += status == 200
        if await _metric(h, "hexarch_breaker_open", dependency) == 1:
            break
    assert await _metric(h, "hexarch_breaker_open", dependency) == 1

    # while open: every request is answered without trying the dependency
    refused_before = await _metric(h, "hexarch_breaker_refused_total", dependency)
    times = []
    for _ in range(20):
        status, code, took = await _post(h)
        assert status == down_answer
        ok += status == 200
        if not fail_open:
            expected = "policy_engine_unavailable" if dependency == "opa" else "counter_store_unavailable"
            assert code == expected
        times.append(took)
    refused = await _metric(h, "hexarch_breaker_refused_total", dependency) - refused_before
    # the 0.5 s cool-down may pass during the 20 requests: a probe then goes through
    assert refused >= 15
    assert statistics.median(times) < 0.05

    # heal without restarting the sidecar
    if fault == "hang":
        os.kill(proc.pid, signal.SIGCONT)
    elif dependency == "opa":
        opa_srv.proc = _restart_opa(opa_srv).proc
    else:
        redis_srv.proc = _restart_redis(redis_srv).proc

    deadline = time.monotonic() + 15
    while await _metric(h, "hexarch_breaker_open", dependency) != 0 and time.monotonic() < deadline:
        status, _, _ = await _post(h)
        assert status in (200, 503)
        assert status == 200 or not fail_open
        ok += status == 200
        await asyncio.sleep(0.05)
    assert await _metric(h, "hexarch_breaker_open", dependency) == 0
    for _ in range(5):
        status, _, _ = await _post(h)
        assert status == 200
        ok += 1

    if dependency == "redis" and fail_open:
        # what the local limiter let through during the outage reaches Redis once it is back
        lost = 5 if fault == "kill" else 0  # a killed Redis (no persistence) forgot the first five
        # a call that timed out against a hung Redis still runs there once it resumes: it is counted
        # twice (locally and by Redis), the conservative direction, at most once per timed-out call
        timed_out = int(await _metric_plain(h, "hexarch_redis_errors_total")) if fault == "hang" else 0
        deadline = time.monotonic() + 15
        while _redis_requests(redis_srv) < ok - lost and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ok - lost <= _redis_requests(redis_srv) <= ok - lost + timed_out
        assert await _metric_plain(h, 'hexarch_reconciled_total{result="written"}') > 0

    lines = [r.getMessage() for r in caplog.records if r.name == "hexarch.sidecar"]
    opened = [m for m in lines if m.startswith(f"{dependency} unavailable: circuit breaker open")]
    back = [m for m in lines if m.startswith(f"{dependency} is back after")]
    assert len(opened) == 1, lines
    assert len(back) == 1, lines
    assert "calls were answered without it" in back[0]
    assert all(r.levelno < logging.ERROR for r in caplog.records), lines
