"""Shared fixtures: real redis-server and opa binaries/processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import ROOT, RedisServer, find_binary, start_redis

EXAMPLE_POLICY = ROOT / "examples" / "hexarch.yaml"


@pytest.fixture(scope="session")
def opa_bin() -> str:
    return find_binary("opa", "HEXARCH_OPA")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves by key prefix or FLUSHDB."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def example_policy() -> Path:
    return EXAMPLE_POLICY
