"""`hexarch up --demo` on a file with the seed's own sections (`tinyllama:` with api_url and
internal_url, `logging:` with a file, `opa:` in seconds): the TinyLlama app's flat body is guarded
and counted, the decision log goes to the file, OPA polls at `opa.bundle_polling_seconds`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.test_up import post, running_up

POLICY = """
policies:
  - id: "token_management"
    enabled: true
    rules:
      - resource: "tinyllama"
        max_tokens_per_hour: 1000
  - id: "quality_control"
    enabled: true
    rules:
      - parameter: "message"
        max_length: 9000
        action: "block"
enforcement: "strict"
logging:
  enabled: true
  level: "info"
  file: ".hexarch/tinyllama_guardrails.log"
opa:
  url: "http://localhost:8181"
  timeout_seconds: 5
  health_check_interval: 30
  bundle_polling_seconds: 3
tinyllama:
  api_url: "http://api.codexscrolls.io"
  internal_url: "http://localhost:8000"
  default_model: "tinyllama"
  default_temperature: 0.7
  default_max_tokens: 128
  timeout_seconds: 30
  retry_attempts: 3
  retry_delay_seconds: 1
"""


def test_up_serves_the_seed_sections_and_counts_the_flat_body(tmp_path: Path) -> None:
    policy = tmp_path / "hexarch.yaml"
    policy.write_text(POLICY)
    log = tmp_path / ".hexarch" / "tinyllama_guardrails.log"
    with running_up(tmp_path, policy, "--demo") as up:
        assert f"decisions {log}" in up.text()
        config = (tmp_path / "run" / "opa-config.yaml").read_text()
        assert "min_delay_seconds: 3" in config and "max_delay_seconds: 3" in config
        status, doc = post(f"{up.url}/api/chat", {"message": "Hello", "system": "Be brief."})
        assert status == 200, doc
        assert isinstance(doc["response"], str) and doc["response"]
        status, doc = post(f"{up.url}/api/chat", {"message": "x" * 8000})
        assert status == 400, doc
        assert doc["error"]["code"] == "max_tokens_exceeded"  # 2000 prompt tokens > 1000 an hour
        status, doc = post(f"{up.url}/api/chat", {"message": "y" * 9001})
        assert status == 400 and doc["error"]["param"] == "message"
        deadline = time.monotonic() + 10
        while len(log.read_text().splitlines() if log.exists() else []) < 3:
            assert time.monotonic() < deadline, f"decision log: {log.read_text() if log.exists() else 'none'}"
            time.sleep(0.1)
    outcomes = [json.loads(line)["outcome"] for line in log.read_text().splitlines()]
    assert sorted(outcomes) == ["allowed", "denied", "limited"]
