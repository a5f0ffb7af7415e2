"""`hexarch usage` reads the counters that real decisions consumed, without consuming any."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.counters import Counters, Limit
from sidecar.redis_client import create_redis
from tests.sidecar.app_support import flushed_redis_url, start_policy_opa
from tests.support.servers import RedisServer

POLICY = """
policies:
  - id: rate
    rules:
      - resource: tinyllama
        requests_per_minute: 10
  - id: tokens
    rules:
      - resource: tinyllama
        max_tokens_per_hour: 5000
        scope: principal
  - id: spend
    rules:
      - resource: tinyllama
        daily_budget_usd: 1
        scope: team
"""
INPUT = {
    "principal": {"id": "alice", "team": "ml", "roles": []},
    "resources": ["tinyllama", "*"],
    "operation": "chat",
    "model": "tinyllama",
    "params": {},
    "estimate": {"prompt_tokens": 40, "max_output_tokens": 60},
}
DB = 9


def decision_limits(opa_url: str) -> list[Limit]:
    request = urllib.request.Request(
        f"{opa_url}/v1/data/hexarch/decision",
        data=json.dumps({"input": INPUT}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        decision = json.loads(resp.read())["result"]
    return [Limit.from_decision(doc) for doc in decision["limits"]]


async def consume(redis_url: str, limits: list[Limit], times: int) -> None:
    counters = Counters(create_redis(redis_url))
    try:
        for i in range(times):
            assert (await counters.admit(f"r{i}", limits)).admitted
    finally:
        await counters.close()


def test_usage_shows_what_admissions_consumed(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "hexarch.yaml"
    policy.write_text(POLICY)
    redis_url = flushed_redis_url(redis_server, DB)
    opa = start_policy_opa(policy, tmp_path)
    try:
        limits = decision_limits(opa.url)
    finally:
        opa.stop()
    asyncio.run(consume(redis_url, limits, 3))

    args = ["usage", "--config", str(policy), "--redis-url", redis_url]
    args += ["--principal", "alice", "--team", "ml"]
    for _ in range(2):  # the second read sees the same figures: a peek consumes nothing
        assert main([*args, "--json"]) == 0
        rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
        assert rows["rate/0/rpm"]["used"] == 3
        assert rows["rate/0/rpm"]["remaining"] == 7
        assert rows["rate/0/rpm"]["subject"] == "tinyllama"
        assert rows["tokens/0/tph"]["used"] == 3 * (40 + 60)
        assert rows["tokens/0/tph"]["subject"] == "alice"
        spend = next(lim for lim in limits if lim.id == "spend/0/day")
        assert rows["spend/0/day"]["used"] == 3 * spend.cost
        assert rows["spend/0/day"]["subject"] == "ml"
        assert rows["spend/0/day"]["limit"] == 1_000_000

    # Another principal's token counter is untouched; without --team the team budget is left out.
    assert main(["usage", "--config", str(policy), "--redis-url", redis_url, "--principal", "bob"]) == 0
    table = capsys.readouterr().out
    assert "tokens/0/tph" in table and "spend/0/day" not in table
    bob = next(line for line in table.splitlines() if line.startswith("tokens/0/tph"))
    assert bob.split()[1:5] == ["bob", "tokens", "3600s", "0"]


def test_usage_without_redis_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "hexarch.yaml"
    policy.write_text(POLICY)
    assert main(["usage", "--config", str(policy), "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hexarch usage: Redis is not answering")
    assert "Traceback" not in err
