"""`/hexarch/v1/check` when OPA or Redis is down: the fail mode decides, as for proxied requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar.app_support import (
    ALICE_KEY,
    demo_server,
    example_policies,
    example_sidecar_block,
    harness,
    policy_opa,
)
from tests.support.servers import OpaServer, RedisServer, free_port

POLICY = example_policies() + example_sidecar_block()
AUTH = {"Authorization": f"Bearer {ALICE_KEY}"}
CHECK = {"policy_id": "rate_limit"}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


async def test_redis_down_fail_closed_is_503_and_fail_open_admits(opa: OpaServer, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with demo_server() as demo:
        async with harness(POLICY, tmp_path, opa, dead_redis, demo) as h:
            async with h.session.post(h.url("/hexarch/v1/check"), json=CHECK, headers=AUTH) as resp:
                assert resp.status == 503
                error = (await resp.json())["error"]
                assert error["code"] == "counter_store_unavailable" and resp.headers["Retry-After"] == "1"
            async with h.session.get(h.url("/hexarch/v1/stats"), headers=AUTH) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "counter_store_unavailable"
        overrides = {"HEXARCH_FAIL_MODE": "fail_open"}
        async with harness(POLICY, tmp_path, opa, dead_redis, demo, overrides=overrides) as h:
            async with h.session.post(h.url("/hexarch/v1/check"), json=CHECK, headers=AUTH) as resp:
                assert resp.status == 200
                reply = await resp.json()
                # admitted by the in-process stand-in: nothing to settle across processes
                assert reply["allow"] is True and reply["reservation_id"] is None
            async with h.session.get(h.url("/metrics")) as resp:
                assert 'hexarch_fail_open_total{dependency="redis"} 1.0' in await resp.text()


async def test_opa_down_fail_closed_is_503(redis_server: RedisServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with (
        demo_server() as demo,
        harness(
            POLICY,
            tmp_path,
            None,
            f"redis://127.0.0.1:{redis_server.port}/14",
            demo,
            overrides={"HEXARCH_OPA_URL": url},
        ) as h,
        h.session.post(h.url("/hexarch/v1/check"), json=CHECK, headers=AUTH) as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "policy_engine_unavailable"
