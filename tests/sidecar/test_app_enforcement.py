"""Enforcement `warn`: violations and limits become `X-Hexarch-Warning` headers, nothing blocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.sidecar.app_support import (
    Harness,
    demo_server,
    flushed_redis_url,
    harness,
    policy_opa,
)
from tests.support.servers import OpaServer, RedisServer

POLICY = """
version: 1
enforcement: warn
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: quality
    rules:
      - parameter: temperature
        max: 1.0
  - id: rate
    rules:
      - resource: tinyllama
        requests_per_minute: 1
sidecar:
  anonymous: {enabled: true, id: tester}
"""
DB = 7
CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture
async def h(opa: OpaServer, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Harness]:
    url = flushed_redis_url(redis_server, DB)
    async with demo_server() as demo, harness(POLICY, tmp_path, opa, url, demo) as h:
        yield h


async def test_warn_mode_forwards_with_warning_headers(h: Harness) -> None:
    for i in range(3):
        async with h.session.post(h.url("/api/chat"), json={**CHAT, "options": {"temperature": 1.5}}) as resp:
            assert resp.status == 200
            warnings = resp.headers.getall("X-Hexarch-Warning", [])
        assert any(w.startswith("quality: ") for w in warnings), warnings
        if i:  # over the 1-per-minute limit from the second request on: warned, not refused
            assert any(w.startswith("rate: ") for w in warnings), warnings
