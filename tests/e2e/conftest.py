"""The whole local stack for end-to-end tests: redis-server, the demo model, the sidecar serving the
bundle it compiles from the policy file, and OPA polling that bundle (sidecar.stack, as `hexarch up`
runs it), all real processes on loopback ports.

The policy is examples/hexarch.yaml with its shared limits raised (so the tests do not throttle each
other), one API key, and one deliberately tight rate limit on the model `tinyllama:limited`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.stack import Stack, StackOptions, free_port
from tests.support.servers import ROOT

API_KEY = "e2e-alice-key"
LIMITED_MODEL = "tinyllama:limited"
LIMITED_RPM = 2


def e2e_policy(target: Path, *, temperature_max: float = 1.0, api_key: bool = True) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "hexarch.yaml").read_text())
    doc.pop("logging", None)
    for policy in doc["policies"]:
        for rule in policy["rules"]:
            for key in list(rule):
                if key.startswith(("requests_per_", "max_tokens_per_h")) or key.endswith("_budget_usd"):
                    rule[key] = 1_000_000
            if rule.get("parameter") == "temperature":
                rule["max"] = temperature_max
    doc["policies"].append(
        {
            "id": "limited_model",
            "description": "A tight limit the tests can reach",
            "enabled": True,
            "rules": [{"resource": LIMITED_MODEL, "requests_per_minute": LIMITED_RPM, "action": "block"}],
        }
    )
    doc["sidecar"].pop("api_keys", None)
    if api_key:
        doc["sidecar"]["api_keys"] = [{"id": "alice", "key_env": "HEXARCH_E2E_KEY", "roles": ["admin"]}]
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


@dataclass(frozen=True)
class RunningStack:
    sidecar_url: str
    demo_url: str
    opa_url: str
    redis_url: str
    api_key: str
    work_dir: Path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    tmp = tmp_path_factory.mktemp("e2e-stack")
    policy = e2e_policy(tmp / "hexarch.yaml")
    options = StackOptions(
        policy=policy,
        demo=True,
        port=free_port(),
        opa_port=free_port(),
        redis_port=free_port(),
        demo_port=free_port(),
        work_dir=tmp / "run",
        sidecar_log_file=True,
        extra_env={"HEXARCH_E2E_KEY": API_KEY},
    )
    running = Stack(options)
    running.start()
    try:
        assert running.demo_url is not None
        yield RunningStack(
            running.sidecar_url,
            running.demo_url,
            running.opa_url,
            running.redis_url,
            API_KEY,
            running.work_dir,
        )
    finally:
        running.stop()
