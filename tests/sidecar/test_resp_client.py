"""The counters' own Redis client against a real redis-server: ACL users, databases, unix sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar.counters import Counters, Usage
from sidecar.errors import CounterStoreError
from sidecar.redis_client import create_redis
from sidecar.resp_client import RespClient
from tests.sidecar.counter_support import budget, rate, subject
from tests.support.servers import RedisServer, start_redis


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    sock = tmp_path_factory.mktemp("redis") / "redis.sock"
    acl = ["--user", "hexarch", "on", ">s3cret", "~*", "&*", "+@all"]
    server = start_redis(extra=[*acl, "--unixsocket", str(sock), "--unixsocketperm", "700"])
    try:
        yield server, sock
    finally:
        server.stop()


async def _admit_and_settle(url: str) -> str:
    """Admit and settle one request through `url`; the budget key it wrote."""
    store = Counters(create_redis(url))
    try:
        await store.load_scripts()
        subj = subject()
        adm = await store.admit("r1", [rate(subj, 10), budget(subj, 1000, 100)])
        assert adm.admitted
        await store.settle(adm, Usage(0, 0, 42))
        return subj
    finally:
        await store.close()


def _budget_total(server: RedisServer, db: int, subj: str) -> int:
    client = redis.Redis(port=server.port, db=db, username="hexarch", password="s3cret")
    keys = [k for k in client.keys(f"hexarch:{{{subj}}}:*") if b":rsv:" not in k and b":budget/" in k]
    return sum(int(client.get(k) or 0) for k in keys)


async def test_acl_user_and_database_over_tcp(acl_redis: tuple[RedisServer, Path]) -> None:
    server, _ = acl_redis
    subj = await _admit_and_settle(f"redis://hexarch:s3cret@127.0.0.1:{server.port}/3")
    assert _budget_total(server, 3, subj) == 42
    assert _budget_total(server, 0, subj) == 0


async def test_unix_socket_with_password_and_database(acl_redis: tuple[RedisServer, Path]) -> None:
    server, sock = acl_redis
    subj = await _admit_and_settle(f"unix://hexarch:s3cret@{sock}?db=2")
    assert _budget_total(server, 2, subj) == 42


async def test_wrong_password_is_a_counter_store_error(acl_redis: tuple[RedisServer, Path]) -> None:
    server, _ = acl_redis
    store = Counters(create_redis(f"redis://hexarch:wrong@127.0.0.1:{server.port}/0"))
    try:
        with pytest.raises(CounterStoreError):
            await store.admit("r1", [rate(subject(), 10)])
    finally:
        await store.close()


def test_tls_stays_with_redis_py() -> None:
    assert RespClient.for_client(create_redis("rediss://127.0.0.1:6380/0")) is None  # type: ignore[arg-type]
    assert RespClient.for_client(create_redis("redis://127.0.0.1:6380/0")) is not None  # type: ignore[arg-type]
