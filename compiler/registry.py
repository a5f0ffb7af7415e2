"""The rule kinds: one entry per kind, which validate, lower, emit and the JSON Schema dispatch through.

An entry says everything the compiler knows about a kind:

    name / label      "tokens" / "token rule" (messages)
    kind_keys         the keys that give a rule this kind (any one of them)
    other_keys        the further keys the kind accepts (besides `description`)
    model             its frozen dataclass (compiler/model.py)
    read              located YAML -> dataclass (compiler/rule_read.py)
    config_list       the list of data.hexarch.config its entries go to
    lower             dataclass -> entries of that list (compiler/rule_lower.py)
    emit              the _Emitter method that writes its generated tests (compiler/emit.py);
                      with emit_per_policy, it gets all of a policy's rules of the kind at once
    rego_package      the package of rego/hexarch/ whose `findings` check it (None: limits, which
                      hexarch.lib.limits turns into counters for the sidecar)

Adding a kind is one entry here plus its reader, lowering, emitter method and Rego package; the
Rego wiring lists (findings.rego, decision.rego) are checked against this table by
tests/compiler/test_registry.py. See docs/adding-a-rule-kind.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compiler.errors import EmitError
from compiler.model import (
    WEEKDAYS,
    AccessRule,
    ConfirmationRule,
    FeatureRule,
    LimitRule,
    ModelRule,
    ParamRule,
    Rule,
    TimeRule,
)
from compiler.parse import Node
from compiler.reader import Reader
from compiler.rule_lower import (
    Entry,
    EntryHead,
    lower_access,
    lower_confirmation,
    lower_feature,
    lower_limit,
    lower_model,
    lower_param,
    lower_time,
)
from compiler.rule_read import (
    SCOPES,
    RuleHead,
    limit_keys,
    read_access,
    read_confirmation,
    read_feature,
    read_limit,
    read_model,
    read_param,
    read_time,
)

ACTIONS = ("block", "warn", "allow", "require_confirmation")
LIMIT_KINDS = ("rate", "budget", "tokens")

Reader_ = Callable[[Reader, Node, RuleHead], Rule | None]
Lowering = Callable[[Rule, EntryHead], list[Entry]]


@dataclass(frozen=True)
class RuleKind:
    name: str
    label: str
    kind_keys: tuple[str, ...]
    other_keys: tuple[str, ...]
    model: type
    read: Reader_
    config_list: str
    lower: Lowering
    emit: str
    rego_package: str | None
    emit_per_policy: bool = False  # the emitter method takes all the policy's rules of this kind

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key a rule of this kind accepts."""
        return (*self.kind_keys, *self.other_keys, "description")


# The seeds write alert_at_percentage on budgets and warn_at_percentage on tokens; both mean the
# same warn threshold, so every limit kind takes either spelling.
_LIMIT_OTHER = ("resource", "alert_at_percentage", "warn_at_percentage", "scope", "action")

REGISTRY: Mapping[str, RuleKind] = {
    kind.name: kind
    for kind in (
        RuleKind(
            "rate", "rate", limit_keys("rate"), _LIMIT_OTHER, LimitRule, read_limit,
            "rate_limits", lower_limit, "limit_rule", None,
        ),
        RuleKind(
            "budget", "budget", limit_keys("budget"), _LIMIT_OTHER, LimitRule, read_limit,
            "budgets", lower_limit, "limit_rule", None,
        ),
        RuleKind(
            "tokens", "token", limit_keys("tokens"), _LIMIT_OTHER, LimitRule, read_limit,
            "token_limits", lower_limit, "limit_rule", None,
        ),
        RuleKind(
            "param", "param", ("parameter",),
            ("min", "max", "max_length", "allowed_values", "resource", "operation", "action"),
            ParamRule, read_param, "param_bounds", lower_param, "param_rule", "params",
        ),
        RuleKind(
            "time", "time", ("forbidden_hours", "allowed_hours", "forbidden_days", "allowed_days"),
            ("operation", "resource", "action"),
            TimeRule, read_time, "time_windows", lower_time, "time_rule", "time_windows",
        ),
        RuleKind(
            "model", "model", ("model",), ("allowed", "resource", "action"),
            ModelRule, read_model, "model_rules", lower_model, "model_policy", "models", True,
        ),
        RuleKind(
            "access", "access", ("allowed_users",), ("resource", "operation", "action"),
            AccessRule, read_access, "access_rules", lower_access, "access_rule", "access",
        ),
        RuleKind(
            # Also given by `operation` + `action: require_confirmation` alone (the seed's form).
            "confirmation", "confirmation", ("requires",),
            ("operation", "resource_types", "resource", "action"),
            ConfirmationRule, read_confirmation, "confirmations", lower_confirmation,
            "confirmation_rule", "confirmations",
        ),
        RuleKind(
            "feature", "feature", ("feature",), ("enabled", "requires_approval", "approvers", "action"),
            FeatureRule, read_feature, "features", lower_feature, "feature_rule", "features",
        ),
    )
}  # fmt: skip

KIND_KEY_NAMES = tuple(key for kind in REGISTRY.values() for key in kind.kind_keys)
RULE_LISTS = tuple(dict.fromkeys(kind.config_list for kind in REGISTRY.values()))


def kind_of(rule: Rule) -> RuleKind:
    """The registry entry of a validated rule; EmitError for anything else (a compiler bug)."""
    kind = REGISTRY.get(str(getattr(rule, "kind", "")))
    if kind is None:
        raise EmitError(f"no rule kind for {type(rule).__name__}: every kind needs a registry entry")
    return kind


# --- JSON Schema of each rule key (schema/hexarch.schema.json is generated from these) -----------

_STRINGS: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
}
_WINDOW: dict[str, Any] = {"type": "string", "pattern": r"^\s*\d{1,2}:\d{2}\s*-\s*\d{1,2}:\d{2}\s*$"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 1}
_USD: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
_PERCENT: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}
_DAYS: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    "examples": [list(WEEKDAYS[5:])],
}
_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}

KEY_SCHEMAS: dict[str, dict[str, Any]] = {
    "description": {"type": "string"},
    "resource": {"type": "string"},
    "operation": {"type": "string"},
    "action": {
        "anyOf": [{"enum": list(ACTIONS)}, {"type": "string", "pattern": r"^warn_at_\d+(\.\d+)?%$"}],
        "description": "block, warn, allow (never weakens a rule), require_confirmation, or warn_at_NN%",
    },
    "scope": {"enum": list(SCOPES)},
    "alert_at_percentage": _PERCENT,
    "warn_at_percentage": _PERCENT,
    **{key: _COUNT for kind in ("rate", "tokens") for key in limit_keys(kind)},
    **{key: {**_USD, "description": "USD"} for key in limit_keys("budget")},
    "parameter": {"type": "string"},
    "min": {"type": "number"},
    "max": {"type": "number"},
    "max_length": _COUNT,
    "allowed_values": {"type": "array", "items": _SCALAR, "minItems": 1},
    "forbidden_hours": {"anyOf": [_WINDOW, {"type": "array", "items": _WINDOW, "minItems": 1}]},
    "allowed_hours": {"anyOf": [_WINDOW, {"type": "array", "items": _WINDOW, "minItems": 1}]},
    "forbidden_days": _DAYS,
    "allowed_days": _DAYS,
    "model": {**_STRINGS, "description": "model name glob(s)"},
    "allowed": {"type": "boolean"},
    "allowed_users": {**_STRINGS, "description": "user ids and @role names; @self: the resource's owner"},
    "requires": {"const": "confirmation"},
    "resource_types": _STRINGS,
    "feature": {"type": "string"},
    "enabled": {"type": "boolean"},
    "requires_approval": {"type": "boolean"},
    "approvers": _STRINGS,
}
