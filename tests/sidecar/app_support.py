"""Helpers for the sidecar app tests: a policy compiled into a real OPA, the demo model as the upstream,
and the sidecar app in process (aiohttp TestServer) or as `hexarch serve` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from compiler.api import compile_policy
from sidecar.app import create_app
from sidecar.demo_model import DemoSettings, create_demo_app
from sidecar.hardening import HardeningSettings
from sidecar.http_server import HardenedRunner
from sidecar.settings import Settings, load_settings
from tests.support.servers import ROOT, OpaServer, RedisServer, free_port, start_opa

EXAMPLE = ROOT / "examples" / "hexarch.yaml"
OPS_KEY = "hexarch-demo-ops-bot"  # admin (sha256 in examples/hexarch.yaml)
ALICE_KEY = "hexarch-demo-alice"  # plain user


def example_policies() -> str:
    """The example file without its `sidecar:` block (tests append their own)."""
    text = EXAMPLE.read_text()
    return text[: text.index("\n# The sidecar in front of the TinyLlama app")] + "\n"


def example_sidecar_block() -> str:
    """The example's `sidecar:` block with its commented-out demo API keys switched on."""
    text = EXAMPLE.read_text()
    lines = []
    for line in text[text.index("\nsidecar:") :].splitlines():
        if line.startswith(("  # api_keys:", "  #   ")):
            line = "  " + line[4:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def with_upstream(text: str, base_url: str) -> str:
    """Point the `tinyllama:` upstream section at `base_url`."""
    return re.sub(r"(tinyllama:\n  base_url: )\S+", rf"\g<1>{base_url}", text, count=1)


def start_policy_opa(policy: Path, tmp: Path) -> OpaServer:
    bundle = compile_policy(policy)
    path = tmp / f"bundle-{bundle.revision[:12]}.tar.gz"
    path.write_bytes(bundle.data)
    return start_opa(["-b", str(path)], tmp)


def policy_opa(policy_text: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """Body of a module fixture: OPA with `policy_text` compiled into its bundle, stopped afterwards."""
    tmp = tmp_path_factory.mktemp("opa")
    policy = tmp / "policy.yaml"
    policy.write_text(policy_text)
    server = start_policy_opa(policy, tmp)
    try:
        yield server
    finally:
        server.stop()


def flushed_redis_url(server: RedisServer, db: int) -> str:
    """A URL of database `db` of the session's Redis, emptied (each test module owns one db)."""
    url = f"redis://127.0.0.1:{server.port}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


class HardenedTestServer(TestServer):
    """The app served the way `hexarch serve` serves it (sidecar/http_server.py)."""

    def __init__(self, app: web.Application, hardening: HardeningSettings, **kw: Any) -> None:
        super().__init__(app, **kw)
        self._hardening = hardening

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return HardenedRunner(self.app, self._hardening, **kwargs)


@dataclass
class Harness:
    sidecar: TestServer
    demo: TestServer
    settings: Settings
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.sidecar.make_url(path))


@contextlib.asynccontextmanager
async def demo_server(**kw: object) -> AsyncIterator[TestServer]:
    server = TestServer(create_demo_app(DemoSettings(**kw)), host="127.0.0.1")  # type: ignore[arg-type]
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def harness(
    config_text: str,
    tmp: Path,
    opa: OpaServer | None,
    redis_url: str,
    demo: TestServer,
    env: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> AsyncIterator[Harness]:
    """The sidecar for `config_text` (its tinyllama upstream pointed at `demo`) against a running OPA."""
    config = tmp / "hexarch.yaml"
    config.write_text(with_upstream(config_text, str(demo.make_url("")).rstrip("/")))
    all_overrides = {"HEXARCH_REDIS_URL": redis_url}
    if opa is not None:
        all_overrides["HEXARCH_OPA_URL"] = opa.url
    all_overrides.update(overrides or {})
    settings = load_settings(str(config), env=env or {}, overrides=all_overrides)
    server = HardenedTestServer(create_app(settings, env=env or {}), settings.hardening, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Harness(server, demo, settings, session)
    finally:
        await session.close()
        await server.close()


@dataclass
class ServeProcess:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_serve(config: Path, tmp: Path, env: dict[str, str]) -> ServeProcess:
    """`hexarch serve --config CONFIG` as a subprocess on a free port; waits for /readyz."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    full_env = {**os.environ, **env, "HEXARCH_LISTEN": f"127.0.0.1:{port}"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config), "--log-level", "warning"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(ROOT),
        )
    server = ServeProcess(port, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hexarch serve exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/readyz", timeout=1) as resp:
            if resp.status == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"hexarch serve did not become ready: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def serving(configs: list[Path], tmp: Path, env: dict[str, str]) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    try:
        for config in configs:
            started.append(start_serve(config, tmp, env))
        yield started
    finally:
        for server in started:
            server.stop()


@contextlib.asynccontextmanager
async def serving_async(
    configs: list[Path], tmp: Path, env: dict[str, str]
) -> AsyncIterator[list[ServeProcess]]:
    """`serving` for async tests: the processes start and stop in a worker thread, off the event loop."""
    loop = asyncio.get_running_loop()
    cm = serving(configs, tmp, env)
    servers = await loop.run_in_executor(None, cm.__enter__)
    try:
        yield servers
    finally:
        await loop.run_in_executor(None, cm.__exit__, None, None, None)
