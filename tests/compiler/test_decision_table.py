"""The example policy, decided by the real `opa eval` on the compiled bundle.

Each row is a request (changes to a plain chat request for TinyLlama), a wall-clock time (UTC, the
example's timezone; injected with `with time.now_ns as T`) and the decision a reader of
examples/hexarch.yaml expects: allowed or not, and which policies report which code and status.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compiler.api import compile_policy
from compiler.bundle import write_bundle
from tests.conftest import EXAMPLE_POLICY

WEDNESDAY_NOON = "2026-01-14T12:00:00"

BASE: dict[str, Any] = {
    "request": {"id": "req-1", "method": "POST", "path": "/v1/chat/completions", "api": "openai.chat"},
    "principal": {"id": "alice", "team": "ml", "roles": [], "tier": "pro", "authenticated": True},
    "resources": ["tinyllama_chat", "tinyllama", "*"],
    "operation": "chat",
    "resource_type": None,
    "feature": None,
    "confirmed": False,
    "model": "tinyllama",
    "params": {"temperature": 0.7, "max_tokens": 128, "num_predict": 128, "stream": False},
    "estimate": {"prompt_tokens": 42, "max_output_tokens": 128},
}

PARAM = ("quality_control", "invalid_parameter", 400)
MODEL = ("model_selection", "model_not_allowed", 403)
TIME = ("time_based", "time_restricted", 403)
ACCESS = ("access_control", "access_denied", 403)
CONFIRM = ("confirmations", "confirmation_required", 428)
FEATURE = ("features", "feature_disabled", 403)


def params(**changes: Any) -> dict[str, Any]:
    return {"params": {**BASE["params"], **changes}}


def principal(pid: str, *roles: str) -> dict[str, Any]:
    return {"principal": {"id": pid, "team": "ops", "roles": list(roles), "authenticated": True}}


STATS = {"resources": ["stats", "*"], "operation": "stats"}

# Marks a field the request leaves out (None stays: null is a value, as the sidecar sends it).
MISSING: Any = "__missing__"

# name, changes to BASE (MISSING = field removed), local time, allowed, reports (policy, code, status)
TABLE: list[tuple[str, dict[str, Any], str, bool, set[tuple[str, str, int]]]] = [
    ("plain chat", {}, WEDNESDAY_NOON, True, set()),
    ("temperature at max 1.0", params(temperature=1.0), WEDNESDAY_NOON, True, set()),
    ("temperature just above max", params(temperature=1.01), WEDNESDAY_NOON, False, {PARAM}),
    ("temperature at min 0.0", params(temperature=0.0), WEDNESDAY_NOON, True, set()),
    ("temperature below min", params(temperature=-0.1), WEDNESDAY_NOON, False, {PARAM}),
    ("temperature as a string", params(temperature="hot"), WEDNESDAY_NOON, False, {PARAM}),
    ("top_p above max", params(top_p=1.5), WEDNESDAY_NOON, False, {PARAM}),
    ("system prompt of 2000 chars", params(system="s" * 2000), WEDNESDAY_NOON, True, set()),
    ("system prompt of 2001 chars", params(system="s" * 2001), WEDNESDAY_NOON, False, {PARAM}),
    ("tagged tinyllama model", {"model": "tinyllama:1.1b"}, WEDNESDAY_NOON, True, set()),
    ("other model", {"model": "llama3"}, WEDNESDAY_NOON, False, {MODEL}),
    ("no model named", {"model": MISSING}, WEDNESDAY_NOON, False, {MODEL}),
    ("model null", {"model": None}, WEDNESDAY_NOON, False, {MODEL}),
    (
        "two problems at once",
        {"model": "gpt-4o", **params(temperature=1.5)},
        WEDNESDAY_NOON,
        False,
        {MODEL, PARAM},
    ),
    ("batch at noon", {"operation": "batch"}, WEDNESDAY_NOON, False, {TIME}),
    ("batch at 21:59:59", {"operation": "batch"}, "2026-01-14T21:59:59", False, {TIME}),
    ("batch at 22:00", {"operation": "batch"}, "2026-01-14T22:00:00", True, set()),
    ("batch at 05:59:59", {"operation": "batch"}, "2026-01-15T05:59:59", True, set()),
    ("batch at 06:00", {"operation": "batch"}, "2026-01-15T06:00:00", False, {TIME}),
    ("retrain on Saturday", {"operation": "retrain"}, "2026-01-17T12:00:00", False, {TIME}),
    ("retrain on Sunday night", {"operation": "retrain"}, "2026-01-18T23:59:59", False, {TIME}),
    ("retrain on Friday", {"operation": "retrain"}, "2026-01-16T23:59:59", True, set()),
    ("stats for ops-bot", {**STATS, **principal("ops-bot")}, WEDNESDAY_NOON, True, set()),
    ("stats for an admin", {**STATS, **principal("carol", "admin")}, WEDNESDAY_NOON, True, set()),
    ("stats for a user", {**STATS, **principal("bob", "dev")}, WEDNESDAY_NOON, False, {ACCESS}),
    (
        "delete a conversation",
        {"operation": "delete", "resource_type": "conversation"},
        WEDNESDAY_NOON,
        False,
        {CONFIRM},
    ),
    (
        "delete a conversation, confirmed",
        {"operation": "delete", "resource_type": "conversation", "confirmed": True},
        WEDNESDAY_NOON,
        True,
        set(),
    ),
    ("delete a model", {"operation": "delete", "resource_type": "model"}, WEDNESDAY_NOON, False, {CONFIRM}),
    (
        "delete an unlisted type",
        {"operation": "delete", "resource_type": "file"},
        WEDNESDAY_NOON,
        True,
        set(),
    ),
    ("delete without a type", {"operation": "delete"}, WEDNESDAY_NOON, False, {CONFIRM}),
    ("model given as a number", {"model": 7}, WEDNESDAY_NOON, False, {MODEL}),
    ("model given as a list", {"model": ["tinyllama"]}, WEDNESDAY_NOON, False, {MODEL}),
    ("vision feature", {"feature": "vision"}, WEDNESDAY_NOON, False, {FEATURE}),
    ("voice feature", {"feature": "voice"}, WEDNESDAY_NOON, True, set()),
    # null says "no feature"; a request that does not say meets every flag (fail closed).
    ("feature not stated", {"feature": MISSING}, WEDNESDAY_NOON, False, {FEATURE}),
    # A request that names neither resources nor operation: every rule applies (fail closed).
    (
        "no resources, no operation",
        {"resources": MISSING, "operation": MISSING},
        WEDNESDAY_NOON,
        False,
        {ACCESS, CONFIRM, TIME},
    ),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "example.tar.gz"
    write_bundle(compile_policy(EXAMPLE_POLICY).bundle, path)
    return path


def decide(opa_bin: str, bundle: Path, doc: dict[str, Any], when: str) -> dict[str, Any]:
    now_ns = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()) * 1_000_000_000
    proc = subprocess.run(
        [
            opa_bin,
            "eval",
            "--bundle",
            str(bundle),
            "--stdin-input",
            "--format",
            "json",
            # A builtin error (a type the library forgot to check) fails the test instead of
            # silently making a rule undefined.
            "--strict-builtin-errors",
            f"data.hexarch.decision with time.now_ns as {now_ns}",
        ],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(proc.stdout)["result"]
    value: dict[str, Any] = result[0]["expressions"][0]["value"]
    return value


def request(changes: dict[str, Any]) -> dict[str, Any]:
    doc = {**BASE, **changes}
    return {k: v for k, v in doc.items() if v is not MISSING}


@pytest.mark.parametrize(
    ("changes", "when", "allowed", "reports"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_decision(
    opa_bin: str,
    bundle: Path,
    changes: dict[str, Any],
    when: str,
    allowed: bool,
    reports: set[tuple[str, str, int]],
) -> None:
    decision = decide(opa_bin, bundle, request(changes), when)
    assert decision["allow"] is allowed
    assert {(v["policy"], v["code"], v["status"]) for v in decision["violations"]} == reports
    assert decision["warnings"] == []
    assert decision["enforcement"] == "strict"


def test_limits_and_pricing_of_a_plain_chat(opa_bin: str, bundle: Path) -> None:
    decision = decide(opa_bin, bundle, request({}), WEDNESDAY_NOON)
    limits = {entry["id"]: entry for entry in decision["limits"]}
    assert set(limits) == {
        "rate_limit/0/rpm",
        "rate_limit/0/rph",
        "token_management/0/request",
        "token_management/0/tph",
        "api_budget/0/month",
    }
    rpm = limits["rate_limit/0/rpm"]
    assert (rpm["limit"], rpm["cost"], rpm["window_seconds"], rpm["unit"]) == (30, 1, 60, "requests")
    assert (rpm["subject"], rpm["scope"], rpm["action"], rpm["warn_at"]) == (
        "tinyllama",
        "global",
        "block",
        None,
    )
    assert limits["rate_limit/0/rph"]["limit"] == 500
    per_request = limits["token_management/0/request"]
    assert (per_request["limit"], per_request["cost"], per_request["window_seconds"]) == (128, 128, 0)
    assert per_request["warn_at"] == 0.8
    hourly = limits["token_management/0/tph"]
    assert (hourly["limit"], hourly["cost"], hourly["window_seconds"]) == (50000, 42 + 128, 3600)
    budget = limits["api_budget/0/month"]
    # 42 prompt tokens at $0.10/M + 128 output tokens at $0.20/M = 29.8 micro-USD, rounded up.
    assert (budget["limit"], budget["cost"], budget["period"], budget["unit"]) == (
        100_000_000,
        30,
        "month",
        "usd_micros",
    )
    assert (budget["warn_at"], budget["action"]) == (0.75, "block")
    assert decision["pricing"] == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}


def test_reservation_without_a_max_is_the_per_request_limit(opa_bin: str, bundle: Path) -> None:
    decision = decide(opa_bin, bundle, request({"estimate": {"prompt_tokens": 1000}}), WEDNESDAY_NOON)
    limits = {entry["id"]: entry for entry in decision["limits"]}
    assert limits["token_management/0/request"]["cost"] == 128
    assert limits["token_management/0/tph"]["cost"] == 1000 + 128
    assert limits["api_budget/0/month"]["cost"] == 126  # 1000 * 0.1 + 128 * 0.2 = 125.6


def test_other_resources_carry_no_tinyllama_limits(opa_bin: str, bundle: Path) -> None:
    decision = decide(
        opa_bin, bundle, request({**STATS, **principal("ops-bot"), "model": "other"}), WEDNESDAY_NOON
    )
    assert decision["limits"] == []
    assert decision["pricing"] == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
