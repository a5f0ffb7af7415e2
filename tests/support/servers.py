"""Real `opa` and `redis-server` processes on loopback for the test suite.

Every server binds 127.0.0.1 on a free port, is bounded (Redis: maxmemory, no persistence) and is
stopped by the fixture that started it. A missing binary is an error, never a skip: CI installs both
through scripts/setup.sh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, env_var: str) -> str:
    """The binary from $env_var, then .tools/bin (set-up script), then PATH. Raises when absent."""
    candidates = [os.environ.get(env_var), str(ROOT / ".tools" / "bin" / name), shutil.which(name)]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError(f"{name} not found (set {env_var} or run scripts/setup.sh)")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout}s ({last})")


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        terminate(self.proc)


def start_redis(port: int | None = None, extra: list[str] | None = None) -> RedisServer:
    binary = find_binary("redis-server", "HEXARCH_REDIS_SERVER")
    port = port or free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "64mb",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        *(extra or []),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc)
    wait_for(server.ping, 10, f"redis-server on {port}")
    return server


@dataclass
class RedisCluster:
    """Primaries on loopback, each owning a third of the slots (no replicas)."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node_of(self, slot: int) -> RedisServer:
        per = SLOTS // len(self.nodes) + 1
        return self.nodes[slot // per]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


SLOTS = 16384


def _redis_command(port: int, *args: str) -> bytes:
    """One command over a raw socket (RESP array of bulk strings); the first reply chunk."""
    out = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(out)
        return sock.recv(65536)


def start_redis_cluster(work_dir: Path, primaries: int = 3) -> RedisCluster:
    """A real Redis Cluster: `primaries` nodes, slots split evenly, met, and answering cluster_state:ok."""
    nodes: list[RedisServer] = []
    # the cluster bus port defaults to port + 10000, which may be taken: each node gets its own
    bus_ports = [free_port() for _ in range(primaries)]
    try:
        for i, bus in enumerate(bus_ports):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(work_dir / f"nodes-{i}.conf")]
            nodes.append(start_redis(extra=[*extra, "--cluster-port", str(bus)]))
        per = SLOTS // primaries + 1
        for i, node in enumerate(nodes):
            first, last = i * per, min(SLOTS, (i + 1) * per) - 1
            assert _redis_command(node.port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last)) == b"+OK\r\n"
        meet = ["CLUSTER", "MEET", "127.0.0.1", str(nodes[0].port), str(bus_ports[0])]
        for node in nodes[1:]:
            assert _redis_command(node.port, *meet) == b"+OK\r\n"

        def ready() -> bool:
            return all(b"cluster_state:ok" in _redis_command(n.port, "CLUSTER", "INFO") for n in nodes)

        wait_for(ready, 20, f"a Redis Cluster of {primaries} primaries")
        return RedisCluster(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@dataclass
class OpaServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, bundles: bool = False) -> bool:
        suffix = "?bundles" if bundles else ""
        with urllib.request.urlopen(f"{self.url}/health{suffix}", timeout=1) as resp:
            return resp.status == 200

    def stop(self) -> None:
        terminate(self.proc)


def start_opa(args: list[str], log_dir: Path, wait_bundles: bool = False) -> OpaServer:
    """`opa run --server` with extra `args` (bundle paths or --set flags) on a free loopback port."""
    binary = find_binary("opa", "HEXARCH_OPA")
    port = free_port()
    log = log_dir / f"opa-{port}.log"
    cmd = [binary, "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error", *args]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    server = OpaServer(port, proc, log)
    try:
        wait_for(lambda: server.healthy(wait_bundles), 20, f"opa on {port}")
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"opa failed to start: {log.read_text()[-2000:]}") from None
    return server


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
