"""The decision call's own HTTP client against a real OPA: pooling, OPA dying and coming back, framing."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.errors import PolicyEngineError
from sidecar.opa_client import OpaClient
from tests.sidecar.app_support import demo_server, flushed_redis_url, harness
from tests.support.servers import OpaServer, RedisServer, find_binary, free_port, terminate, wait_for

REGO = """package hexarch

decision := {"allow": true, "limits": [], "warnings": [], "echo": object.get(input, "n", null)}
"""
POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies: []
sidecar:
  anonymous:
    enabled: true
    id: guest
"""
CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _opa_on(port: int, args: list[str], log: Path) -> OpaServer:
    cmd = [find_binary("opa", "HEXARCH_OPA"), "run", "--server", "--addr", f"127.0.0.1:{port}", *args]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    server = OpaServer(port, proc, log)
    wait_for(lambda: server.healthy(True), 20, f"opa on {port}")
    return server


@contextlib.contextmanager
def restartable_opa(args: list[str], tmp: Path) -> Iterator[list[OpaServer]]:
    """OPA on a fixed port; the list's single entry is replaced by `restart` below."""
    holder = [_opa_on(free_port(), args, tmp / "opa.log")]
    try:
        yield holder
    finally:
        terminate(holder[0].proc)


def _restart(holder: list[OpaServer], args: list[str]) -> None:
    holder[0] = _opa_on(holder[0].port, args, holder[0].log)


@pytest.fixture
def rego(tmp_path: Path) -> list[str]:
    path = tmp_path / "policy.rego"
    path.write_text(REGO)
    return [str(path)]


@pytest.fixture
async def client(tmp_path: Path, rego: list[str]) -> AsyncIterator[tuple[OpaClient, list[OpaServer]]]:
    with restartable_opa(rego, tmp_path) as holder:
        opa = OpaClient(holder[0].url, 1000)
        await opa.start()
        try:
            yield opa, holder
        finally:
            await opa.close()


async def test_decisions_over_reused_connections_and_a_burst(
    client: tuple[OpaClient, list[OpaServer]],
) -> None:
    opa, _ = client
    for n in range(5):
        assert (await opa.decide({"n": n}))["echo"] == n
    answers = await asyncio.gather(*(opa.decide({"n": n}) for n in range(200)))
    assert [a["echo"] for a in answers] == list(range(200))


async def test_opa_killed_is_an_error_and_a_restart_recovers(
    client: tuple[OpaClient, list[OpaServer]], rego: list[str]
) -> None:
    opa, holder = client
    loop = asyncio.get_running_loop()
    assert (await opa.decide({"n": 0}))["echo"] == 0  # leaves a pooled keep-alive connection
    terminate(holder[0].proc)
    await loop.run_in_executor(None, _restart, holder, rego)
    # the pooled connection is dead: the call is resent on a new one instead of failing
    assert (await opa.decide({"n": 1}))["echo"] == 1
    terminate(holder[0].proc)
    started = loop.time()
    with pytest.raises(PolicyEngineError, match="OPA unreachable"):
        await opa.decide({"n": 2})
    assert loop.time() - started < 0.5  # refused at once, not after the timeout
    await loop.run_in_executor(None, _restart, holder, rego)
    assert (await opa.decide({"n": 3}))["echo"] == 3


async def test_undefined_decision_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.rego"
    path.write_text("package other\n\nx := 1\n")
    with restartable_opa([str(path)], tmp_path) as holder:
        opa = OpaClient(holder[0].url, 1000)
        await opa.start()
        try:
            with pytest.raises(PolicyEngineError, match="undefined"):
                await opa.decide({})
        finally:
            await opa.close()


async def test_sidecar_answers_503_while_opa_is_down_and_recovers(
    tmp_path: Path, redis_server: RedisServer, rego: list[str]
) -> None:
    redis_url = flushed_redis_url(redis_server, 12)
    with restartable_opa(rego, tmp_path) as holder:
        async with demo_server() as demo, harness(POLICY, tmp_path, holder[0], redis_url, demo) as h:
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                assert resp.status == 200
            terminate(holder[0].proc)
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "policy_engine_unavailable"
            await asyncio.get_running_loop().run_in_executor(None, _restart, holder, rego)
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                assert resp.status == 200


# ---------------------------------------------------------------------------------------------
# Framing the client must read whoever the server is: a small aiohttp server stands in for OPA.


DECISION = b'{"result": {"allow": true, "padding": "' + b"x" * 5000 + b'"}}'


async def _chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(DECISION), 7):
        await resp.write(DECISION[i : i + 7])
    await resp.write_eof()
    return resp


async def _close(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=DECISION, headers={"Connection": "close"})


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1)
    return web.Response(body=DECISION)


@pytest.fixture
async def framing_server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/v1/data/chunked", _chunked)
    app.router.add_post("/v1/data/close", _close)
    app.router.add_post("/v1/data/slow", _slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_chunked_and_connection_close_replies(framing_server: TestServer) -> None:
    for path in ("chunked", "close"):
        client = OpaClient(str(framing_server.make_url("")), 2000, decision_path=path)
        await client.start()
        try:
            for _ in range(3):
                assert await client.decide({}) == {"allow": True, "padding": "x" * 5000}
        finally:
            await client.close()


async def test_timeout_is_an_error_and_a_later_call_is_answered(framing_server: TestServer) -> None:
    client = OpaClient(str(framing_server.make_url("")), 100, decision_path="slow")
    await client.start()
    try:
        with pytest.raises(PolicyEngineError, match="timed out"):
            await client.decide({})
    finally:
        await client.close()
    patient = OpaClient(str(framing_server.make_url("")), 3000, decision_path="slow")
    await patient.start()
    try:
        assert (await patient.decide({}))["allow"] is True
    finally:
        await patient.close()
