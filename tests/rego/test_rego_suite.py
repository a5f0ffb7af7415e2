"""The hand-written Rego library (rego/): CI's checks, and the decision as OPA serves it from a bundle.

The bundle is laid out as `hexarch compile` lays it out (docs/architecture.md, "Bundle"): the
example compiled data of docs/architecture.md at hexarch/config/data.json, the library under
hexarch/lib/, a custom policy under hexarch/custom/. Decisions are asked of a real `opa` process,
through `opa eval -b` and through the REST API the sidecar uses.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compiler.lower import RULE_LISTS
from tests.support.servers import ROOT, OpaServer, start_opa

REGO = ROOT / "rego"

EXAMPLE_CONFIG: dict[str, Any] = {
    "enforcement": "strict",
    "timezone": "UTC",
    "default_max_output_tokens": 1024,
    "pricing": [{"model": "tinyllama*", "input_per_million_usd": 0.1, "output_per_million_usd": 0.2}],
    "default_pricing": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5},
    "rate_limits": [
        {
            "id": "rate_limit/0/rpm",
            "policy": "rate_limit",
            "rule": 0,
            "resource": "tinyllama",
            "window_seconds": 60,
            "limit": 30,
            "action": "block",
            "warn_at": None,
            "scope": "global",
        },
    ],
    "token_limits": [
        {
            "id": "token_management/0/request",
            "policy": "token_management",
            "rule": 0,
            "resource": "tinyllama",
            "window_seconds": 0,
            "limit": 128,
            "action": "block",
            "warn_at": 0.8,
            "scope": "global",
        },
        {
            "id": "token_management/0/tph",
            "policy": "token_management",
            "rule": 0,
            "resource": "tinyllama",
            "window_seconds": 3600,
            "limit": 10000,
            "action": "block",
            "warn_at": 0.8,
            "scope": "global",
        },
    ],
    "budgets": [
        {
            "id": "api_budget/0/month",
            "policy": "api_budget",
            "rule": 0,
            "resource": "tinyllama",
            "period": "month",
            "limit": 100000000,
            "action": "block",
            "warn_at": 0.75,
            "scope": "global",
        },
    ],
    "param_bounds": [
        {
            "policy": "quality_control",
            "rule": 0,
            "parameter": "temperature",
            "min": 0.0,
            "max": 1.0,
            "max_length": None,
            "allowed_values": None,
            "resource": "*",
            "operation": "*",
            "action": "block",
        },
    ],
    "model_rules": [
        {
            "policy": "model_selection",
            "rule": 0,
            "patterns": ["tinyllama", "tinyllama:*"],
            "allowed": True,
            "resource": "*",
            "action": "block",
        },
    ],
    "time_windows": [
        {
            "policy": "time_based",
            "rule": 0,
            "operation": "batch",
            "resource": "*",
            "allowed_hours": [[1320, 360]],
            "forbidden_hours": [],
            "allowed_days": [],
            "forbidden_days": [],
            "action": "block",
        },
    ],
    "access_rules": [
        {
            "policy": "access_control",
            "rule": 0,
            "resource": "stats",
            "operation": "*",
            "users": ["ops-bot"],
            "roles": ["admin"],
            "action": "block",
        },
    ],
    "confirmations": [
        {
            "policy": "confirmations",
            "rule": 0,
            "operation": "delete",
            "resource": "*",
            "resource_types": ["conversation", "model"],
            "action": "require_confirmation",
        },
    ],
    "features": [
        {
            "policy": "features",
            "rule": 1,
            "feature": "vision",
            "enabled": False,
            "requires_approval": False,
            "approver_users": [],
            "approver_roles": ["admin"],
            "action": "block",
        },
    ],
}

CHAT_INPUT: dict[str, Any] = {
    "request": {"id": "req-1", "method": "POST", "path": "/v1/chat/completions", "api": "openai.chat"},
    "principal": {"id": "alice", "team": "ml", "roles": ["dev"], "tier": "pro", "authenticated": True},
    "resources": ["tinyllama_chat", "tinyllama", "*"],
    "operation": "chat",
    "resource_type": None,
    "feature": None,
    "confirmed": False,
    "model": "tinyllama",
    "params": {
        "temperature": 0.7,
        "max_tokens": 128,
        "num_predict": 128,
        "system": "be brief",
        "stream": False,
    },
    "estimate": {"prompt_tokens": 42, "max_output_tokens": 128},
}

CUSTOM_POLICY = """package hexarch.custom.no_email

violations contains {
\t"code": "email_in_system_prompt",
\t"message": "the system prompt holds an e-mail address",
} if {
\tregex.match(`[^@\\s]+@[^@\\s]+`, input.params.system)
}
"""


def chat(**changes: Any) -> dict[str, Any]:
    return {**CHAT_INPUT, **changes}


ALWAYS_POLICY = """package hexarch.custom.always

violations contains "every request is refused" if true
"""


def write_bundle(root: Path, config: dict[str, Any], custom: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True)
    (root / ".manifest").write_text(json.dumps({"revision": "test", "roots": ["hexarch"], "rego_version": 1}))
    (root / "hexarch" / "config").mkdir(parents=True)
    (root / "hexarch" / "config" / "data.json").write_text(json.dumps(config))
    shutil.copytree(REGO / "hexarch", root / "hexarch" / "lib")
    for name, source in (custom or {}).items():
        (root / "hexarch" / "custom").mkdir(exist_ok=True)
        (root / "hexarch" / "custom" / f"{name}.rego").write_text(source)
    return root


def run(opa_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([opa_bin, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def eval_decision(opa_bin: str, bundle: Path, doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(doc))
    query = "data.hexarch.decision"
    flags = ("--strict-builtin-errors", "-f", "json")
    out = run(opa_bin, "eval", *flags, "-b", str(bundle), "-i", str(input_file), query)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)["result"][0]["expressions"][0]["value"]
    return result


def ask(server: OpaServer, doc: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"input": doc}).encode()
    req = urllib.request.Request(
        f"{server.url}/v1/data/hexarch/decision", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer: dict[str, Any] = json.load(resp)
    result: dict[str, Any] = answer["result"]
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    base = tmp_path_factory.mktemp("rego-bundle")
    bundle = write_bundle(base / "bundle", EXAMPLE_CONFIG, {"no_email": CUSTOM_POLICY})
    server = start_opa([str(bundle)], base)
    try:
        yield server
    finally:
        server.stop()


def test_library_passes_ci_checks(opa_bin: str) -> None:
    for args in (("fmt", "--fail", "--list", "rego"), ("check", "--strict", "rego")):
        out = run(opa_bin, *args)
        assert out.returncode == 0, out.stdout + out.stderr
    cov = subprocess.run(
        [sys.executable, "scripts/rego_coverage.py", "--min", "90", "rego"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HEXARCH_OPA": opa_bin},
    )
    assert cov.returncode == 0, cov.stdout + cov.stderr


def test_library_tests_pass_inside_a_bundle(opa_bin: str, tmp_path: Path) -> None:
    """`hexarch test` runs the library's own tests next to real data and custom policies."""
    bundle = write_bundle(tmp_path / "bundle", EXAMPLE_CONFIG, {"always": ALWAYS_POLICY})
    out = run(opa_bin, "test", "-b", str(bundle))
    assert out.returncode == 0, out.stdout + out.stderr


def test_eval_of_bundle_gives_the_design_decision(opa_bin: str, tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", EXAMPLE_CONFIG)
    decision = eval_decision(opa_bin, bundle, chat(params={"temperature": 1.5}), tmp_path)
    assert decision["allow"] is False
    assert decision["enforcement"] == "strict"
    assert decision["violations"] == [
        {
            "policy": "quality_control",
            "rule": 0,
            "code": "invalid_parameter",
            "message": "temperature 1.5 is above the maximum 1.0",
            "action": "block",
            "status": 400,
        }
    ]
    assert decision["warnings"] == []
    assert decision["pricing"] == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}
    limits = {limit["id"]: limit for limit in decision["limits"]}
    assert limits["rate_limit/0/rpm"] == {
        "id": "rate_limit/0/rpm",
        "policy": "rate_limit",
        "unit": "requests",
        "scope": "global",
        "subject": "tinyllama",
        "window_seconds": 60,
        "limit": 30,
        "cost": 1,
        "warn_at": None,
        "action": "block",
    }
    # 42 prompt tokens at $0.10/M plus 128 reserved output tokens at $0.20/M = 29.8 -> 30 micro-USD.
    assert limits["api_budget/0/month"]["cost"] == 30
    assert limits["api_budget/0/month"]["period"] == "month"
    assert limits["token_management/0/tph"]["cost"] == 170
    assert limits["token_management/0/request"]["cost"] == 128


@pytest.mark.parametrize(
    ("price_in", "price_out", "prompt", "output"),
    [
        (0.1, 0.6, 0, 100),
        (0.15, 0.6, 100, 3000),
        (0.1, 0.2, 42, 128),
        (2.5, 10, 7, 3),
        (0.000000001, 0, 1, 0),
    ],
)
def test_budget_cost_is_the_exact_price_rounded_up(
    opa_bin: str, tmp_path: Path, price_in: float, price_out: float, prompt: int, output: int
) -> None:
    """Binary floating point made 100 tokens at $0.6/M cost 61 micro-USD instead of 60."""
    config = {
        **EXAMPLE_CONFIG,
        "pricing": [
            {"model": "tinyllama*", "input_per_million_usd": price_in, "output_per_million_usd": price_out}
        ],
    }
    bundle = write_bundle(tmp_path / "bundle", config)
    doc = chat(estimate={"prompt_tokens": prompt, "max_output_tokens": output})
    limits = {limit["id"]: limit for limit in eval_decision(opa_bin, bundle, doc, tmp_path)["limits"]}
    exact = Decimal(str(price_in)) * prompt + Decimal(str(price_out)) * output
    assert limits["api_budget/0/month"]["cost"] == math.ceil(exact)


@pytest.mark.parametrize("enforcement", ["warn", "monitor"])
def test_soft_enforcement_allows(opa_bin: str, tmp_path: Path, enforcement: str) -> None:
    bundle = write_bundle(tmp_path / "bundle", {**EXAMPLE_CONFIG, "enforcement": enforcement})
    decision = eval_decision(opa_bin, bundle, chat(params={"temperature": 1.5}), tmp_path)
    assert decision["allow"] is True
    assert decision["enforcement"] == enforcement
    assert {limit["action"] for limit in decision["limits"]} == {"warn"}
    if enforcement == "warn":
        assert decision["violations"] == []
        assert [(w["code"], w["action"], w["status"]) for w in decision["warnings"]] == [
            ("invalid_parameter", "warn", 400)
        ]
    else:
        assert [(v["code"], v["action"]) for v in decision["violations"]] == [("invalid_parameter", "block")]
        assert [(w["code"], w["action"]) for w in decision["warnings"]] == [("invalid_parameter", "warn")]


def test_served_decision_allows_a_good_request(served: OpaServer) -> None:
    decision = ask(served, CHAT_INPUT)
    assert decision["allow"] is True
    assert decision["violations"] == []
    assert len(decision["limits"]) == 4


@pytest.mark.parametrize(
    ("changes", "code", "status"),
    [
        ({"model": "gpt-4o"}, "model_not_allowed", 403),
        ({"resources": ["stats"]}, "access_denied", 403),
        ({"operation": "delete", "resource_type": "conversation"}, "confirmation_required", 428),
        ({"feature": "vision"}, "feature_disabled", 403),
        ({"params": {"temperature": "hot"}}, "invalid_parameter", 400),
        ({"params": {"system": "mail me at a@example.com"}}, "email_in_system_prompt", 403),
    ],
)
def test_served_decision_blocks(served: OpaServer, changes: dict[str, Any], code: str, status: int) -> None:
    decision = ask(served, chat(**changes))
    assert decision["allow"] is False
    assert [(v["code"], v["status"]) for v in decision["violations"]] == [(code, status)]


def test_confirmed_request_passes(served: OpaServer) -> None:
    decision = ask(served, chat(operation="delete", resource_type="conversation", confirmed=True))
    assert decision["allow"] is True


@pytest.mark.parametrize("doc", [{}, {"principal": None, "params": "x", "resources": "tinyllama"}])
def test_served_decision_is_closed_for_broken_input(served: OpaServer, doc: dict[str, Any]) -> None:
    decision = ask(served, doc)
    assert decision["allow"] is False
    codes = {v["code"] for v in decision["violations"]}
    assert {"model_not_allowed", "access_denied", "confirmation_required"} <= codes
    assert len(decision["limits"]) == 4


def test_decision_time_stays_small_on_a_large_policy(opa_bin: str, tmp_path: Path) -> None:
    """200 policies of every kind: evaluation is linear in the entries, a few ms at most."""
    config: dict[str, Any] = {**EXAMPLE_CONFIG}
    for key in RULE_LISTS:
        entries = []
        for i in range(200):
            for entry in EXAMPLE_CONFIG[key]:
                copy = {**entry, "policy": f"p{i}"}
                if "id" in copy:
                    copy["id"] = f"p{i}/" + copy["id"].split("/", 1)[1]
                if i % 2:
                    copy["resource"] = f"other{i}"
                entries.append(copy)
        config[key] = entries
    server = start_opa([str(write_bundle(tmp_path / "bundle", config))], tmp_path)
    try:
        ask(server, CHAT_INPUT)
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            decision = ask(server, CHAT_INPUT)
            timings.append(time.perf_counter() - started)
    finally:
        server.stop()
    assert len(decision["limits"]) == 400
    assert statistics.median(timings) < 0.25, timings
