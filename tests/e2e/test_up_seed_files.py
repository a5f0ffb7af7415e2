"""The original project's policy files, copied verbatim, served by `hexarch up --policy FILE --demo`.

Issue 7's must-show: a new user's first step is `cp tinyllama_hexarch.yaml hexarch.yaml`; `hexarch
check` and `hexarch test` accept every published version (tests/compiler/test_seeds.py), and here
the local stack serves each one: an ordinary TinyLlama chat is answered, a temperature above the
file's maximum is refused with 400, and where the file has a model allow-list, another model is
refused with 403 (the `model_selection` policy is honoured, not dropped).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.test_up import post, running_up

SEEDS = Path(__file__).resolve().parents[1] / "seeds" / "guardrails"
FILES = sorted(p for p in SEEDS.glob("*/*.yaml") if p.parent.name != "snippets")


def chat(model: str, temperature: float = 0.7) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "What is Python?"}],
        "temperature": temperature,
        "max_tokens": 16,
    }


def test_every_published_version_is_here() -> None:
    assert len(FILES) >= 4  # two versions each of hexarch.yaml and tinyllama_hexarch.yaml


@pytest.mark.parametrize("seed", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_up_serves_the_seed_file_verbatim(tmp_path: Path, seed: Path) -> None:
    policy = tmp_path / "hexarch.yaml"
    shutil.copyfile(seed, policy)
    text = seed.read_text()
    with running_up(tmp_path, policy, "--demo") as up:
        status, doc = post(f"{up.url}/v1/chat/completions", chat("tinyllama"))
        assert status == 200, doc
        assert doc["choices"]
        if "temperature" in text:
            status, doc = post(f"{up.url}/v1/chat/completions", chat("tinyllama", temperature=1.5))
            assert status == 400, doc
            assert doc["error"]["param"] == "temperature"
        if "model_selection" in text:
            status, doc = post(f"{up.url}/v1/chat/completions", chat("gpt-4o"))
            assert status == 403, doc
            assert doc["error"]["policy"] == "model_selection"
