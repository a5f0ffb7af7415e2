"""The check API and the proxy share one pipeline (sidecar/proxy.py `Pipeline`).

A request proxied through the new ingresses and adapters (the Anthropic Messages ingress, an OpenAI
client whose body the Ollama adapter translates) is counted by the settlement's hooks in the usage
statistics and in the per-route/model/team metrics, and a refusal reads the same whether it comes
from `POST /hexarch/v1/check` or from the proxy.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import openai

from tests.stack_support import OPS_KEY, Stack


def sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stats_after(http: httpx.Client, requests: int) -> dict[str, Any]:
    """Proxied requests are counted by the settlement job after the reply: wait for it."""
    deadline = time.monotonic() + 10
    while True:
        today: dict[str, Any] = http.get("/hexarch/v1/stats").json()["today"]
        if today["requests"] >= requests or time.monotonic() > deadline:
            return today
        time.sleep(0.05)


def test_translated_and_anthropic_requests_reach_stats_and_labelled_metrics(stack: Stack) -> None:
    stack.flush()
    messages = (
        'hexarch_http_requests_total{model="tinyllama",route="/v1/messages",status_class="2xx",team="ops"}'
    )
    chat = (
        'hexarch_http_requests_total{model="tinyllama",route="/v1/chat/completions",'
        'status_class="2xx",team="ops"}'
    )
    tokens = 'hexarch_settled_tokens_total{kind="completion",model="tinyllama",team="ops"}'
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {OPS_KEY}"}, timeout=10) as http:
        before = http.get("/metrics").text
        claude = anthropic.Anthropic(base_url=stack.url, api_key=OPS_KEY, max_retries=0)
        reply = claude.messages.create(
            model="tinyllama", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.content and reply.usage.output_tokens > 0
        gpt = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=OPS_KEY, max_retries=0)
        completion = gpt.chat.completions.create(
            model="tinyllama", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        today = stats_after(http, 2)
        text = http.get("/metrics").text
    assert today["requests"] == 2
    assert today["by_principal"]["ops-bot"]["requests"] == 2
    assert today["by_model"]["tinyllama"]["requests"] == 2
    spent = reply.usage.output_tokens + completion.usage.completion_tokens
    assert today["by_model"]["tinyllama"]["completion_tokens"] == spent
    assert sample(text, messages) == sample(before, messages) + 1
    assert sample(text, chat) == sample(before, chat) + 1
    assert sample(text, tokens) == sample(before, tokens) + spent


def test_a_refusal_reads_the_same_from_check_and_from_the_proxy(stack: Stack) -> None:
    stack.flush()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {OPS_KEY}"}, timeout=10) as http:
        checked = http.post(
            "/hexarch/v1/check", json={"model": "tinyllama", "params": {"temperature": 1.5}}
        ).json()
        proxied = http.post(
            "/v1/chat/completions",
            json={"model": "tinyllama", "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert checked["allow"] is False
    error = proxied.json()["error"]
    assert proxied.status_code == checked["status"] == 400
    assert (error["code"], error["message"], error["policy"]) == (
        checked["code"],
        checked["message"],
        checked["policy"],
    )
