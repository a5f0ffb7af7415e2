"""Hostile input at the HTTP edge: bounded JSON, Content-Encoding, malformed HTTP, path traversal,
identity headers, the admin endpoints, principal id length, slowloris and connection floods.

Every refusal is a 4xx in the DESIGN.md error shape, nothing is a 5xx, and a refused request leaves
the counters as they were."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.sidecar.app_support import Harness, demo_server, flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer, free_port

DB = 14
POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
echo:
  base_url: http://127.0.0.1:{echo_port}
  api: openai
  model: tinyllama
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 4
sidecar:
  anonymous:
    enabled: true
    id: guest
  hardening:
    max_json_depth: 16
    max_json_keys: 500
    header_read_timeout_seconds: 1
    max_principal_id_bytes: 64
  routes:
    - path: /conv/{cid}
      api: json
      resource: tinyllama
      upstream: echo
      upstream_path: /v2/conversations/{cid}
    - path: /echo
      api: json
      resource: tinyllama
      upstream: echo
"""
CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": False}


class Echo:
    """A stand-in model provider that records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        return web.json_response({"ok": True})


@pytest.fixture(scope="module")
def echo_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def policy(echo_port: int) -> str:
    return POLICY.replace("{echo_port}", str(echo_port))


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory, policy: str) -> Iterator[OpaServer]:
    yield from policy_opa(policy, tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@pytest.fixture
async def echo(echo_port: int) -> AsyncIterator[Echo]:
    e = Echo()
    server = TestServer(e.app, host="127.0.0.1", port=echo_port)
    await server.start_server()
    try:
        yield e
    finally:
        await server.close()


@pytest.fixture
async def h(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str, echo: Echo
) -> AsyncIterator[Harness]:
    async with demo_server() as demo, harness(policy, tmp_path, opa, redis_url, demo) as h:
        yield h


def _error_shaped(status: int, body: bytes) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body[:300])
    doc = orjson.loads(body)
    err = doc["error"]
    assert {"message", "type", "code"} <= set(err)
    return err  # type: ignore[no-any-return]


async def _raw(h: Harness, data: bytes, read_timeout: float = 5) -> tuple[int, bytes]:
    """Send raw bytes on a fresh connection; the status and body of the reply."""
    assert h.sidecar.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", h.sidecar.port)
    try:
        writer.write(data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(65536), read_timeout)
        while b"\r\n\r\n" not in reply:
            more = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not more:
                break
            reply += more
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            None,
        )
        while length is not None and len(body) < length:
            more = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not more:
                break
            body += more
        return status, body
    finally:
        writer.close()


def _post_raw(path: str, body: bytes = b"{}") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_BODIES = {
    "content": '{"model":"tinyllama","messages":[{"role":"user","content":' + _deep(300) + "}]}",
    "extra field": '{"model":"tinyllama","x":' + _deep(300) + ',"messages":[]}',
    "object nesting": '{"model":"tinyllama","x":' + '{"a":' * 300 + "1" + "}" * 300 + "}",
    "many keys": orjson.dumps({"model": "tinyllama", "x": {f"k{i}": i for i in range(2000)}}).decode(),
}


@pytest.mark.parametrize("name", list(DEEP_BODIES))
async def test_deep_or_huge_json_is_400_before_admission(h: Harness, redis_url: str, name: str) -> None:
    async with h.session.post(
        h.url("/api/chat"), data=DEEP_BODIES[name], headers={"Content-Type": "application/json"}
    ) as resp:
        err = _error_shaped(resp.status, await resp.read())
    assert resp.status == 400
    assert err["code"] in ("json_too_deep", "json_too_large")
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # nothing was admitted


@pytest.mark.parametrize(
    ("encoding", "data", "status", "code"),
    [
        ("gzip", b"garbage", 400, "invalid_content_encoding"),
        ("deflate", b"garbage", 400, "invalid_content_encoding"),
        ("gzip", gzip.compress(b"x" * 100)[:20], 400, "invalid_json"),  # truncated: decodes a prefix
        ("br", b"garbage", 415, "unsupported_content_encoding"),
        ("zstd", b"garbage", 415, "unsupported_content_encoding"),
    ],
)
async def test_bad_content_encoding_is_4xx_in_the_error_shape(
    h: Harness, encoding: str, data: bytes, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with h.session.post(
        h.url("/api/chat"),
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    ) as resp:
        err = _error_shaped(resp.status, await resp.read())
    assert resp.status == status
    assert err["code"] == code
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_good_compressed_bodies_are_decoded_and_forwarded_plain(
    h: Harness, echo: Echo, encoding: str
) -> None:
    raw = orjson.dumps({"model": "tinyllama", "q": "hi"})
    data = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    async with h.session.post(
        h.url("/echo"), data=data, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    ) as resp:
        assert resp.status == 200, await resp.text()
    _, headers = echo.seen[-1]
    assert "Content-Encoding" not in headers


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["not-http", "bad-header", "smuggling-cl-te", "huge-line", "negative-length"],
)
async def test_malformed_http_is_4xx_with_one_quiet_log_line(
    h: Harness, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await _raw(h, request_bytes)
    _error_shaped(status, body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/api/chat", "/hexarch/v1/check", "/hexarch/v1/settle"]
)
async def test_an_oversized_content_length_is_413_before_the_body_is_sent(h: Harness, path: str) -> None:
    # only the head and 2 bytes of a declared 1 GB body: the answer must not wait for the rest
    declared = h.settings.max_body_bytes * 1000
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    status, body = await _raw(h, f"{head}Content-Length: {declared}\r\n\r\n{{}}".encode())
    assert status == 413
    assert _error_shaped(status, body)["code"] == "payload_too_large"


@pytest.mark.parametrize("value", ["%2e%2e", "%2E%2E", ".", "%2e"])
async def test_route_placeholders_cannot_traverse_and_refund(h: Harness, echo: Echo, value: str) -> None:
    for _ in range(5):  # more than the 4 requests per minute: refused requests must be refunded
        status, body = await _raw(h, _post_raw(f"/conv/{value}"))
        err = _error_shaped(status, body)
        assert err["code"] == "invalid_path"
    assert echo.seen == []
    status, body = await _raw(h, _post_raw("/conv/a%2Fb"))
    assert status == 200, body
    assert echo.seen[-1][0] == "/v2/conversations/a/b" or echo.seen[-1][0].startswith("/v2/conversations/")
    for _ in range(3):
        async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
            assert resp.status == 200


async def test_identity_headers_are_not_forwarded_when_untrusted(h: Harness, echo: Echo) -> None:
    headers = {
        "X-Hexarch-User": "admin",
        "X-Hexarch-Team": "root",
        "X-Hexarch-Roles": "admin",
        "X-Other": "1",
    }
    async with h.session.post(h.url("/echo"), json={"q": 1}, headers=headers) as resp:
        assert resp.status == 200
    _, seen = echo.seen[-1]
    assert not [k for k in seen if k.lower().startswith("x-hexarch-")]
    assert seen["X-Other"] == "1"


async def test_long_trusted_principal_id_is_refused(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str, echo: Echo
) -> None:
    text = policy.replace("  anonymous:\n", "  trusted_headers:\n    enabled: true\n  anonymous:\n")
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo) as h:
        async with h.session.post(
            h.url("/api/chat"), json=CHAT, headers={"X-Hexarch-User": "u" * 65}
        ) as resp:
            err = _error_shaped(resp.status, await resp.read())
            assert err["code"] == "principal_too_long"
        async with h.session.post(
            h.url("/api/chat"), json=CHAT, headers={"X-Hexarch-User": "u" * 64}
        ) as resp:
            assert resp.status == 200
        # trusted headers on: the app next door set them, they reach the upstream
        async with h.session.post(h.url("/echo"), json={}, headers={"X-Hexarch-User": "bob"}) as resp:
            assert resp.status == 200
        assert echo.seen[-1][1]["X-Hexarch-User"] == "bob"
    assert redis.Redis.from_url(redis_url).dbsize() > 0


async def test_metrics_and_bundle_need_the_admin_key(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    text = policy.replace("  hardening:\n", "  hardening:\n    admin_key_env: HX_ADMIN\n")
    env = {"HX_ADMIN": "s3cret-admin-key"}
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo, env=env) as h:
        for path in ("/metrics", "/bundles/hexarch.tar.gz"):
            async with h.session.get(h.url(path)) as resp:
                err = _error_shaped(resp.status, await resp.read())
                assert resp.status == 401 and err["code"] == "invalid_api_key"
            async with h.session.get(h.url(path), headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with h.session.get(
                h.url(path), headers={"Authorization": "Bearer s3cret-admin-key"}
            ) as resp:
                assert resp.status == 200
        async with h.session.get(h.url("/healthz")) as resp:
            assert resp.status == 200


async def test_admin_listener_serves_metrics_and_the_main_one_does_not(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    from sidecar.admin import admin_listens
    from sidecar.http_server import HardenedRunner

    admin_port = free_port()
    text = policy.replace("  hardening:\n", f"  hardening:\n    admin_listen: 127.0.0.1:{admin_port}\n")
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo) as h:
        runner = h.sidecar.runner
        assert isinstance(runner, HardenedRunner)
        [(host, port)] = admin_listens(h.settings)
        site = web.TCPSite(runner, host, port)
        await site.start()
        async with h.session.get(h.url("/metrics")) as resp:
            assert resp.status == 404
            _error_shaped(resp.status, await resp.read())
        async with h.session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
            assert resp.status == 200
            assert "hexarch_requests_total" in await resp.text()
        async with h.session.post(f"http://127.0.0.1:{admin_port}/api/chat", json=CHAT) as resp:
            assert resp.status == 404


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except ConnectionError:
        return b""


async def test_slowloris_is_cut_and_other_clients_are_answered(h: Harness) -> None:
    """1,100 connections trickling headers: each is closed after the 1 s header read timeout, and
    a normal client is answered the whole time."""
    assert h.sidecar.port is not None
    port = h.sidecar.port
    slow = []
    for _ in range(1100):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
        slow.append((reader, writer))
    try:
        for _ in range(3):
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                assert resp.status in (200, 429)
            for _, writer in slow[:50]:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow: 1\r\n")  # keep trickling (the server may have cut it)
            await asyncio.sleep(0.2)
        # every slow connection is closed by the server (EOF), none ever got a request through
        closed = await asyncio.wait_for(
            asyncio.gather(*(_read_to_close(reader) for reader, _ in slow)), timeout=30
        )
        assert all(b"HTTP/1.1 2" not in data for data in closed)
    finally:
        for _, writer in slow:
            writer.close()


async def test_connection_flood_evicts_waiting_connections_not_clients(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    text = policy.replace("  hardening:\n", "  hardening:\n    max_connections: 100\n").replace(
        "header_read_timeout_seconds: 1", "header_read_timeout_seconds: 60"
    )
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo) as h:
        assert h.sidecar.port is not None
        idle = [await asyncio.open_connection("127.0.0.1", h.sidecar.port) for _ in range(400)]
        try:
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                assert resp.status == 200
            # the oldest idle connections were closed to stay within 100
            eofs = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in idle[:250])), timeout=10)
            assert all(data == b"" for data in eofs)
        finally:
            for _, writer in idle:
                writer.close()


async def test_distinct_subjects_per_window_are_bounded(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    text = policy.replace("  anonymous:\n", "  trusted_headers:\n    enabled: true\n  anonymous:\n").replace(
        "  hardening:\n", "  hardening:\n    max_subjects_per_window: 3\n"
    )
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo) as h:
        for user in ("u1", "u2", "u3"):
            async with h.session.post(
                h.url("/api/chat"), json=CHAT, headers={"X-Hexarch-User": user}
            ) as resp:
                assert resp.status == 200
        async with h.session.post(h.url("/api/chat"), json=CHAT, headers={"X-Hexarch-User": "u4"}) as resp:
            err = _error_shaped(resp.status, await resp.read())
        assert resp.status == 429 and err["code"] == "too_many_subjects"
        # no key for the refused id (the others' settlements and statistics may still be landing)
        stored = redis.Redis.from_url(redis_url).keys("*")
        assert stored and not [k for k in stored if b"u4" in k], stored
        async with h.session.post(h.url("/api/chat"), json=CHAT, headers={"X-Hexarch-User": "u1"}) as resp:
            assert resp.status == 200
        async with h.session.get(h.url("/metrics")) as resp:
            assert "hexarch_subjects_refused_total 1.0" in await resp.text()


def _non_loopback_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), address
    return address


async def test_metrics_answer_loopback_only_by_default(h: Harness) -> None:
    from sidecar.http_server import HardenedRunner

    runner = h.sidecar.runner
    assert isinstance(runner, HardenedRunner)
    port = free_port()
    address = _non_loopback_address()
    site = web.TCPSite(runner, address, port)
    await site.start()
    for path in ("/metrics", "/bundles/hexarch.tar.gz"):
        async with h.session.get(f"http://{address}:{port}{path}") as resp:
            err = _error_shaped(resp.status, await resp.read())
            assert resp.status == 403 and err["code"] == "admin_only"
        async with h.session.get(h.url(path)) as resp:  # loopback
            assert resp.status == 200
    async with h.session.post(f"http://{address}:{port}/api/chat", json=CHAT) as resp:
        assert resp.status == 200  # the API itself is for everyone


async def test_requests_in_flight_are_bounded(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    text = policy.replace("  hardening:\n", "  hardening:\n    max_inflight_requests: 2\n")
    # the upstream takes 3 s, longer than the 1 s header read timeout: a request being handled is
    # never cut by that timeout
    async with (
        demo_server(latency_ms=3000) as demo,
        harness(text, tmp_path, opa, redis_url, demo) as h,
    ):

        async def slow() -> int:
            async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
                await resp.read()
                return resp.status

        running = [asyncio.create_task(slow()) for _ in range(2)]
        # wait until both reached the upstream: they are in flight in the sidecar
        for _ in range(200):
            async with h.session.get(str(demo.make_url("/demo/stats"))) as resp:
                if (await resp.json()).get("total", 0) >= 2:
                    break
            await asyncio.sleep(0.02)
        async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
            body = await resp.read()
            assert resp.status == 503
            assert orjson.loads(body)["error"]["code"] == "overloaded"
            assert resp.headers["Retry-After"] == "1"
        async with h.session.get(h.url("/healthz")) as resp:
            assert resp.status == 200
        assert await asyncio.gather(*running) == [200, 200]
        async with h.session.post(h.url("/api/chat"), json=CHAT) as resp:
            assert resp.status in (200, 429)  # room again (the rate limit may speak)


async def test_idle_keepalive_connections_are_closed(
    opa: OpaServer, redis_url: str, tmp_path: Path, policy: str
) -> None:
    text = policy.replace("  hardening:\n", "  hardening:\n    keepalive_timeout_seconds: 1\n")
    async with demo_server() as demo, harness(text, tmp_path, opa, redis_url, demo) as h:
        assert h.sidecar.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", h.sidecar.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            # idle now: the server closes it after the 1 s keep-alive timeout (default 15 s)
            assert await asyncio.wait_for(_read_to_close(reader), timeout=8) == b""
        finally:
            writer.close()
