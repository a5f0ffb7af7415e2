"""The decision log: one line per decision in `logging.file` (or stdout), as `logging.*` says.

Real OPA and Redis, the demo model as the upstream, the sidecar app in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.commands import _log_level
from sidecar.settings import load_settings
from tests.sidecar.app_support import Harness, demo_server, flushed_redis_url, harness, start_policy_opa
from tests.support.servers import OpaServer, RedisServer, start_opa

PROMPT = "What is the capital of Peru? (a prompt)"
CONFIG = """
version: 1
logging:
  file: decisions/hexarch.log
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
pricing:
  "tinyllama*": {input_per_million_usd: 1.0, output_per_million_usd: 2.0}
policies:
  - id: rate_limit
    rules:
      - resource: tinyllama
        requests_per_minute: 1000
  - id: quality_control
    rules:
      - parameter: temperature
        max: 1.0
sidecar:
  serve_bundle: false
  trusted_headers: {enabled: true}
"""
DB = 10


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    tmp = tmp_path_factory.mktemp("log-opa")
    (tmp / "hexarch.yaml").write_text(CONFIG)
    server = start_policy_opa(tmp / "hexarch.yaml", tmp)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return flushed_redis_url(redis_server, DB)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tinyllama", "messages": [{"role": "user", "content": PROMPT}], "stream": False, **extra}


WHO = {"X-Hexarch-User": "alice", "X-Hexarch-Team": "ml"}


async def post(h: Harness, body: dict[str, Any]) -> tuple[int, str]:
    async with h.session.post(h.url("/api/chat"), json=body, headers=WHO) as resp:
        await resp.read()
        return resp.status, resp.headers["X-Hexarch-Decision-Id"]


async def lines(path: Path, count: int) -> list[str]:
    """The file's lines once it has `count` (an allowed request is logged after it is settled)."""
    for _ in range(200):
        text = path.read_text() if path.exists() else ""
        if len(text.splitlines()) >= count:
            return text.splitlines()
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} has {len(text.splitlines())} lines, not {count}: {text}")


async def test_one_json_line_per_decision_in_the_file(opa: OpaServer, redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "decisions" / "hexarch.log"  # relative to the file that names it
    async with demo_server() as demo, harness(CONFIG, tmp_path, opa, redis_url, demo) as h:
        assert h.settings.log_file == str(log)
        allowed_status, allowed_id = await post(h, chat())
        denied_status, denied_id = await post(h, chat(temperature=1.5))
        assert (allowed_status, denied_status) == (200, 400)
        records = [json.loads(line) for line in await lines(log, 2)]
        by_id = {r["decision_id"]: r for r in records}
        allowed, denied = by_id[allowed_id], by_id[denied_id]
        assert allowed["principal"] == "alice" and allowed["team"] == "ml"
        assert allowed["model"] == "tinyllama" and allowed["route"] == "/api/chat"
        assert allowed["resources"] == ["tinyllama", "*"]
        assert allowed["outcome"] == "allowed" and allowed["status"] == 200
        assert allowed["policies"] == ["rate_limit"]
        assert allowed["prompt_tokens"] > 0 and allowed["completion_tokens"] > 0
        assert allowed["cost_usd_micros"] > 0 and allowed["cost_usd"] == allowed["cost_usd_micros"] / 1e6
        assert allowed["latency_ms"] > 0 and allowed["time"].endswith("Z")
        assert denied["outcome"] == "denied" and denied["code"] == "invalid_parameter"
        assert denied["policies"] == ["quality_control", "rate_limit"]
        assert "prompt" not in allowed  # log_prompts is false
        assert PROMPT not in log.read_text()

        # logrotate moves the file away and sends SIGHUP: the next lines go to a new file.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None), "no SIGHUP handler"
        rotated = log.with_suffix(".log.1")
        log.rename(rotated)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0)  # the loop runs the handler
        for _ in range(100):
            if log.exists():
                break
            await asyncio.sleep(0.01)
        _, after_id = await post(h, chat(temperature=2.0))
        assert json.loads((await lines(log, 1))[0])["decision_id"] == after_id
        assert after_id not in rotated.read_text() and len(rotated.read_text().splitlines()) == 2


async def test_text_format_and_prompts_only_when_asked(
    opa: OpaServer, redis_url: str, tmp_path: Path
) -> None:
    config = CONFIG.replace(
        "  file: decisions/hexarch.log\n", "  file: text.log\n  format: text\n  log_prompts: true\n"
    )
    async with demo_server() as demo, harness(config, tmp_path, opa, redis_url, demo) as h:
        _, decision_id = await post(h, chat(temperature=1.5))
        (line,) = await lines(tmp_path / "text.log", 1)
    assert line.startswith("ts=") and f"decision_id={decision_id}" in line
    assert "outcome=denied" in line and "resources=tinyllama,*" in line
    assert f"prompt={json.dumps(PROMPT)}" in line  # quoted: one record stays one line


async def test_decision_logging_can_be_switched_off(opa: OpaServer, redis_url: str, tmp_path: Path) -> None:
    configs = {
        "logging": CONFIG.replace("logging:\n", "logging:\n  enabled: false\n"),
        "sidecar": CONFIG.replace("sidecar:\n", "sidecar:\n  log_decisions: false\n"),
    }
    for name, config in configs.items():
        where = tmp_path / name
        where.mkdir()
        async with demo_server() as demo, harness(config, where, opa, redis_url, demo) as h:
            assert not h.settings.log_decisions
            status, _ = await post(h, chat(temperature=1.5))
            assert status == 400
        assert not (where / "decisions" / "hexarch.log").exists()


def test_logging_level_sets_the_process_log_level(tmp_path: Path) -> None:
    path = tmp_path / "hexarch.yaml"
    path.write_text("logging:\n  level: warning\n")
    settings = load_settings(str(path), env={})
    assert _log_level(settings.log_level, None) == logging.WARNING
    assert _log_level(settings.log_level, "debug") == logging.DEBUG  # --log-level wins
    assert _log_level(load_settings(None, env={}).log_level, None) == logging.INFO


async def test_opa_decision_id_is_linked_when_opa_logs_decisions(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "hexarch.yaml").write_text(CONFIG)
    from compiler.api import compile_policy

    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(compile_policy(tmp_path / "hexarch.yaml").data)
    opa = start_opa(
        ["--set", "decision_logs.console=true", "--log-level", "info", "-b", str(bundle)], tmp_path
    )
    try:
        async with demo_server() as demo, harness(CONFIG, tmp_path, opa, redis_url, demo) as h:
            _, decision_id = await post(h, chat(temperature=1.5))
            (line,) = await lines(tmp_path / "decisions" / "hexarch.log", 1)
    finally:
        opa.stop()
    record = json.loads(line)
    assert record["decision_id"] == decision_id
    opa_id = record["opa_decision_id"]
    assert isinstance(opa_id, str) and opa_id
    assert f'"decision_id":"{opa_id}"' in opa.log.read_text()  # the same decision in OPA's own log


async def test_lines_of_one_tick_reach_the_file_together_and_whole(tmp_path: Path) -> None:
    """Lines written in one event-loop tick are flushed before the loop waits again, in order, one
    record per line; close() flushes what is still pending."""
    from sidecar.decision_log import DecisionLog, DecisionRecord

    (tmp_path / "hexarch.yaml").write_text("version: 1\nlogging:\n  file: d.log\n")
    log = DecisionLog(load_settings(str(tmp_path / "hexarch.yaml"), env={}))
    log.open()
    path = tmp_path / "d.log"
    for i in range(3):
        log.write(DecisionRecord(f"id-{i}", "POST", "/v1/chat/completions"))
    assert path.read_text() == ""  # still this tick
    await asyncio.sleep(0)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["decision_id"] for line in lines] == ["id-0", "id-1", "id-2"]
    log.write(DecisionRecord("id-3", "POST", "/v1/chat/completions"))
    log.close()  # shutdown: nothing pending is lost
    assert json.loads(path.read_text().splitlines()[-1])["decision_id"] == "id-3"
