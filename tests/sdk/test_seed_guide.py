"""The seed guide's code, as written there, against two running sidecars with real OPA and Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hexarch_guardrails import Guardian, PolicyViolation, PolicyWarning
from tests.stack_support import OPS_KEY, RATE_PER_MINUTE, Stack


def wait_for_stats(guardian: Guardian, requests: int) -> dict[str, Any]:
    """Proxied requests are counted by the settlement that runs after the reply: wait for it."""
    deadline = time.monotonic() + 10
    while True:
        stats = guardian.get_stats()
        if stats["today"]["requests"] >= requests or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_quick_start_and_basic_chat(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    # Create protected client
    llama = TinyLlamaGuarded()

    # Make safe calls
    response = llama.chat(message="What is Python?", temperature=0.7)
    assert isinstance(response, str) and response

    response = llama.chat(message="Explain machine learning", temperature=0.7, num_predict=100)
    assert response


def test_system_prompt_voice_models_health(sidecar: Stack, tmp_path: Path) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    llama = TinyLlamaGuarded()
    response = llama.chat(
        message="What is Python?", system="You are a programming expert. Keep answers short.", temperature=0.5
    )
    assert response

    out = tmp_path / "response.mp3"
    assert llama.chat_with_voice(message="Hello world", output_file=str(out)) == str(out)
    assert out.read_bytes()[:3] == b"ID3" and out.stat().st_size > 100

    assert "tinyllama" in llama.list_models()
    health = llama.health_check()
    assert health["status"] == "ok" and health["model"] == "tinyllama"

    stats = llama.get_stats()  # the app's own /api/stats, which only admins and ops-bot may read
    assert stats["total_requests"] >= 2


def test_policy_violation_carries_the_policys_message(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    llama = TinyLlamaGuarded()
    with pytest.raises(PolicyViolation) as caught:
        llama.chat("Your question", temperature=1.5)
    assert "temperature 1.5 is above the maximum 1.0" in str(caught.value)
    assert caught.value.policy == "quality_control" and caught.value.status == 400


def test_batch_processing_goes_on_after_violations(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    llama = TinyLlamaGuarded()
    questions = [f"What is topic {i}?" for i in range(RATE_PER_MINUTE + 3)]
    answered: list[str] = []
    blocked: list[PolicyViolation] = []
    for question in questions:
        try:
            response = llama.chat(question)
            answered.append(response)
        except PolicyViolation as e:
            blocked.append(e)
            # Queue for retry or skip
    assert len(answered) == RATE_PER_MINUTE
    assert len(blocked) == 3
    assert all(b.policy == "rate_limit" and b.status == 429 and (b.retry_after or 0) >= 1 for b in blocked)


def test_decorator_sync_runs_exactly_n_bodies_across_two_sidecars(sidecar: Stack) -> None:
    guardians = [Guardian(url=s.url) for s in sidecar.sidecars]
    ran: list[int] = []
    refused: list[PolicyViolation] = []

    def make(guardian: Guardian) -> Any:
        # Pattern 3: AWS Lambda
        @guardian.check("rate_limit")
        def lambda_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
            ran.append(1)
            return {"response": event["question"]}

        return lambda_handler

    handlers = [make(g) for g in guardians]
    for i in range(RATE_PER_MINUTE + 4):
        try:
            assert handlers[i % 2]({"question": f"q{i}"}, None) == {"response": f"q{i}"}
        except PolicyViolation as exc:
            refused.append(exc)
    assert len(ran) == RATE_PER_MINUTE
    assert len(refused) == 4
    for exc in refused:
        assert exc.policy == "rate_limit" and exc.code == "rate_limit_exceeded" and exc.status == 429
        # a window of 60 s in 1 s buckets: the oldest request leaves within 61 s
        assert isinstance(exc.retry_after, int) and 1 <= exc.retry_after <= 61


def test_decorator_on_async_function(sidecar: Stack) -> None:
    guardian = Guardian()
    sent: list[str] = []

    # Pattern 1: Discord bot (the command's body)
    @guardian.check("rate_limit")
    async def ask(ctx: Any, *, question: str) -> None:
        await ctx.send(question.upper())

    class Ctx:
        async def send(self, text: str) -> None:
            sent.append(text)

    async def main() -> int:
        refused = 0
        for i in range(RATE_PER_MINUTE + 2):
            try:
                await ask(Ctx(), question=f"q{i}")
            except PolicyViolation:
                refused += 1
        await guardian.aclose()
        return refused

    assert asyncio.run(main()) == 2
    assert sent == [f"Q{i}" for i in range(RATE_PER_MINUTE)]


def test_flask_style_route_with_budget_policy(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    guardian = Guardian()
    llama = TinyLlamaGuarded()
    request = SimpleNamespace(json={"question": "What is AI?"})

    # Pattern 2: Flask API (the route decorator is Flask's; the guard is ours)
    @guardian.check("api_budget")
    def ask() -> dict[str, str]:
        question = request.json["question"]
        response = llama.chat(question)
        return {"response": response}

    assert ask()["response"]
    decision = guardian.evaluate_policy("api_budget", {"resource": "tinyllama", "tokens": 10})
    assert decision["allowed"] is True and decision["action"] in ("allow", "warn")
    assert {lim["policy"] for lim in decision["limits"]} == {"api_budget"}


def test_enforce_false_warns_and_runs(sidecar: Stack) -> None:
    guardian = Guardian(enforce=False)

    @guardian.check("quality_control", context={"temperature": 1.5})
    def creative() -> str:
        return "ran"

    with pytest.warns(PolicyWarning, match="temperature 1.5 is above the maximum 1.0"):
        assert creative() == "ran"


def test_reserve_settles_real_usage_and_stats_follow(sidecar: Stack) -> None:
    guardian = Guardian()
    with guardian.reserve("token_management", resource="tinyllama", model="tinyllama", tokens=30) as r:
        r.report(prompt_tokens=30, completion_tokens=70)
    assert r.settlement is not None and r.settlement["already_settled"] is False
    stats = guardian.get_stats()["today"]
    assert stats["requests"] == 1
    assert stats["prompt_tokens"] == 30 and stats["completion_tokens"] == 70
    assert stats["by_model"]["tinyllama"]["tokens"] == 100
    assert stats["by_policy"]["token_management"]["requests"] == 1
    assert stats["by_principal"]["ops-bot"]["requests"] == 1
    assert stats["by_team"]["ops"]["requests"] == 1
    # settling again changes nothing
    again = guardian.settle(r.reservation_id or "", 999, 999)
    assert again["already_settled"] is True
    assert guardian.get_stats()["today"]["prompt_tokens"] == 30


def test_guardian_reads_policies_and_health(sidecar: Stack) -> None:
    guardian = Guardian()
    ids = guardian.list_policies()
    assert {"rate_limit", "api_budget", "quality_control", "token_management"} <= set(ids)
    assert guardian.get_policy("rate_limit")["description"] == "Stay under TinyLlama's capacity"
    health = guardian.health_check()
    assert health["status"] == "ok" and health["checks"]["opa"] and health["checks"]["redis"]
    with pytest.raises(ValueError):
        guardian.evaluate_policy("no_such_policy", {})


def test_stats_and_usage_equal_requests_made_through_proxy_and_check(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    llamas = [TinyLlamaGuarded(api_url=s.url, api_key=OPS_KEY) for s in sidecar.sidecars]
    guardians = [Guardian(url=s.url) for s in sidecar.sidecars]
    proxied = 3
    for i in range(proxied):
        assert llamas[i % 2].chat(f"question {i}", num_predict=8)
    checked = 2
    for i in range(checked):
        with guardians[(i + 1) % 2].reserve("rate_limit", model="tinyllama", tokens=5) as r:
            r.report(5, 7)
    total = proxied + checked
    stats = wait_for_stats(guardians[0], total)["today"]
    assert stats["requests"] == total
    assert stats["by_policy"]["rate_limit"]["requests"] == total
    assert stats["by_principal"]["ops-bot"]["requests"] == total
    assert guardians[1].get_stats()["month"]["requests"] == total
    usage = guardians[1].usage(resource="tinyllama")
    rpm = next(lim for lim in usage["limits"] if lim["id"] == "rate_limit/0/rpm")
    assert rpm["used"] == total and rpm["limit"] == RATE_PER_MINUTE
    assert rpm["remaining"] == RATE_PER_MINUTE - total
    budget = next(b for b in usage["budgets"] if b["id"] == "api_budget/0/month")
    # the budget holds what the requests it applied to (the proxied ones) really cost
    assert budget["limit_usd"] == 100.0
    assert budget["spent_usd"] == pytest.approx(stats["by_policy"]["api_budget"]["cost_usd"])
    assert stats["by_policy"]["api_budget"]["requests"] == proxied


def sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_slice_by_route_model_team_and_stream_first_byte(sidecar: Stack) -> None:
    import httpx

    from examples.tinyllama_guardrails import TinyLlamaGuarded

    chat = 'hexarch_http_requests_total{model="tinyllama",route="/api/chat",status_class="2xx",team="ops"}'
    cost = 'hexarch_cost_usd_total{model="tinyllama",team="ops"}'
    tokens = 'hexarch_settled_tokens_total{kind="completion",model="tinyllama",team="ops"}'
    first_byte = 'hexarch_stream_first_byte_seconds_count{upstream="tinyllama"}'
    llama = TinyLlamaGuarded()
    with httpx.Client(base_url=sidecar.url, headers={"Authorization": f"Bearer {OPS_KEY}"}) as http:
        before = http.get("/metrics").text
        assert llama.chat("What is Python?", num_predict=8)
        body = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as streamed:
            assert streamed.status_code == 200 and b"[DONE]" in streamed.read()
        deadline = time.monotonic() + 10
        while True:  # cost and tokens are counted by the settlement after each reply
            text = http.get("/metrics").text
            if sample(text, tokens) > sample(before, tokens) + 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert sample(text, chat) == sample(before, chat) + 1
    assert sample(text, cost) > sample(before, cost)
    # the flat TinyLlama /api/chat reply is one JSON document; only the /v1 stream is a stream
    assert sample(text, first_byte) == sample(before, first_byte) + 1
    assert 'hexarch_budget_remaining_usd{limit="api_budget/0/month",subject="tinyllama"}' in text


def test_background_job_pattern_counts_the_job_and_its_calls(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    guardian = Guardian()
    llama = TinyLlamaGuarded()
    saved: list[str] = []

    def save_to_db(response: str) -> None:
        saved.append(response)

    # Pattern 4: Background Jobs. The job's check and each chat it makes count on rate_limit.
    @guardian.check("rate_limit")
    def process_batch(items: list[str]) -> None:
        for item in items:
            response = llama.chat(item)
            save_to_db(response)

    process_batch(["a", "b"])  # 3 of 6
    guarded = guardian.guard_function(lambda items: process_batch(items), "rate_limit")
    with pytest.raises(PolicyViolation) as caught:
        guarded(["c", "d"])  # its own check (4), process_batch's (5), chat "c" (6), chat "d" refused
    assert caught.value.policy == "rate_limit" and caught.value.status == 429
    assert len(saved) == 3
    with pytest.raises(PolicyViolation):
        process_batch(["e"])  # refused before its body runs
    assert len(saved) == 3


def test_tinyllama_enforce_false_warns_instead_of_raising(sidecar: Stack) -> None:
    from examples.tinyllama_guardrails import TinyLlamaGuarded

    llama = TinyLlamaGuarded(enforce=False)
    with pytest.warns(PolicyWarning, match="temperature 1.5 is above the maximum 1.0"):
        assert llama.chat("hi", temperature=1.5) == ""


def test_concurrent_decorated_calls_over_two_sidecars_run_exactly_n_bodies(sidecar: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    guardians = [Guardian(url=s.url) for s in sidecar.sidecars]
    ran: list[int] = []

    def guarded(guardian: Guardian) -> Any:
        @guardian.check("rate_limit")
        def job(i: int) -> int:
            ran.append(i)
            return i

        return job

    jobs = [guarded(g) for g in guardians]

    def attempt(i: int) -> str:
        try:
            jobs[i % 2](i)
            return "ran"
        except PolicyViolation as exc:
            assert exc.retry_after is not None
            return "refused"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(attempt, range(3 * RATE_PER_MINUTE)))
    assert outcomes.count("ran") == len(ran) == RATE_PER_MINUTE
    assert outcomes.count("refused") == 2 * RATE_PER_MINUTE
