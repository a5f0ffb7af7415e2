"""The Wasm decision engine decides exactly as the OPA server does.

Differential: for every policy under tests/compiler/policies (and the example), the bundle is compiled
once, built to Wasm (`opa build -t wasm -e hexarch/decision`, sidecar/wasm_engine.py) and decided
in-process, and the same inputs are decided by the real `opa eval` on the same bundle, each with the
same fixed clock. The inputs are every case of the bundle's generated tests (the request and time
each `test_*` rule decides) plus seeded random requests built from the policy's own names, numbers
and odd values. The two decision documents must be equal, field for field.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bench.floor_proxy import decision_input
from compiler.api import compile_policy
from compiler.bundle import extract_bundle
from sidecar.errors import SettingsError
from sidecar.opa_client import OpaClient
from sidecar.settings import load_settings
from sidecar.wasm_builtins import go_float, sprintf
from sidecar.wasm_engine import WasmEngine, WasmPolicy, needs_opa_server, wasm_from_bundle
from tests.conftest import EXAMPLE_POLICY
from tests.sidecar.app_support import demo_server, flushed_redis_url, harness
from tests.support.servers import ROOT, RedisServer, start_opa

POLICIES = [*sorted((ROOT / "tests" / "compiler" / "policies").rglob("*.yaml")), EXAMPLE_POLICY]
RANDOM_INPUTS = 60
_CASE = re.compile(
    r"inp := request\((\[.*?\]), (\{.*\})\)\n"
    r"\s*d := data\.hexarch\.decision with input as inp with time\.now_ns as (\d+)"
)
_BASE = re.compile(r"^base := (\{.*\})$", re.M)


def generated_cases(files: dict[str, bytes]) -> list[tuple[dict[str, Any], int]]:
    """(input, now_ns) of every generated test that decides a request built by `request(drop, fields)`."""
    cases = []
    for name, raw in sorted(files.items()):
        if not name.startswith("hexarch/generated/"):
            continue
        text = raw.decode()
        base_match = _BASE.search(text)
        if base_match is None:
            continue
        base = json.loads(base_match.group(1))
        for drop, fields, now in _CASE.findall(text):
            try:  # a few tests build fields from Rego variables (long strings): not JSON, left out
                dropped, changed = json.loads(drop), json.loads(fields)
            except json.JSONDecodeError:
                continue
            doc = {k: v for k, v in base.items() if k not in dropped}
            doc.update(changed)
            cases.append((doc, int(now)))
    return cases


def _strings(value: Any, into: set[str]) -> None:
    if isinstance(value, str):
        into.add(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            into.add(k)
            _strings(v, into)
    elif isinstance(value, list):
        for v in value:
            _strings(v, into)


def _numbers(value: Any, into: set[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        into.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, into)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, into)


def random_cases(config: dict[str, Any], seed: int, n: int) -> list[tuple[dict[str, Any], int]]:
    """Requests made of the policy's own words and numbers, near-misses and wrong types."""
    rng = random.Random(seed)
    words: set[str] = {"*", "chat", "embeddings", "tinyllama", "gpt-4o", "alice", "", 'Ünïcödé "q"\n'}
    _strings(config, words)
    numbers: set[float] = {0, 1, -1, 0.5, 2.0, 1e-7, 1e9, 123456.7}
    _numbers(config, numbers)
    word_list, number_list = sorted(words), sorted(numbers)

    def word() -> Any:
        roll = rng.random()
        if roll < 0.8:
            return rng.choice(word_list)
        if roll < 0.9:
            return rng.choice(word_list) + "x"
        return rng.choice([None, 7, True, ["a"]])

    def number() -> Any:
        roll = rng.random()
        base = rng.choice(number_list)
        if roll < 0.6:
            return base
        if roll < 0.8:
            return base + rng.choice([-1, 1, 0.5, -0.001])
        return rng.choice([None, "12", [1], {"a": 1}, True])

    def value() -> Any:
        return number() if rng.random() < 0.6 else word()

    cases = []
    for _ in range(n):
        doc: dict[str, Any] = {
            "request": {"id": "r", "method": "POST", "path": "/v1/chat/completions", "api": "openai.chat"},
            "principal": {
                "id": word(),
                "team": word(),
                "roles": [word() for _ in range(rng.randint(0, 2))],
                "tier": word(),
                "authenticated": rng.random() < 0.8,
            },
            "resources": [word() for _ in range(rng.randint(0, 3))] + ["*"],
            "operation": word(),
            "resource_type": word() if rng.random() < 0.3 else None,
            "feature": word() if rng.random() < 0.4 else None,
            "confirmed": rng.random() < 0.3,
            "model": word(),
            "params": {rng.choice(word_list): value() for _ in range(rng.randint(0, 4))}
            | {"temperature": number(), "max_tokens": number()},
            "estimate": {"prompt_tokens": rng.randint(0, 5000), "max_output_tokens": rng.randint(0, 5000)},
        }
        if rng.random() < 0.1:
            doc.pop(rng.choice(sorted(doc)))
        now = rng.randint(1_577_836_800, 1_893_456_000) * 1_000_000_000 + rng.randint(0, 999_999_999)
        cases.append((doc, now))
    return cases


def opa_decisions(bundle_dir: Path, log_dir: Path, cases: list[tuple[dict[str, Any], int]]) -> list[Any]:
    """The OPA server's decisions on the same bundle: `POST /v1/query` with the clock fixed."""
    server = start_opa(["--bundle", str(bundle_dir)], log_dir, wait_bundles=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        out = []
        for doc, now in cases:
            query = f"d := data.hexarch.decision with time.now_ns as {now}"
            conn.request("POST", "/v1/query", json.dumps({"query": query, "input": doc}))
            reply = conn.getresponse()
            body = json.loads(reply.read())
            assert reply.status == 200, body
            rows = body.get("result", [])
            out.append(rows[0]["d"] if rows else None)
        conn.close()
        return out
    finally:
        server.stop()


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_wasm_and_opa_give_identical_decisions(policy: Path, opa_bin: str, tmp_path: Path) -> None:
    compiled = compile_policy(policy)
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compiled.bundle, bundle_dir)
    module, data = wasm_from_bundle(compiled.data, opa_bin)
    wasm = WasmPolicy(module, {"hexarch": {"config": json.loads(data)}})

    cases = generated_cases(dict(compiled.bundle.files))
    if policy == EXAMPLE_POLICY:
        assert len(cases) > 50  # the parser of generated tests keeps up with the emitter
    cases += random_cases(compiled.config, seed=hash(policy.name) & 0xFFFF, n=RANDOM_INPUTS)
    expected = opa_decisions(bundle_dir, tmp_path, cases)
    assert len(expected) == len(cases)
    for (doc, now), want in zip(cases, expected, strict=True):
        raw = json.dumps(doc).encode()
        if needs_opa_server(raw):
            continue  # the Wasm engine hands these to the OPA server (see the test below)
        got = wasm.evaluate(raw, now_ns=now)
        assert got == want, (doc, now)


def test_host_sprintf_matches_go() -> None:
    """Values checked against Go's fmt on this machine (go run)."""
    floats = [1e6, 123456.7, 1234567.5, 0.0001, 0.00001, 0.7, 1e21, 2.5e-7, 100000.0]
    assert "|".join(go_float(f) for f in floats) == (
        "1e+06|123456.7|1.2345675e+06|0.0001|1e-05|0.7|1e+21|2.5e-07|100000"
    )
    assert sprintf("%q|%02d|%v", ["a\x01\u00a0é\U0001f600\t", 7, "x"]) == '"a\\x01\\u00a0é😀\\t"|07|x'
    assert sprintf("%v and %v", [["a", 1], {"k": None}]) == '["a", 1] and {"k": null}'


async def test_the_engine_reloads_when_the_bundle_revision_changes(opa_bin: str, tmp_path: Path) -> None:
    """A new revision from the bundle source is built and swapped in; a broken one keeps the last."""
    policy = tmp_path / "hexarch.yaml"
    allow_all = "version: 1\npolicies: []\n"
    deny = (
        "version: 1\npolicies:\n  - id: models\n    rules:\n"
        "      - model: [gpt-4o]\n        allowed: true\n        action: block\n"
    )
    policy.write_text(allow_all)
    current: list[tuple[str, bytes]] = []

    async def source() -> tuple[str, bytes] | None:
        return current[-1] if current else None

    engine = WasmEngine(source, opa_bin, OpaClient("http://127.0.0.1:9", 100), check_seconds=3600)
    doc = decision_input({"model": "tinyllama", "messages": []})  # what the sidecar sends for a chat
    try:
        await engine.start()
        assert not await engine.ready()  # nothing built yet
        first = compile_policy(policy)
        current.append((first.revision, first.data))
        await engine.refresh()
        assert engine.revision == first.revision and (await engine.decide(doc))["allow"] is True

        policy.write_text(deny)
        second = compile_policy(policy)
        current.append((second.revision, second.data))
        await engine.refresh()
        assert engine.revision == second.revision
        decision = await engine.decide(doc)
        assert decision["allow"] is False
        assert [v["code"] for v in decision["violations"]] == ["model_not_allowed"]

        current.append(("broken", b"not a bundle"))
        await engine.refresh()
        assert engine.revision == second.revision  # still deciding with the last good build
        assert (await engine.decide(doc))["allow"] is False
    finally:
        await engine.close()


def test_decision_engine_setting_is_checked(tmp_path: Path) -> None:
    assert load_settings(None, env={}).decision_engine == "opa"
    with pytest.raises(SettingsError, match=r"HEXARCH_DECISION_ENGINE='wasmm' is not one of opa, wasm"):
        load_settings(None, env={"HEXARCH_DECISION_ENGINE": "wasmm"})
    with pytest.raises(SettingsError, match="decision_engine: wasm needs the policy"):
        load_settings(None, env={"HEXARCH_DECISION_ENGINE": "wasm"})
    config = tmp_path / "hexarch.yaml"
    config.write_text("version: 1\npolicies: []\nsidecar:\n  decision_engine: wasm\n")
    assert load_settings(str(config), env={}).decision_engine == "wasm"
    config.write_text("version: 1\npolicies: []\nsidecar:\n  decision_engine: embedded\n")
    with pytest.raises(SettingsError, match="decision_engine"):
        load_settings(str(config), env={})


SIDECAR_POLICY = """version: 1
tinyllama:
  base_url: http://127.0.0.1:1
  api: openai
  model: tinyllama
policies: []
sidecar:
  decision_engine: wasm
  anonymous:
    enabled: true
    id: guest
"""
ONLY_GPT = """policies:
  - id: models
    rules:
      - model: [gpt-4o]
        allowed: true
        action: block
"""


async def test_a_sidecar_with_the_wasm_engine_follows_policy_edits(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The whole app with `decision_engine: wasm`: a request allowed, then the policy file edited, then
    the same request refused by the new policy, decided in-process (no OPA is running at all)."""
    chat = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}]}
    redis_url = flushed_redis_url(redis_server, 14)  # a database no other module uses
    async with demo_server() as demo, harness(SIDECAR_POLICY, tmp_path, None, redis_url, demo) as h:
        assert h.settings.decision_engine == "wasm"
        async with h.session.post(h.url("/v1/chat/completions"), json=chat) as resp:
            assert resp.status == 200, await resp.text()
        config = tmp_path / "hexarch.yaml"
        config.write_text(config.read_text().replace("policies: []\n", ONLY_GPT))
        deadline = time.monotonic() + 30
        while True:  # the bundle is rebuilt on its next check (1 s), then the Wasm module
            async with h.session.post(h.url("/v1/chat/completions"), json=chat) as resp:
                status, body = resp.status, await resp.json()
            if status != 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 403, body
        assert body["error"]["code"] == "model_not_allowed"
