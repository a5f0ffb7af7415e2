"""Lowering one rule of each kind: its dataclass -> its entries of `data.hexarch.config`.

compiler/registry.py names each kind's lowering; lower.py calls it with the entry head every rule
list shares ({"policy", "rule"}) and appends what it returns to the kind's config list. The entry
layouts are those of docs/architecture.md ("Compiled data"), typed below.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypedDict

from compiler.model import (
    AccessRule,
    ConfirmationRule,
    FeatureRule,
    LimitRule,
    ModelRule,
    ParamRule,
    Rule,
    Scalar,
    TimeRule,
)


class EntryHead(TypedDict):
    policy: str
    rule: int


Entry = dict[str, Any]  # one entry of a config list: EntryHead plus the kind's own fields


def usd_to_micros(usd: int | float) -> int:
    """Dollars as written in YAML -> integer micro-USD, rounded half up (no binary-float drift)."""
    return int((Decimal(str(usd)) * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


def limit_id(policy: str, rule: int, suffix: str) -> str:
    return f"{policy}/{rule}/{suffix}"


def lower_limit(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, LimitRule)
    out: list[Entry] = []
    for spec in rule.limits:
        entry: Entry = {"id": limit_id(head["policy"], rule.index, spec.suffix), **head}
        entry["resource"] = rule.resource
        if rule.kind == "budget":
            entry["period"] = spec.period
            entry["limit"] = usd_to_micros(spec.amount)
        else:
            entry["window_seconds"] = spec.window_seconds
            entry["limit"] = int(spec.amount)
        entry.update({"action": rule.action, "warn_at": rule.warn_at, "scope": rule.scope})
        out.append(entry)
    return out


def lower_param(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, ParamRule)
    values: list[Scalar] | None = None if rule.allowed_values is None else list(rule.allowed_values)
    return [
        {
            **head,
            "parameter": rule.parameter,
            "min": rule.min,
            "max": rule.max,
            "max_length": rule.max_length,
            "allowed_values": values,
            "resource": rule.resource,
            "operation": rule.operation,
            "action": rule.action,
        }
    ]


def lower_model(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, ModelRule)
    return [
        {
            **head,
            "patterns": list(rule.patterns),
            "allowed": rule.allowed,
            "resource": rule.resource,
            "action": rule.action,
        }
    ]


def lower_time(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, TimeRule)
    return [
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
    ]


def lower_access(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, AccessRule)
    return [
        {
            **head,
            "resource": rule.resource,
            "operation": rule.operation,
            "users": list(rule.users),
            "roles": list(rule.roles),
            "self": rule.self_owned,
            "action": rule.action,
        }
    ]


def lower_confirmation(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, ConfirmationRule)
    return [
        {
            **head,
            "operation": rule.operation,
            "resource": rule.resource,
            "resource_types": list(rule.resource_types),
            "action": rule.action,
        }
    ]


def lower_feature(rule: Rule, head: EntryHead) -> list[Entry]:
    assert isinstance(rule, FeatureRule)
    return [
        {
            **head,
            "feature": rule.feature,
            "enabled": rule.enabled,
            "requires_approval": rule.requires_approval,
            "approver_users": list(rule.approver_users),
            "approver_roles": list(rule.approver_roles),
            "action": rule.action,
        }
    ]
