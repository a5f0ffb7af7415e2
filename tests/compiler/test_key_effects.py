"""No rule key is accepted and ignored: changing any key the validator accepts changes the bundle.

For every rule kind of the registry, a small rule and, for each key the kind accepts, a change of
that key alone (None deletes a key). The compiled data (data.json) of the two files must differ,
or the changed file must be refused. The table must name every accepted key of every kind, so a key
added to the registry without an effect fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler.api import compile_policy
from compiler.errors import PolicyError
from compiler.lower import config_json
from compiler.registry import REGISTRY

BASES: dict[str, dict[str, Any]] = {
    "rate": {"requests_per_minute": 5},
    "budget": {"monthly_budget_usd": 10},
    "tokens": {"max_tokens_per_request": 100},
    "param": {"parameter": "temperature", "max": 1.0},
    "time": {"operation": "batch", "forbidden_hours": ["22:00-06:00"]},
    "model": {"model": "tinyllama"},
    "access": {"allowed_users": ["@admin"]},
    "confirmation": {"operation": "delete", "requires": "confirmation"},
    "feature": {"feature": "beta", "enabled": True},
}

_LIMIT_COMMON: dict[str, dict[str, Any]] = {
    "resource": {"resource": "tinyllama"},
    "alert_at_percentage": {"alert_at_percentage": 50},
    "warn_at_percentage": {"warn_at_percentage": 60},
    "scope": {"scope": "principal"},
    "action": {"action": "warn"},
    "description": {"description": "why"},
}

CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "rate": {
        "requests_per_minute": {"requests_per_minute": 6},
        "requests_per_hour": {"requests_per_hour": 50},
        "requests_per_day": {"requests_per_day": 500},
        **_LIMIT_COMMON,
    },
    "budget": {
        "monthly_budget_usd": {"monthly_budget_usd": 11},
        "daily_budget_usd": {"daily_budget_usd": 1},
        "monthly_budget": {"monthly_budget_usd": None, "monthly_budget": 12},
        "daily_budget": {"daily_budget": 2},
        **_LIMIT_COMMON,
    },
    "tokens": {
        "max_tokens_per_request": {"max_tokens_per_request": 101},
        "max_tokens_per_minute": {"max_tokens_per_minute": 1000},
        "max_tokens_per_hour": {"max_tokens_per_hour": 10000},
        "max_tokens_per_day": {"max_tokens_per_day": 100000},
        **_LIMIT_COMMON,
    },
    "param": {
        "parameter": {"parameter": "top_p"},
        "min": {"min": 0.5},
        "max": {"max": 2.0},
        "max_length": {"max_length": 10},
        "allowed_values": {"allowed_values": [0.5]},
        "resource": {"resource": "tinyllama"},
        "operation": {"operation": "chat"},
        "action": {"action": "warn"},
        "description": {"description": "why"},
    },
    "time": {
        "forbidden_hours": {"forbidden_hours": ["21:00-06:00"]},
        "allowed_hours": {"allowed_hours": ["06:00-20:00"]},
        "forbidden_days": {"forbidden_days": ["sunday"]},
        "allowed_days": {"allowed_days": ["monday"]},
        "operation": {"operation": "deploy"},
        "resource": {"resource": "tinyllama"},
        "action": {"action": "require_confirmation"},
        "description": {"description": "why"},
    },
    "model": {
        "model": {"model": "mistral"},
        "allowed": {"allowed": False},
        "resource": {"resource": "tinyllama"},
        "action": {"action": "warn"},
        "description": {"description": "why"},
    },
    "access": {
        "allowed_users": {"allowed_users": ["@self"]},
        "resource": {"resource": "stats"},
        "operation": {"operation": "stats"},
        "action": {"action": "warn"},
        "description": {"description": "why"},
    },
    "confirmation": {
        "requires": {"requires": None},
        "operation": {"operation": "truncate"},
        "resource_types": {"resource_types": ["file"]},
        "resource": {"resource": "db"},
        "action": {"action": "block"},
        "description": {"description": "why"},
    },
    "feature": {
        "feature": {"feature": "vision"},
        "enabled": {"enabled": False},
        "requires_approval": {"requires_approval": True},
        "approvers": {"requires_approval": True, "approvers": ["@ops"]},
        "action": {"action": "warn"},
        "description": {"description": "why"},
    },
}
# `approvers` only matters once approval is required: compare with approval required alone.
BASE_OVERRIDES = {("feature", "approvers"): {"requires_approval": True}}

CASES = [(kind, key) for kind in CHANGES for key in CHANGES[kind]]


def _compiled(tmp_path: Path, name: str, rule: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.yaml"
    doc = {"policies": [{"id": "p", "rules": [{k: v for k, v in rule.items() if v is not None}]}]}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return _bundle_text(path)


def _bundle_text(path: Path) -> str:
    """The compiled data and every generated test file, or why the file is refused."""
    try:
        compiled = compile_policy(path)
    except PolicyError as exc:
        return f"refused: {exc}"
    generated = [
        f"{name}\n{text.decode()}"
        for name, text in sorted(compiled.bundle.files.items())
        if "/generated/" in name
    ]
    return "\n".join([config_json(compiled.config).decode(), *generated])


def test_the_table_names_every_accepted_key_of_every_kind() -> None:
    assert set(CHANGES) == set(REGISTRY)
    for name, kind in REGISTRY.items():
        assert set(CHANGES[name]) == set(kind.keys), name


@pytest.mark.parametrize(("kind", "key"), CASES, ids=[f"{k}.{key}" for k, key in CASES])
def test_changing_the_key_changes_the_bundle(tmp_path: Path, kind: str, key: str) -> None:
    base = {**BASES[kind], **BASE_OVERRIDES.get((kind, key), {})}
    before = _compiled(tmp_path, "before", base)
    assert not before.startswith("refused"), before
    after = _compiled(tmp_path, "after", {**base, **CHANGES[kind][key]})
    assert after != before


POLICY_CHANGES: dict[str, dict[str, Any]] = {
    "id": {"id": "q"},
    "description": {"description": "why"},
    "enabled": {"enabled": False},
    "rules": {"rules": [{"requests_per_minute": 6}]},
}


def test_policy_keys_are_all_in_the_table() -> None:
    from compiler.validate import POLICY_KEYS

    assert set(POLICY_CHANGES) == set(POLICY_KEYS)


@pytest.mark.parametrize("key", sorted(POLICY_CHANGES))
def test_changing_a_policy_key_changes_the_bundle(tmp_path: Path, key: str) -> None:
    base = {"id": "p", "rules": [{"requests_per_minute": 5}]}
    texts = []
    for name, policy in (("before", base), ("after", {**base, **POLICY_CHANGES[key]})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"policies": [policy]}), encoding="utf-8")
        texts.append(_bundle_text(path))
    assert not texts[0].startswith("refused"), texts[0]
    assert texts[1] != texts[0]
