"""The hostile-input suite: thousands of generated requests against `hexarch serve` over raw sockets.

Malformed and deeply nested JSON, random bytes, Content-Encodings (garbage, truncated, unsupported),
request smuggling shapes, path traversal in route placeholders, huge bodies, every route and method.
For every answer: no 5xx, every 4xx the sidecar makes is in the DESIGN.md error shape, and the Redis
counters hold exactly the requests that were admitted (answers carrying X-RateLimit-* headers):
refused requests change nothing. Hypothesis runs derandomized, so the suite is the same every run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sidecar.app_support import ServeProcess, flushed_redis_url, policy_opa, start_serve
from tests.support.servers import ROOT, OpaServer, RedisServer, free_port, terminate

DB = 13
MAX_BODY = 65536
POLICY = """
version: 1
tinyllama:
  base_url: http://127.0.0.1:{demo_port}
  api: ollama
  model: tinyllama
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_hour: 1000000
sidecar:
  max_body_bytes: 65536
  anonymous:
    enabled: true
    id: guest
  hardening:
    max_json_depth: 16
    max_json_keys: 2000
  routes:
    - path: /conv/{cid}
      api: json
      resource: tinyllama
      upstream_path: /api/{cid}
"""
pytestmark = pytest.mark.slow
ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/v1/messages"),
    ("POST", "/conv/chat"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/nowhere"),
    ("DELETE", "/api/chat"),
]
SETTINGS = settings(
    max_examples=520,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Tally:
    admitted: int = 0
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Stack:
    serve: ServeProcess
    redis_url: str
    tally: Tally


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile")
    demo_port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "demo-model", "--port", str(demo_port)],
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{demo_port}/health", timeout=1).close()
                break
            time.sleep(0.1)
        text = POLICY.replace("{demo_port}", str(demo_port))
        opa_gen = policy_opa(text, tmp_path_factory)
        opa: OpaServer = next(opa_gen)
        try:
            config = tmp / "hexarch.yaml"
            config.write_text(text)
            url = flushed_redis_url(redis_server, DB)
            serve = start_serve(
                config,
                tmp,
                {"HEXARCH_OPA_URL": opa.url, "HEXARCH_REDIS_URL": url, "HEXARCH_LOG_DECISIONS": "false"},
            )
            try:
                yield Stack(serve, url, Tally())
            finally:
                serve.stop()
                log = serve.log.read_text()
                assert "Traceback" not in log, log[-3000:]
        finally:
            with contextlib.suppress(StopIteration):
                next(opa_gen)
    finally:
        terminate(demo)


def _exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            chunks.append(more)
            if _complete(b"".join(chunks)):
                break  # the first answer is whole: no need to wait for a kept-alive connection to close
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1."):
        return 0, {}, reply  # closed without an answer
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _complete(reply: bytes) -> bool:
    """The first response in `reply` has all of its body (by Content-Length, or a chunked end)."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding") == b"chunked":
        return b"0\r\n\r\n" in body
    length = fields.get(b"content-length")
    return length is not None and length.isdigit() and len(body) >= int(length)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def _request(method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    hdrs = dict(headers or {})
    if body is not None and "Transfer-Encoding" not in hdrs:
        hdrs.setdefault("Content-Length", str(len(body)))
    hdrs.setdefault("Content-Type", "application/json")
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")


def _check(stack: Stack, data: bytes, method: str = "POST", may_close: bool = False) -> None:
    t0 = time.perf_counter()
    status, headers, body = _exchange(stack.serve.port, data)
    stack.tally.seconds += time.perf_counter() - t0
    stack.tally.sent += 1
    stack.tally.statuses[status] = stack.tally.statuses.get(status, 0) + 1
    assert status != 0 or may_close, ("closed without an answer", data[:300])
    assert status < 500, (status, body[:400], data[:300])
    if "x-ratelimit-limit" in headers:
        stack.tally.admitted += 1
    if 400 <= status < 500 and method != "HEAD" and "x-ratelimit-limit" not in headers:
        doc = orjson.loads(body)
        err = doc["error"]
        assert isinstance(err["message"], str) and err["type"] and err["code"], doc


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["tinyllama", "gpt-4o", ""]) | json_values},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]), "content": json_values}),
            max_size=3,
        )
        | json_values,
        "max_tokens": st.integers(-5, 10**6) | json_values,
        "temperature": st.floats(-1, 3, allow_nan=False) | json_values,
        "stream": st.booleans() | json_values,
        "options": json_values,
        "extra": json_values,
        "deep": st.tuples(st.integers(10, 400), st.sampled_from(["list", "dict"])),
    },
)


@SETTINGS
@given(route=st.sampled_from(ROUTES[:7]), body=chat_bodies)
def test_generated_json_bodies(stack: Stack, route: tuple[str, str], body: dict[str, Any]) -> None:
    deep = body.pop("deep", None)
    raw = json.dumps(body).encode()  # json: integers past 64 bits too
    if deep is not None:  # deeper than orjson (or any JSON encoder) will write: built by hand
        depth, kind = deep
        opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
        nested = opener * depth + '"x"' + closer * depth
        raw = (
            raw[:-1]
            + (b"," if body else b"")
            + f'"messages":[{{"role":"user","content":{nested}}}]}}'.encode()
        )
    _check(stack, _request(route[0], route[1], raw))


@SETTINGS
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=300))
def test_random_bytes_as_bodies(stack: Stack, route: tuple[str, str], raw: bytes) -> None:
    _check(stack, _request(route[0], route[1], raw), route[0])


ENCODINGS = ["gzip", "deflate", "br", "zstd", "identity", "gzip, gzip", "x-unknown", "GZIP"]


@SETTINGS
@given(
    encoding=st.sampled_from(ENCODINGS),
    how=st.sampled_from(["garbage", "valid", "truncated"]),
    payload=st.binary(max_size=200),
)
def test_content_encodings(stack: Stack, encoding: str, how: str, payload: bytes) -> None:
    doc = orjson.dumps({"model": "tinyllama", "messages": [{"role": "user", "content": payload.hex()}]})
    if how == "garbage":
        data = payload
    elif encoding.lower().startswith("gzip"):
        data = gzip.compress(doc)
    elif encoding == "deflate":
        data = zlib.compress(doc)
    else:
        data = doc
    if how == "truncated":
        data = data[: len(data) // 2]
    _check(stack, _request("POST", "/api/chat", data, {"Content-Encoding": encoding}))


TRAVERSALS = [
    "%2e%2e",
    "%2E%2E",
    "..",
    ".",
    "%2e",
    "a%2Fb",
    "%00",
    "%ff",
    "..%2f..",
    "%252e%252e",
    "~",
    "a b",
]


@SETTINGS
@given(
    segment=st.sampled_from(TRAVERSALS)
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
)
def test_route_placeholders(stack: Stack, segment: str) -> None:
    path = "/conv/" + segment.replace(" ", "%20").replace("#", "%23").replace("?", "%3F")
    _check(stack, _request("POST", path, b'{"model":"tinyllama"}'))


SMUGGLING = [
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n{}{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\n Content-Length: 2\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/chat HTTP/1.0\r\nContent-Length: 999999999999\r\n\r\n{}",
    b"GET /healthz HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /" + b"%2e%2e/" * 50 + b"metrics HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("data", SMUGGLING, ids=range(len(SMUGGLING)))
def test_smuggling_and_malformed_requests(stack: Stack, data: bytes) -> None:
    _check(stack, data, may_close=True)  # a TLS hello or a broken stream may just be closed


def test_huge_bodies_are_413(stack: Stack) -> None:
    big = orjson.dumps(
        {"model": "tinyllama", "messages": [{"role": "user", "content": "x" * (MAX_BODY * 2)}]}
    )
    status, _, body = _exchange(stack.serve.port, _request("POST", "/api/chat", big))
    assert status == 413, body[:200]
    assert orjson.loads(body)["error"]["code"] == "payload_too_large"
    stack.tally.sent += 1


def test_zz_counters_hold_exactly_the_admitted_requests(stack: Stack) -> None:
    """Runs last in this module: after thousands of hostile requests, Redis counted exactly those
    that were admitted (answers with X-RateLimit-* headers); every refused one left no trace."""
    assert stack.tally.sent > 2000, stack.tally
    client = redis.Redis.from_url(stack.redis_url)
    counted = 0
    for _ in range(100):  # settlements run after the reply: let them finish
        counted = sum(int(client.hget(k, "sum") or 0) for k in client.keys("hexarch:*rate_limit*"))
        if counted == stack.tally.admitted:
            break
        time.sleep(0.05)
    assert counted == stack.tally.admitted, (counted, stack.tally)
    assert not client.keys("hexarch:*:rsv:*")  # no reservation left unsettled or unrefunded
