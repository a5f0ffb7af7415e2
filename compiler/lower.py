"""Stage 3: validated model -> the compiled data document `data.hexarch.config`.

The output is plain JSON-able data with exactly the layout of docs/architecture.md ("Compiled
data"); the Rego library reads nothing else. Disabled policies and rules whose action is `allow`
(they add nothing) are dropped here, so the Rego never has to know about them.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from compiler.model import (
    DEFAULT_INPUT_PRICE,
    DEFAULT_OUTPUT_PRICE,
    AccessRule,
    BudgetRule,
    ConfirmationRule,
    FeatureRule,
    LimitRule,
    ModelRule,
    ParamRule,
    PolicyFile,
    RateRule,
    TimeRule,
    TokenRule,
)

Config = dict[str, Any]

# The lists of data.hexarch.config that hold one entry per rule (each entry names its policy).
RULE_LISTS = (
    "rate_limits",
    "token_limits",
    "budgets",
    "param_bounds",
    "model_rules",
    "time_windows",
    "access_rules",
    "confirmations",
    "features",
)


def usd_to_micros(usd: int | float) -> int:
    """Dollars as written in YAML -> integer micro-USD, rounded half up (no binary-float drift)."""
    return int((Decimal(str(usd)) * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


def limit_id(policy: str, rule: int, suffix: str) -> str:
    return f"{policy}/{rule}/{suffix}"


def lower(model: PolicyFile) -> Config:
    config: Config = {
        "enforcement": model.enforcement,
        "timezone": model.timezone,
        "default_max_output_tokens": model.default_max_output_tokens,
        "pricing": [
            {
                "model": p.model,
                "input_per_million_usd": p.input_per_million_usd,
                "output_per_million_usd": p.output_per_million_usd,
            }
            for p in model.pricing
        ],
        "default_pricing": {
            "input_per_million_usd": DEFAULT_INPUT_PRICE,
            "output_per_million_usd": DEFAULT_OUTPUT_PRICE,
        },
        **{name: [] for name in RULE_LISTS},
    }
    for policy in model.enabled_policies:
        for rule in policy.rules:
            if rule.action == "allow":
                continue
            head: dict[str, Any] = {"policy": policy.id, "rule": rule.index}
            if isinstance(rule, (RateRule, TokenRule, BudgetRule)):
                _lower_limits(config, head, rule)
            elif isinstance(rule, ParamRule):
                config["param_bounds"].append(
                    {
                        **head,
                        "parameter": rule.parameter,
                        "min": rule.min,
                        "max": rule.max,
                        "max_length": rule.max_length,
                        "allowed_values": None if rule.allowed_values is None else list(rule.allowed_values),
                        "resource": rule.resource,
                        "operation": rule.operation,
                        "action": rule.action,
                    }
                )
            elif isinstance(rule, ModelRule):
                config["model_rules"].append(
                    {
                        **head,
                        "patterns": list(rule.patterns),
                        "allowed": rule.allowed,
                        "resource": rule.resource,
                        "action": rule.action,
                    }
                )
            elif isinstance(rule, TimeRule):
                config["time_windows"].append(
                    {
                        **head,
                        "operation": rule.operation,
                        "resource": rule.resource,
                        "allowed_hours": [list(w) for w in rule.allowed_hours],
                        "forbidden_hours": [list(w) for w in rule.forbidden_hours],
                        "allowed_days": list(rule.allowed_days),
                        "forbidden_days": list(rule.forbidden_days),
                        "action": rule.action,
                    }
                )
            elif isinstance(rule, AccessRule):
                config["access_rules"].append(
                    {
                        **head,
                        "resource": rule.resource,
                        "operation": rule.operation,
                        "users": list(rule.users),
                        "roles": list(rule.roles),
                        "self": rule.self_owned,
                        "action": rule.action,
                    }
                )
            elif isinstance(rule, ConfirmationRule):
                config["confirmations"].append(
                    {
                        **head,
                        "operation": rule.operation,
                        "resource": rule.resource,
                        "resource_types": list(rule.resource_types),
                        "action": rule.action,
                    }
                )
            elif isinstance(rule, FeatureRule):
                config["features"].append(
                    {
                        **head,
                        "feature": rule.feature,
                        "enabled": rule.enabled,
                        "requires_approval": rule.requires_approval,
                        "approver_users": list(rule.approver_users),
                        "approver_roles": list(rule.approver_roles),
                        "action": rule.action,
                    }
                )
    return config


def _lower_limits(config: Config, head: dict[str, Any], rule: LimitRule) -> None:
    for spec in rule.limits:
        entry: dict[str, Any] = {"id": limit_id(head["policy"], rule.index, spec.suffix), **head}
        entry["resource"] = rule.resource
        if isinstance(rule, BudgetRule):
            entry["period"] = spec.period
            entry["limit"] = usd_to_micros(spec.amount)
        else:
            entry["window_seconds"] = spec.window_seconds
            entry["limit"] = int(spec.amount)
        entry.update({"action": rule.action, "warn_at": rule.warn_at, "scope": rule.scope})
        section = "budgets" if isinstance(rule, BudgetRule) else "rate_limits"
        if isinstance(rule, TokenRule):
            section = "token_limits"
        config[section].append(entry)


def config_json(config: Config) -> bytes:
    """The canonical bytes of data.json: sorted keys, so equal configs give equal bundles."""
    return (json.dumps(config, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
