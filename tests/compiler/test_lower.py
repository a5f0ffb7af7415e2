"""Lowering: the compiled data document is exactly the layout of docs/architecture.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compiler.api import compile_policy, load_policy
from compiler.lower import config_json, lower, usd_to_micros
from tests.conftest import EXAMPLE_POLICY


def _limit(lid: str, rule: int, window: int, limit: int, warn_at: float | None) -> dict[str, Any]:
    policy = lid.split("/")[0]
    return {
        "id": lid,
        "policy": policy,
        "rule": rule,
        "resource": "tinyllama",
        "window_seconds": window,
        "limit": limit,
        "action": "block",
        "warn_at": warn_at,
        "scope": "global",
    }


EXPECTED_EXAMPLE: dict[str, Any] = {
    "enforcement": "strict",
    "timezone": "UTC",
    "default_max_output_tokens": 1024,
    "pricing": [{"model": "tinyllama*", "input_per_million_usd": 0.1, "output_per_million_usd": 0.2}],
    "default_pricing": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5},
    "rate_limits": [
        _limit("rate_limit/0/rpm", 0, 60, 30, None),
        _limit("rate_limit/0/rph", 0, 3600, 500, None),
    ],
    "token_limits": [
        _limit("token_management/0/request", 0, 0, 128, 0.8),
        _limit("token_management/0/tph", 0, 3600, 50000, 0.8),
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
        {
            "policy": "quality_control",
            "rule": 1,
            "parameter": "top_p",
            "min": 0.0,
            "max": 1.0,
            "max_length": None,
            "allowed_values": None,
            "resource": "*",
            "operation": "*",
            "action": "block",
        },
        {
            "policy": "quality_control",
            "rule": 2,
            "parameter": "system",
            "min": None,
            "max": None,
            "max_length": 2000,
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
        {
            "policy": "time_based",
            "rule": 1,
            "operation": "retrain",
            "resource": "*",
            "allowed_hours": [],
            "forbidden_hours": [],
            "allowed_days": [],
            "forbidden_days": ["saturday", "sunday"],
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
            "self": False,
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
            "rule": 0,
            "feature": "voice",
            "enabled": True,
            "requires_approval": False,
            "approver_users": [],
            "approver_roles": ["admin"],
            "action": "block",
        },
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


def test_example_lowers_to_the_documented_layout() -> None:
    assert lower(load_policy(EXAMPLE_POLICY)) == EXPECTED_EXAMPLE


def test_data_json_is_canonical() -> None:
    config = lower(load_policy(EXAMPLE_POLICY))
    assert config_json(config) == config_json(dict(reversed(list(config.items()))))
    assert config_json(config).endswith(b"}\n")


def test_every_kind_and_option(all_kinds_policy: Path) -> None:
    config = lower(load_policy(all_kinds_policy))
    assert config["timezone"] == "Europe/Paris" and config["default_max_output_tokens"] == 512
    assert [p["model"] for p in config["pricing"]] == ["gpt-4o*", "llama?-{8b,70b}"]
    rates = {r["id"]: r for r in config["rate_limits"]}
    # `action: allow` never switches a limit off: team-rates/2 is enforced as block (with a warning);
    # the disabled policy (retired) adds nothing.
    assert set(rates) == {"team-rates/0/rpm", "team-rates/0/rpd", "team-rates/1/rph", "team-rates/2/rpm"}
    assert rates["team-rates/2/rpm"]["action"] == "block"
    assert (rates["team-rates/0/rpm"]["warn_at"], rates["team-rates/0/rpm"]["action"]) == (0.9, "block")
    assert (rates["team-rates/0/rpm"]["scope"], rates["team-rates/1/rph"]["scope"]) == ("team", "principal")
    assert (rates["team-rates/1/rph"]["action"], rates["team-rates/1/rph"]["resource"]) == ("warn", "*")
    budgets = {b["id"]: b for b in config["budgets"]}
    assert budgets["spend/0/day"]["limit"] == 2_500_000 and budgets["spend/0/day"]["period"] == "day"
    assert budgets["spend/0/month"]["limit"] == 40_000_000 and budgets["spend/0/month"]["warn_at"] == 0.5
    tokens = [(t["id"], t["window_seconds"], t["limit"]) for t in config["token_limits"]]
    assert tokens == [
        ("tokens/0/request", 0, 256),
        ("tokens/0/tpm", 60, 4000),
        ("tokens/0/tpd", 86400, 100000),
        ("tokens/1/request", 0, 1000),
    ]
    hours = config["time_windows"]
    assert hours[0]["forbidden_hours"] == [[480, 720], [780, 1110]]
    assert hours[0]["allowed_days"] == ["monday", "tuesday", "wednesday", "thursday", "friday"]
    assert hours[1]["allowed_hours"] == [[0, 360], [1200, 1440]] and hours[1]["forbidden_days"] == ["friday"]
    params = {p["parameter"]: p for p in config["param_bounds"]}
    assert params["n"]["allowed_values"] == [1, 2] and params["stop"]["action"] == "require_confirmation"
    assert params["response_format"]["operation"] == "chat"
    models = config["model_rules"]
    assert [m["allowed"] for m in models] == [True, False, True] and models[2]["resource"] == "premium"
    access = config["access_rules"]
    assert (access[0]["users"], access[0]["roles"], access[0]["operation"]) == (
        ["root"],
        ["ops", "sre"],
        "write",
    )
    confirmations = config["confirmations"]
    assert (
        confirmations[0]["resource_types"] == ["*"] and confirmations[0]["action"] == "require_confirmation"
    )
    assert confirmations[1]["action"] == "block" and confirmations[1]["resource"] == "storage"
    flags = config["features"]
    assert (flags[0]["approver_users"], flags[0]["approver_roles"]) == (["carol"], ["admin"])
    assert flags[1]["action"] == "warn" and flags[1]["enabled"] is False


def test_money_is_exact_micro_usd() -> None:
    assert usd_to_micros(0.1) == 100_000
    assert usd_to_micros(19.99) == 19_990_000
    assert usd_to_micros(100) == 100_000_000
    assert usd_to_micros(0.0000015) == 2  # half a micro-dollar rounds up


def test_either_warn_threshold_spelling_on_every_limit_kind(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policies:\n  - id: a\n    rules:\n"
        "      - {resource: x, requests_per_minute: 10, warn_at_percentage: 80}\n"
        "      - {resource: x, max_tokens_per_hour: 1000, alert_at_percentage: 70}\n"
        "      - {resource: x, monthly_budget_usd: 10, warn_at_percentage: 50}\n"
    )
    config = compile_policy(policy).config
    assert config["rate_limits"][0]["warn_at"] == 0.8
    assert config["token_limits"][0]["warn_at"] == 0.7
    assert config["budgets"][0]["warn_at"] == 0.5
