"""The seed's sections do what their names say: a `tinyllama:` upstream written the seed's way, `opa:`
timeouts and health checks, the TinyLlama app's flat body, and every principal field and
`resource_owner` as OPA sees them.

Real OPA (the file compiled into a bundle), real Redis, the sidecar app in process. The upstream is a
recording fake of the TinyLlama app (`POST /api/chat` -> `{"response": ...}`). A custom Rego policy
(`echo`) refuses requests whose path starts with /echo or whose body says `"echo": true`, with the
input document's fields in its message, so the tests read what OPA was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.settings import load_settings
from sidecar.stack import bundle_polling, opa_config
from tests.sidecar.app_support import Harness, flushed_redis_url, harness, start_policy_opa
from tests.support.servers import OpaServer, RedisServer, free_port

KIM_KEY = "kim-secret-key"
ECHO_REGO = """package hexarch.custom.echo

import rego.v1

violations contains {"code": "echo", "status": 409, "message": json.marshal(seen)} if {
	echo_wanted
	seen := {
		"principal": input.principal,
		"resource_owner": object.get(input, "resource_owner", "ABSENT"),
		"model": input.model,
		"params": input.params,
		"estimate": input.estimate,
		"resources": input.resources,
	}
}

echo_wanted if input.params.echo == true

echo_wanted if startswith(input.request.path, "/echo")
"""
CONFIG = f"""
version: 1
custom:
  - id: echo
    file: echo.rego
policies:
  - id: token_window
    rules:
      - resource: tinyllama
        max_tokens_per_hour: 1500
  - id: lengths
    rules:
      - parameter: message
        max_length: 10000
tinyllama:
  api_url: http://127.0.0.1:1          # what clients outside know; unreachable here
  internal_url: http://127.0.0.1:1     # replaced by the recorder's address
  default_model: tinyllama
  default_temperature: 0.7
  default_max_tokens: 64
  timeout_seconds: 5
  retry_attempts: 2
  retry_delay_seconds: 0.3
opa:
  timeout_seconds: 5
sidecar:
  serve_bundle: false
  anonymous: {{enabled: true, id: guest, team: visitors, roles: [reader], tier: free}}
  trusted_headers: {{enabled: true}}
  api_keys:
    - {{id: kim, sha256: {hashlib.sha256(KIM_KEY.encode()).hexdigest()}, team: ml, roles: [dev], tier: pro}}
  routes:
    - path: /echo/users/{{owner}}/files
      methods: [GET]
      api: none
      resource: files
    - path: /echo/models
      methods: [GET]
      api: none
      model: phi3
    - path: /api/chat
      api: ollama.chat
      resource: tinyllama_chat
"""
DB = 9


@dataclass
class Recorder:
    """The TinyLlama app, recorded: each call's path and JSON body; the next `fail` calls get 503."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # token counts added to the reply

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.body_exists else None
        self.calls.append((request.path, body))
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"response": "Hello from TinyLlama", **self.counts})


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("seed")
    (tmp / "echo.rego").write_text(ECHO_REGO)
    (tmp / "hexarch.yaml").write_text(CONFIG)
    return tmp


@pytest.fixture(scope="module")
def opa(policy_dir: Path) -> Iterator[OpaServer]:
    server = start_policy_opa(policy_dir / "hexarch.yaml", policy_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


@contextlib.asynccontextmanager
async def recorder_server() -> AsyncIterator[tuple[TestServer, Recorder]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, recorder
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def seed_sidecar(
    opa: OpaServer, redis_url: str, tmp: Path, config: str = CONFIG, **overrides: str
) -> AsyncIterator[tuple[Harness, Recorder]]:
    tmp.mkdir(parents=True, exist_ok=True)
    async with recorder_server() as (upstream, recorder):
        text = config.replace(
            "internal_url: http://127.0.0.1:1", f"internal_url: {str(upstream.make_url('')).rstrip('/')}"
        )
        async with harness(text, tmp, opa, redis_url, upstream, overrides=overrides) as h:
            yield h, recorder


@pytest.fixture
async def seed(opa: OpaServer, redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, Recorder]]:
    async with seed_sidecar(opa, redis_url, tmp_path) as pair:
        yield pair


async def call(h: Harness, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with h.session.request(method, h.url(path), **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def echoed(h: Harness, method: str, path: str, **kw: Any) -> dict[str, Any]:
    """What OPA saw: the echo policy's refusal carries the input document's fields."""
    status, doc = await call(h, method, path, **kw)
    assert status == 409, doc
    assert doc["error"]["code"] == "echo"
    seen: dict[str, Any] = json.loads(doc["error"]["message"])
    return seen


# --- the seed's upstream section --------------------------------------------------------------------


async def test_seed_upstream_prefers_internal_url_and_fills_defaults(seed: tuple[Harness, Recorder]) -> None:
    h, recorder = seed
    # The TinyLlama app's own flat body, with none of the defaults set: api_url is unreachable, so
    # the reply proves the call went to internal_url.
    status, doc = await call(h, "POST", "/api/chat", json={"message": "Hi", "system": "Be brief."})
    assert status == 200, doc
    assert doc == {"response": "Hello from TinyLlama"}
    path, body = recorder.calls[-1]
    assert path == "/api/chat"
    assert body == {
        "message": "Hi",
        "system": "Be brief.",
        "model": "tinyllama",  # default_model
        "temperature": 0.7,  # default_temperature
        "num_predict": 64,  # default_max_tokens, where the flat body keeps its parameters
    }
    # What a request sets is left as it is.
    mine = {"message": "Hi", "model": "tinyllama", "temperature": 0.2, "num_predict": 10}
    status, _ = await call(h, "POST", "/api/chat", json=mine)
    assert status == 200
    assert recorder.calls[-1][1] == mine
    # An OpenAI chat gets the defaults in its own spelling; the policy judges the filled values.
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    status, _ = await call(h, "POST", "/v1/chat/completions", json=chat)
    assert status == 200
    sent = recorder.calls[-1][1]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("tinyllama", 0.7, 64)
    seen = await echoed(h, "POST", "/v1/chat/completions", json={**chat, "echo": True})
    assert seen["model"] == "tinyllama"
    assert seen["params"]["temperature"] == 0.7 and seen["estimate"]["max_output_tokens"] == 64


async def test_retry_attempts_and_delay(seed: tuple[Harness, Recorder]) -> None:
    h, recorder = seed
    recorder.fail = 2  # two 503s, then an answer: retry_attempts 2 gets there
    started = time.monotonic()
    status, doc = await call(h, "POST", "/api/chat", json={"message": "Hi"})
    waited = time.monotonic() - started
    assert status == 200, doc
    assert len(recorder.calls) == 3
    assert waited >= 0.3 + 0.6  # retry_delay_seconds, then doubled: a lower bound sleep guarantees
    recorder.fail = 3  # one more failure than the attempts allow
    status, doc = await call(h, "POST", "/api/chat", json={"message": "Hi"})
    assert status == 502 and doc["error"]["code"] == "upstream_unavailable"
    assert len(recorder.calls) == 6


async def test_connect_timeout_seconds_bounds_the_connect(
    opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    # A listening socket whose accept queue is full: a new connection never completes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    config = CONFIG.replace(
        "timeout_seconds: 5\n  retry", "timeout_seconds: 120\n  connect_timeout_seconds: 0.2\n  retry"
    )
    config = config.replace("retry_attempts: 2", "retry_attempts: 0")
    stuck = f"http://127.0.0.1:{port}"
    try:
        async with seed_sidecar(opa, redis_url, tmp_path, config, HEXARCH_UPSTREAM_URL=stuck) as (h, _):
            assert h.settings.upstreams["tinyllama"].connect_timeout_seconds == 0.2
            # 120 s is the read timeout: finishing at all (the guard is 30 s) is the connect timeout.
            status, doc = await asyncio.wait_for(call(h, "POST", "/api/chat", json={"message": "Hi"}), 30)
            assert status == 504 and doc["error"]["code"] == "upstream_timeout"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --- the TinyLlama app's flat body ------------------------------------------------------------------


async def test_flat_message_is_counted_and_refused_by_a_token_window(seed: tuple[Harness, Recorder]) -> None:
    h, recorder = seed
    long = "x" * 8000
    seen = await echoed(h, "POST", "/api/chat", json={"message": long, "echo": True})
    assert seen["estimate"]["prompt_tokens"] == 2000  # ceil(8000 / 4), no longer 0
    assert seen["params"]["message"] == long
    status, doc = await call(h, "POST", "/api/chat", json={"message": long})
    assert status == 400, doc
    error = doc["error"]
    assert error["code"] == "max_tokens_exceeded" and error["policy"] == "token_window"
    assert error["details"]["cost"] == 2000 + 64 and error["details"]["limit"] == 1500
    assert recorder.calls == []  # refused before the upstream
    # `parameter: message` with max_length bounds the flat body's message.
    status, doc = await call(h, "POST", "/api/chat", json={"message": "y" * 10001})
    assert status == 400 and doc["error"]["code"] == "invalid_parameter"
    assert doc["error"]["policy"] == "lengths" and doc["error"]["param"] == "message"
    status, _ = await call(h, "POST", "/api/chat", json={"message": "short"})
    assert status == 200


async def test_flat_reply_counts_are_settled(
    capsys: pytest.CaptureFixture[str], seed: tuple[Harness, Recorder]
) -> None:  # capsys first: the decision log takes stdout when the sidecar starts
    h, recorder = seed
    settled: dict[str, Any] = {}

    async def decision_line(decision_id: str) -> dict[str, Any]:
        # The decision log (stdout here) has the line once the usage is settled.
        for _ in range(200):
            for line in capsys.readouterr().out.splitlines():
                record = json.loads(line)
                settled[record["decision_id"]] = record
            if decision_id in settled:
                return settled[decision_id]
            await asyncio.sleep(0.025)
        raise AssertionError(f"no decision log line for {decision_id}")

    recorder.counts = {"prompt_tokens": 5, "completion_tokens": 7}
    async with h.session.post(h.url("/api/chat"), json={"message": "Hi"}) as resp:
        assert resp.status == 200
        counted = await decision_line(resp.headers["X-Hexarch-Decision-Id"])
    assert (counted["prompt_tokens"], counted["completion_tokens"]) == (5, 7)
    recorder.counts = {}  # the app's plain {"response": ...}: the estimate and the reservation stand
    async with h.session.post(h.url("/api/chat"), json={"message": "Hi"}) as resp:
        assert resp.status == 200
        reserved = await decision_line(resp.headers["X-Hexarch-Decision-Id"])
    assert (reserved["prompt_tokens"], reserved["completion_tokens"]) == (1, 64)


# --- principal fields and resource_owner, as OPA sees them -------------------------------------------


async def test_anonymous_principal_fields_reach_the_policy(seed: tuple[Harness, Recorder]) -> None:
    h, _ = seed
    seen = await echoed(h, "GET", "/echo/models")
    assert seen["principal"] == {
        "id": "guest",
        "team": "visitors",
        "roles": ["reader"],
        "tier": "free",
        "authenticated": False,
    }


async def test_api_key_tier_and_team_reach_the_policy(seed: tuple[Harness, Recorder]) -> None:
    h, _ = seed
    seen = await echoed(h, "GET", "/echo/models", headers={"Authorization": f"Bearer {KIM_KEY}"})
    assert seen["principal"] == {
        "id": "kim",
        "team": "ml",
        "roles": ["dev"],
        "tier": "pro",
        "authenticated": True,
    }


async def test_trusted_header_fields_reach_the_policy(seed: tuple[Harness, Recorder]) -> None:
    h, _ = seed
    headers = {
        "X-Hexarch-User": "bob",
        "X-Hexarch-Team": "ops",
        "X-Hexarch-Roles": "admin, dev",
        "X-Hexarch-Tier": "gold",
    }
    seen = await echoed(h, "GET", "/echo/models", headers=headers)
    assert seen["principal"] == {
        "id": "bob",
        "team": "ops",
        "roles": ["admin", "dev"],
        "tier": "gold",
        "authenticated": True,
    }


async def test_resource_owner_from_the_trusted_header_and_the_route(
    seed: tuple[Harness, Recorder], opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    h, _ = seed
    # The route's {owner} placeholder names the owner of the resource in the path.
    seen = await echoed(h, "GET", "/echo/users/alice/files", headers={"X-Hexarch-User": "bob"})
    assert (seen["resource_owner"], seen["principal"]["id"]) == ("alice", "bob")
    # Else the trusted header, sent by the app next door.
    owner = {"X-Hexarch-User": "bob", "X-Hexarch-Resource-Owner": "carol"}
    seen = await echoed(h, "POST", "/api/chat", json={"message": "Hi", "echo": True}, headers=owner)
    assert seen["resource_owner"] == "carol"
    # Named by neither: null (never absent, never taken from the body).
    seen = await echoed(h, "POST", "/api/chat", json={"message": "Hi", "echo": True, "owner": "bob"})
    assert seen["resource_owner"] is None
    # With trusted headers off, the header is not believed.
    async with seed_sidecar(opa, redis_url, tmp_path / "off", HEXARCH_TRUSTED_HEADERS="false") as (off, _):
        seen = await echoed(off, "POST", "/api/chat", json={"message": "Hi", "echo": True}, headers=owner)
        assert seen["resource_owner"] is None and seen["principal"]["id"] == "guest"


async def test_route_model_names_the_model_of_bodyless_routes(
    seed: tuple[Harness, Recorder], tmp_path: Path
) -> None:
    h, _ = seed
    assert (await echoed(h, "GET", "/echo/models"))["model"] == "phi3"  # the route's model
    assert (await echoed(h, "GET", "/echo/users/x/files"))["model"] == "tinyllama"  # the upstream's
    # `model` and the seed's `default_model` are one setting.
    plain = _settings(tmp_path, "tinyllama:\n  base_url: http://h:1\n  model: m\n")
    seedish = _settings(tmp_path, "tinyllama:\n  api_url: http://h:1\n  default_model: m\n")
    assert plain.upstreams["tinyllama"].model == seedish.upstreams["tinyllama"].model == "m"


async def test_builtin_routes_false_leaves_only_the_configured_routes(
    opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    async with seed_sidecar(opa, redis_url, tmp_path, HEXARCH_BUILTIN_ROUTES="false") as (h, _):
        status, _ = await call(h, "POST", "/v1/chat/completions", json={"messages": []})
        assert status == 404
        status, _ = await call(h, "POST", "/api/chat", json={"message": "Hi"})
        assert status == 200  # a configured route


# --- opa: ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def slow_opa(opa: OpaServer, delay: float) -> AsyncIterator[str]:
    """The real OPA behind a proxy that holds every decision for `delay` seconds."""

    async def forward(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, f"{opa.url}{request.path_qs}", data=await request.read()) as resp,
        ):
            return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_opa_timeout_seconds_is_the_decision_timeout(
    opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    async with slow_opa(opa, 0.5) as url:
        async with seed_sidecar(opa, redis_url, tmp_path / "patient", HEXARCH_OPA_URL=url) as (h, _):
            assert h.settings.opa_timeout_ms == 5000
            status, _ = await call(h, "POST", "/api/chat", json={"message": "Hi"})
            assert status == 200
        hasty = CONFIG.replace("opa:\n  timeout_seconds: 5", "opa:\n  timeout_seconds: 0.1")
        async with seed_sidecar(opa, redis_url, tmp_path / "hasty", hasty, HEXARCH_OPA_URL=url) as (h, _):
            status, doc = await call(h, "POST", "/api/chat", json={"message": "Hi"})
            assert status == 503 and doc["error"]["code"] == "policy_engine_unavailable"


async def test_opa_decision_path_is_the_document_queried(
    opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    elsewhere = CONFIG.replace("opa:\n", "opa:\n  decision_path: hexarch/nothing_here\n")
    async with seed_sidecar(opa, redis_url, tmp_path, elsewhere) as (h, _):
        status, doc = await call(h, "POST", "/api/chat", json={"message": "Hi"})
        assert status == 503 and doc["error"]["code"] == "policy_engine_unavailable"


async def test_health_check_interval_caches_a_healthy_opa(
    policy_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    own = start_policy_opa(policy_dir / "hexarch.yaml", tmp_path)
    try:
        cached = CONFIG.replace("opa:\n", "opa:\n  health_check_interval: 3600\n")
        async with (
            seed_sidecar(own, redis_url, tmp_path / "cached", cached) as (trusting, _),
            seed_sidecar(own, redis_url, tmp_path / "every") as (asking, _),
        ):
            for h in (trusting, asking):
                status, doc = await call(h, "GET", "/readyz")
                assert status == 200, doc
            own.stop()
            status, doc = await call(trusting, "GET", "/readyz")
            assert status == 200 and doc["checks"]["opa"] is True  # not asked again within the hour
            status, doc = await call(asking, "GET", "/readyz")
            assert status == 503 and doc["checks"]["opa"] is False  # default 0: asked on every probe
    finally:
        own.stop()


def test_bundle_polling_seconds_sets_the_opa_polling_of_up(tmp_path: Path) -> None:
    policy = tmp_path / "hexarch.yaml"
    policy.write_text("opa:\n  bundle_polling_seconds: 7\npolicies: []\n")
    assert load_settings(str(policy), env={}).opa_bundle_polling_seconds == 7
    assert bundle_polling(policy) == (7, 7)
    assert "min_delay_seconds: 7\n      max_delay_seconds: 7" in opa_config(
        "http://s", *bundle_polling(policy)
    )
    policy.write_text("policies: []\n")
    assert bundle_polling(policy) == (1, 2)  # hexarch up's own default: edits are live within seconds


def _settings(tmp: Path, text: str) -> Any:
    path = tmp / f"settings-{free_port()}.yaml"
    path.write_text(text)
    return load_settings(str(path), env={})
