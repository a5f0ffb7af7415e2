"""A running stack for the SDK and API tests: real redis-server, real OPA with the example policy,
the demo model and TWO `hexarch serve` processes sharing them (every figure must hold across both)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.sidecar.app_support import (
    ALICE_KEY,
    OPS_KEY,
    ServeProcess,
    example_policies,
    example_sidecar_block,
    flushed_redis_url,
    serving,
    start_policy_opa,
    with_upstream,
)
from tests.support.servers import ROOT, RedisServer, free_port, terminate

RATE_PER_MINUTE = 6  # the test policy's rate_limit: N per minute on tinyllama


@dataclass
class Stack:
    sidecars: list[ServeProcess]
    demo_url: str
    redis_url: str
    config: Path
    opa_url: str

    @property
    def url(self) -> str:
        return self.sidecars[0].url

    def flush(self) -> None:
        redis.Redis.from_url(self.redis_url).flushdb()


def policy_text(demo_url: str) -> str:
    text = example_policies().replace("requests_per_minute: 30", f"requests_per_minute: {RATE_PER_MINUTE}")
    return with_upstream(text + example_sidecar_block(), demo_url)


@contextlib.contextmanager
def running_stack(redis_server: RedisServer, db: int, tmp: Path) -> Iterator[Stack]:
    redis_url = flushed_redis_url(redis_server, db)
    port = free_port()
    log = (tmp / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "demo-model", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(ROOT),
    )
    demo_url = f"http://127.0.0.1:{port}"
    opa = None
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{demo_url}/health", timeout=1):
                break
            if time.monotonic() > deadline or demo.poll() is not None:
                raise RuntimeError("the demo model did not start")
            time.sleep(0.1)
        config = tmp / "hexarch.yaml"
        config.write_text(policy_text(demo_url))
        opa = start_policy_opa(config, tmp)
        env = {"HEXARCH_OPA_URL": opa.url, "HEXARCH_REDIS_URL": redis_url, "HEXARCH_LOG_DECISIONS": "false"}
        with serving([config, config], tmp, env) as sidecars:
            yield Stack(sidecars, demo_url, redis_url, config, opa.url)
    finally:
        if opa is not None:
            opa.stop()
        terminate(demo)
        log.close()


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """HEXARCH_URL / HEXARCH_API_KEY for code that reads them, as the seed guide's code does."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = ["ALICE_KEY", "OPS_KEY", "RATE_PER_MINUTE", "Stack", "environ", "running_stack"]
