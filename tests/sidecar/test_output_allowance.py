"""A request that names no maximum output is capped at what its reservations cover.

Admission reserves a budget's or a windowed token limit's cost with an output reservation
(`defaults.max_output_tokens`). Without a cap in the forwarded body, a model that talks longer
settles past what was admitted (tests/sidecar/test_exactness.py shows a budget overspent 11x). The
HTTP tests run the real sidecar against real OPA and Redis, with the demo model as a talkative
upstream, and read the body the upstream received from the demo model's own record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.counters import Limit
from sidecar.errors import SettingsError
from sidecar.ingress import apply_token_cap, resolve_endpoints
from sidecar.reply_usage import TokenCounts
from sidecar.reservation import cost_micros, output_allowance, reserved_output
from sidecar.settings import load_settings
from tests.sidecar.app_support import Harness, demo_server, flushed_redis_url, harness, policy_opa
from tests.support.servers import OpaServer, RedisServer

RESERVED = 24
CONFIG = f"""
version: 1
defaults:
  max_output_tokens: {RESERVED}
pricing:
  "tinyllama*":
    input_per_million_usd: 1.0
    output_per_million_usd: 1.0
tinyllama:
  base_url: http://127.0.0.1:1
  api: ollama
  model: tinyllama
policies:
  - id: budget
    rules:
      - resource: budgeted
        daily_budget_usd: 100
  - id: watched_budget
    rules:
      - resource: watched
        daily_budget_usd: 100
        action: warn
  - id: hourly_tokens
    rules:
      - resource: metered
        max_tokens_per_hour: 100000
sidecar:
  anonymous:
    enabled: true
  routes:
    - path: /budgeted/v1/chat/completions
      api: openai.chat
      resource: budgeted
      upstream: tinyllama
      upstream_path: /v1/chat/completions
    - path: /watched/v1/chat/completions
      api: openai.chat
      resource: watched
      upstream: tinyllama
      upstream_path: /v1/chat/completions
    - path: /metered/api/chat
      api: ollama.chat
      resource: metered
      upstream: tinyllama
      upstream_path: /api/chat
"""
DB = 11
OPENAI_CHAT = {"model": "tinyllama", "messages": [{"role": "user", "content": "tell me everything"}]}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(CONFIG, tmp_path_factory)


@pytest.fixture
async def h(opa: OpaServer, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Harness]:
    redis_url = flushed_redis_url(redis_server, DB)
    async with (
        demo_server(tokens_per_reply=400) as demo,
        harness(CONFIG, tmp_path, opa, redis_url, demo) as h,
    ):
        yield h


async def _chat(h: Harness, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reply, and the body the upstream received."""
    async with h.session.post(h.url(path), json=body) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    async with h.session.get(str(h.demo.make_url("/demo/stats"))) as resp:
        received = (await resp.json())["recent"][-1]["body"]
    return reply, received


async def test_budgeted_request_without_max_tokens_is_capped_at_its_reservation(h: Harness) -> None:
    reply, received = await _chat(h, "/budgeted/v1/chat/completions", OPENAI_CHAT)
    assert received["max_tokens"] == RESERVED
    assert reply["usage"]["completion_tokens"] == RESERVED
    assert reply["choices"][0]["finish_reason"] == "length"


async def test_a_named_maximum_is_left_as_the_client_wrote_it(h: Harness) -> None:
    reply, received = await _chat(h, "/budgeted/v1/chat/completions", {**OPENAI_CHAT, "max_tokens": 300})
    assert received["max_tokens"] == 300
    assert reply["usage"]["completion_tokens"] == 300


async def test_a_budget_that_only_warns_does_not_cap_the_reply(h: Harness) -> None:
    reply, received = await _chat(h, "/watched/v1/chat/completions", OPENAI_CHAT)
    assert "max_tokens" not in received
    assert reply["usage"]["completion_tokens"] == 400


async def test_ollama_request_under_a_token_limit_gets_num_predict(h: Harness) -> None:
    body = {"model": "tinyllama", "messages": [{"role": "user", "content": "go on"}], "stream": False}
    reply, received = await _chat(h, "/metered/api/chat", body)
    assert received["options"]["num_predict"] == RESERVED
    assert reply["eval_count"] == RESERVED


# --- the arithmetic, on the values a decision carries -------------------------------------------


def _limit(unit: str, cost: int, *, limit: int = 10**9, action: str = "block", window: int = 3600) -> Limit:
    return Limit(
        id=f"p/0/{unit}",
        policy="p",
        unit=unit,
        scope="global",
        subject="m",
        limit=limit,
        cost=cost,
        action=action,
        window_seconds=None if unit == "usd_micros" else window,
        period="day" if unit == "usd_micros" else None,
    )


PRICING = {"input_per_million_usd": 0.3, "output_per_million_usd": 0.7}


def test_budget_allowance_is_the_most_output_its_reserved_micro_usd_buy() -> None:
    prompt = 10
    # what OPA reserves for 16 output tokens: ceil(10 * 0.3 + 16 * 0.7) = ceil(14.2) = 15
    reserved = cost_micros(PRICING, TokenCounts(prompt, 16))
    assert reserved == 15
    allowance = output_allowance([_limit("usd_micros", reserved)], PRICING, prompt)
    assert allowance == 17  # rounding up the reservation left room for one more token
    assert cost_micros(PRICING, TokenCounts(prompt, allowance)) <= reserved
    assert cost_micros(PRICING, TokenCounts(prompt, allowance + 1)) > reserved


def test_the_tightest_blocking_limit_bounds_the_output() -> None:
    limits = [
        _limit("usd_micros", 15),  # 17 tokens
        _limit("tokens", 10 + 12),  # windowed: cost less the prompt, 12
        _limit("tokens", 64, limit=64, window=0),  # a per-request cap of 64
        _limit("tokens", 10 + 5, action="warn"),  # only warns: bounds nothing
    ]
    assert output_allowance(limits, PRICING, 10) == 12
    assert output_allowance(limits[2:], PRICING, 10) == 64
    assert output_allowance(limits[3:], PRICING, 10) is None
    assert (
        output_allowance([_limit("usd_micros", 15)], {"input_per_million_usd": 1}, 10) is None
    )  # free output


def test_reserved_output_is_what_settles_without_reported_usage() -> None:
    limits = [_limit("tokens", 10 + 12)]
    assert reserved_output(40, limits, PRICING, 10) == 40  # the client's own maximum
    assert reserved_output(None, limits, PRICING, 10) == 12
    assert reserved_output(None, [_limit("tokens", 10 + 5, action="warn")], PRICING, 10) == 5
    assert reserved_output(None, [], PRICING, 10) == 0


# --- the field the cap goes in ----------------------------------------------------------------

SPELLINGS = """
openai:
  base_url: https://api.openai.com/v1
vllm:
  base_url: http://127.0.0.1:8000
legacy_openai:
  base_url: https://api.openai.com
  max_tokens_param: max_tokens
ollama:
  base_url: http://127.0.0.1:11434
  api: ollama
sidecar:
  builtin_routes: false
  routes:
    - {path: /openai, api: openai.chat, upstream: openai}
    - {path: /vllm, api: openai.chat, upstream: vllm}
    - {path: /legacy, api: openai.chat, upstream: legacy_openai}
    - {path: /completions, api: openai.completions, upstream: openai}
    - {path: /ollama, api: ollama.chat, upstream: ollama}
    - {path: /app, api: json, upstream: ollama}
"""


def test_the_cap_is_written_in_the_field_each_upstream_reads(tmp_path: Path) -> None:
    config = tmp_path / "hexarch.yaml"
    config.write_text(SPELLINGS)
    endpoints = {ep.path: ep for ep in resolve_endpoints(load_settings(str(config), env={}))}

    def capped(path: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "m"}
        apply_token_cap(endpoints[path], body, 64)
        return body

    # OpenAI's own API refuses max_tokens for its reasoning models
    assert capped("/openai") == {"model": "m", "max_completion_tokens": 64}
    assert capped("/vllm") == {"model": "m", "max_tokens": 64}
    assert capped("/legacy") == {"model": "m", "max_tokens": 64}  # the setting wins over the host
    assert capped("/completions") == {"model": "m", "max_tokens": 64}  # the legacy API has no other
    assert capped("/ollama") == {"model": "m", "options": {"num_predict": 64}}
    assert capped("/app") == {"model": "m", "num_predict": 64}


def test_an_unknown_max_tokens_param_is_a_located_settings_error(tmp_path: Path) -> None:
    config = tmp_path / "hexarch.yaml"
    config.write_text("up:\n  base_url: http://h:1\n  max_tokens_param: max_new_tokens\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(str(config), env={})
    text = str(caught.value)
    assert f"{config}:3:" in text and "max_new_tokens" in text and "max_completion_tokens" in text
