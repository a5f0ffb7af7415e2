"""The official `openai` and `ollama` clients, pointed at the sidecar, work unchanged and surface
policy denials as their ordinary errors. Everything runs for real: redis-server, OPA polling the
bundle served by the sidecar, the sidecar and the demo model (see conftest.py)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sidecar.demo_model import reply_words
from tests.e2e.conftest import LIMITED_MODEL, LIMITED_RPM, RunningStack

HELLO: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is Python?"}
]  # 15 characters -> 4 prompt tokens


def upstream_calls(stack: RunningStack) -> int:
    with urllib.request.urlopen(f"{stack.demo_url}/demo/stats", timeout=5) as resp:
        total: int = json.load(resp)["total"]
        return total


def openai_client(stack: RunningStack, key: str | None = None) -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry a 429 after Retry-After and hide it.
    return openai.OpenAI(base_url=f"{stack.sidecar_url}/v1", api_key=key or stack.api_key, max_retries=0)


def ollama_client(stack: RunningStack) -> ollama.Client:
    return ollama.Client(host=stack.sidecar_url, headers={"Authorization": f"Bearer {stack.api_key}"})


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    inner = body.get("error", body)
    assert isinstance(inner, dict)
    return inner


def test_openai_chat_completion_through_the_sidecar(stack: RunningStack) -> None:
    client = openai_client(stack)
    reply = client.chat.completions.create(model="tinyllama", messages=HELLO, temperature=0.7, max_tokens=5)
    assert reply.choices[0].message.content == "".join(reply_words(5))
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 5)


def test_openai_stream_through_the_sidecar(stack: RunningStack) -> None:
    client = openai_client(stack)
    stream = client.chat.completions.create(
        model="tinyllama", messages=HELLO, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(reply_words(6))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6


def test_openai_denial_is_a_bad_request_error(stack: RunningStack) -> None:
    before = upstream_calls(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(stack).chat.completions.create(model="tinyllama", messages=HELLO, temperature=1.5)
    assert caught.value.status_code == 400
    error = error_of(caught.value)
    assert error["code"] == "invalid_parameter"
    assert error["policy"] == "quality_control"
    assert "temperature 1.5 is above the maximum 1.0" in error["message"]
    assert "temperature 1.5 is above the maximum 1.0" in str(caught.value)
    assert upstream_calls(stack) == before  # a denied request never reaches the model


def test_openai_model_outside_the_allow_list_is_permission_denied(stack: RunningStack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        openai_client(stack).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.status_code == 403
    assert error_of(caught.value)["code"] == "model_not_allowed"


def test_openai_rate_limit_is_a_rate_limit_error(stack: RunningStack) -> None:
    client = openai_client(stack)
    for _ in range(LIMITED_RPM):
        client.chat.completions.create(model=LIMITED_MODEL, messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=LIMITED_MODEL, messages=HELLO, max_tokens=1)
    assert caught.value.status_code == 429
    assert error_of(caught.value)["policy"] == "limited_model"
    headers = caught.value.response.headers
    # The oldest counted request leaves the 60 s window within a minute (rounded up to whole seconds).
    assert 0 < int(headers["Retry-After"]) <= 61
    assert headers["X-RateLimit-Limit"] == str(LIMITED_RPM)
    assert headers["X-RateLimit-Remaining"] == "0"


def test_openai_unknown_key_is_an_authentication_error(stack: RunningStack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(stack, key="not-a-key").chat.completions.create(model="tinyllama", messages=HELLO)
    assert caught.value.status_code == 401


def test_ollama_chat_through_the_sidecar(stack: RunningStack) -> None:
    reply = ollama_client(stack).chat(model="tinyllama", messages=HELLO, options={"num_predict": 3})
    assert reply.message.content == "".join(reply_words(3))
    assert (reply.prompt_eval_count, reply.eval_count) == (4, 3)
    parts = list(
        ollama_client(stack).chat(model="tinyllama", messages=HELLO, stream=True, options={"num_predict": 4})
    )
    assert parts[-1].done and parts[-1].eval_count == 4
    assert "".join(p.message.content or "" for p in parts) == "".join(reply_words(4))


def test_ollama_denial_is_a_response_error(stack: RunningStack) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(stack).chat(model="tinyllama", messages=HELLO, options={"temperature": 1.5})
    assert caught.value.status_code == 400
    assert "temperature 1.5 is above the maximum 1.0" in str(caught.value)
