"""Prompt estimates are a bound: CJK counts at least one token per character (chars/4 under-counted
it 3-4x), ASCII stays at about four characters per token."""

from __future__ import annotations

from sidecar.ingress import normalise, resolve_endpoints
from sidecar.prompt_estimate import weighted_chars
from sidecar.settings import Settings


def _chat_estimate(text: str) -> int:
    [endpoint] = [e for e in resolve_endpoints(Settings()) if e.api == "openai.chat"]
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return normalise(endpoint, body).prompt_tokens


def test_cjk_counts_at_least_one_token_per_character() -> None:
    text = "这是一个关于预算的问题" * 10  # 110 characters; cl100k gives about 1-2 tokens each
    assert _chat_estimate(text) >= len(text)


def test_ascii_stays_at_four_characters_per_token() -> None:
    text = "a" * 400
    assert 100 <= _chat_estimate(text) <= 110
    assert weighted_chars("abcd") == 4
    assert weighted_chars("日本") == 8
