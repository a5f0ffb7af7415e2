"""Regression check on the hot path: how many OPA and Redis calls a request costs (counted, not timed).

The whole stack runs as processes (`sidecar.stack`: redis-server, OPA polling the sidecar's bundle,
the demo model, the sidecar). Over N sequential chat completions, OPA's own Prometheus counter of
`POST /v1/data` and Redis's `INFO commandstats` are read before and after:

* with `decision_engine: opa`, exactly one decision call per request reaches OPA;
* with `decision_engine: wasm`, none does (the decision is made in-process);
* the sidecar sends Redis exactly one EVALSHA of each of its scripts per request: the admission
  script before the reply (the only Redis call the client waits for), then, after the reply, the
  settlement script and the usage-statistics script (sidecar/stats.py, counted once per
  reservation). Any other command, or a second call of any script, fails the check. They are counted
  by a small TCP relay between the sidecar and Redis that parses the RESP commands it forwards and
  names each EVALSHA by its script (`INFO commandstats` would also count the commands the scripts
  run). The only other command allowed is the API sweeper's read of the ticket index
  (`ZRANGEBYSCORE`, once a second whatever the traffic), at most once per started second;
* at most two round trips per request: the relay counts the writes it receives from the sidecar
  (a pipeline arrives as one write). The admission is one; settle.lua and stats.lua leave together
  in the settlement's per-tick pipeline (sidecar/script_batch.py). Sending them one by one again, or
  any extra call, makes three.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench.latency import bench_stack_options
from sidecar.api_v1 import SWEEP_SECONDS
from sidecar.stack import Stack, free_port
from tests.conftest import EXAMPLE_POLICY

REQUESTS = 30
LUA = Path(__file__).resolve().parents[2] / "sidecar" / "lua"
SCRIPTS = {
    hashlib.sha1((LUA / f"{name}.lua").read_bytes()).hexdigest(): name
    for name in ("admit", "settle", "stats")
}
PER_REQUEST = ("evalsha:admit", "evalsha:settle", "evalsha:stats")
HANDSHAKE = ("hello", "client", "select", "auth")
BODY = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def opa_decision_calls(opa_url: str) -> int:
    with urllib.request.urlopen(f"{opa_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("http_request_duration_seconds_count{") and 'handler="v1/data"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class CountingRelay:
    """A loopback TCP relay to Redis that counts the RESP commands clients send through it, by name."""

    def __init__(self, redis_port: int) -> None:
        self.counts: Counter[str] = Counter()
        self.writes = 0  # chunks received from clients: a pipeline written at once is one
        self._lock = threading.Lock()
        self._target = redis_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def writes_seen(self) -> int:
        with self._lock:
            return self.writes

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        pending = b""
        try:
            while chunk := src.recv(65536):
                if count:
                    with self._lock:
                        self.writes += 1
                    pending = self._count(pending + chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _count(self, buf: bytes) -> bytes:
        """Count every complete command (`*N` then N bulk strings) in `buf`; return the rest."""
        while buf.startswith(b"*"):
            pos = buf.find(b"\r\n")
            if pos < 0:
                return buf
            items, pos = int(buf[1:pos]), pos + 2
            name = b""
            sha = b""
            for i in range(items):
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    return buf
                size = int(buf[pos + 1 : end])
                if len(buf) < end + 2 + size + 2:
                    return buf
                if i == 0:
                    name = buf[end + 2 : end + 2 + size]
                elif i == 1 and name.lower() == b"evalsha":
                    sha = buf[end + 2 : end + 2 + size]
                pos = end + 2 + size + 2
            label = name.decode().lower()
            if sha:
                label += ":" + SCRIPTS.get(sha.decode(), "unknown")
            with self._lock:
                self.counts[label] += 1
            buf = buf[pos:]
        return buf


def chat(url: str) -> int:
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(BODY).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        return int(resp.status)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[CountingRelay, int]]:
    redis_port = free_port()
    counting = CountingRelay(redis_port)
    try:
        yield counting, redis_port
    finally:
        counting.close()


@pytest.fixture(params=["opa", "wasm"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, relay: tuple[CountingRelay, int]
) -> Iterator[Stack]:
    # the bench's stack (every rule still evaluated, nothing throttled), its Redis behind the relay
    options = bench_stack_options(
        EXAMPLE_POLICY,
        tmp_path,
        {
            "HEXARCH_DECISION_ENGINE": request.param,
            "HEXARCH_ANONYMOUS": "true",
            "HEXARCH_REDIS_URL": f"redis://127.0.0.1:{relay[0].port}/0",  # through the counting relay
        },
    )
    options = replace(options, redis_port=relay[1])
    with Stack(options) as running:
        yield running


def test_one_decision_and_one_call_of_each_redis_script_per_request(
    stack: Stack, relay: tuple[CountingRelay, int]
) -> None:
    counting = relay[0]
    engine = stack.sidecar_env()["HEXARCH_DECISION_ENGINE"]
    assert chat(stack.sidecar_url) == 200  # warm: scripts loaded, connections open
    settled(counting, len(PER_REQUEST))
    quiet(counting)  # a script loaded on first use (NOSCRIPT, SCRIPT LOAD, EVALSHA) is done too
    opa_before, redis_before = opa_decision_calls(stack.opa_url), counting.snapshot()
    writes_before, began = counting.writes_seen(), time.monotonic()

    for _ in range(REQUESTS):
        assert chat(stack.sidecar_url) == 200

    settled(counting, evalsha_count(redis_before) + len(PER_REQUEST) * REQUESTS)
    opa_after, redis_after = opa_decision_calls(stack.opa_url), counting.snapshot()
    writes, seconds = counting.writes_seen() - writes_before, time.monotonic() - began

    assert opa_after - opa_before == (REQUESTS if engine == "opa" else 0)
    sent = redis_after - redis_before
    # a pooled connection opened on the way says HELLO (and CLIENT SETINFO) once: not per request
    handshakes = {name: sent.pop(name) for name in HANDSHAKE if name in sent}
    # the API's sweeper reads the ticket index once a second (sidecar/api_v1.py), not per request
    sweeps = sent.pop("zrangebyscore", 0)
    assert sweeps <= math.ceil(seconds / SWEEP_SECONDS) + 1, (sweeps, seconds)
    assert sent == Counter({name: REQUESTS for name in PER_REQUEST})
    assert handshakes.get("hello", 0) <= 2, handshakes
    # one write for the admission, one for the settlement's pipeline (settle.lua + stats.lua)
    assert writes <= 2 * REQUESTS + sweeps + sum(handshakes.values()), writes


def quiet(counting: CountingRelay) -> None:
    """Until nothing went through the relay for 0.3 s, at most 10 s."""
    deadline = time.monotonic() + 10
    last = counting.snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = counting.snapshot()
        if now == last:
            return
        last = now


def evalsha_count(counts: Counter[str]) -> int:
    return sum(n for name, n in counts.items() if name.startswith("evalsha"))


def settled(counting: CountingRelay, evalsha: int) -> None:
    """Until `evalsha` EVALSHA went through (settlements run after the replies), at most 10 s."""
    deadline = time.monotonic() + 10
    while evalsha_count(counting.snapshot()) < evalsha and time.monotonic() < deadline:
        time.sleep(0.05)
