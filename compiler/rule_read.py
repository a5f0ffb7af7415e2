"""Reading one rule of each kind: located YAML -> the rule's frozen dataclass (compiler/model.py).

compiler/registry.py names each kind's reader; validate.py has already chosen the kind from the
rule's keys, checked that every key belongs to it, and read what all kinds share (the RuleHead:
position, action, warn threshold, resource, operation, description). A reader returns the rule, or
None once it has reported why it cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from compiler.diagnostics import did_you_mean
from compiler.model import (
    WEEKDAYS,
    AccessRule,
    Action,
    ConfirmationRule,
    FeatureRule,
    LimitKind,
    LimitRule,
    LimitSpec,
    ModelRule,
    ParamRule,
    Scalar,
    Scope,
    TimeRule,
    glob_is_valid,
)
from compiler.parse import Node, describe
from compiler.reader import MAX_AMOUNT, Reader

SCOPES = ("global", "principal", "team")
# `@self` in allowed_users is not a role: the principal owns the resource the request names.
SELF_ROLE = "self"
PERIOD_NAMES = {"day": "daily", "month": "monthly"}
WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

# Every amount key of the limit kinds: key -> (kind, limit id suffix, window seconds, budget period).
# `monthly_budget` / `daily_budget` are the newer seed spelling of the same USD budgets.
LIMIT_KEYS: dict[str, tuple[LimitKind, str, int, str | None]] = {
    "requests_per_minute": ("rate", "rpm", 60, None),
    "requests_per_hour": ("rate", "rph", 3600, None),
    "requests_per_day": ("rate", "rpd", 86400, None),
    "max_tokens_per_request": ("tokens", "request", 0, None),
    "max_tokens_per_minute": ("tokens", "tpm", 60, None),
    "max_tokens_per_hour": ("tokens", "tph", 3600, None),
    "max_tokens_per_day": ("tokens", "tpd", 86400, None),
    "daily_budget_usd": ("budget", "day", 0, "day"),
    "monthly_budget_usd": ("budget", "month", 0, "month"),
    "daily_budget": ("budget", "day", 0, "day"),
    "monthly_budget": ("budget", "month", 0, "month"),
}


@dataclass(frozen=True)
class RuleHead:
    """What validate.py reads the same way for every kind."""

    kind: str
    index: int
    action: Action
    warn_at: float | None
    resource: str  # "*" when absent
    operation: str  # "*" when absent
    description: str | None


def limit_keys(kind: str) -> tuple[str, ...]:
    return tuple(key for key, (k, _, _, _) in LIMIT_KEYS.items() if k == kind)


# Counter order within a rule: the order of LIMIT_KEYS (so budgets list the day before the month).
_SUFFIX_ORDER: dict[str, list[str]] = {
    kind: [suffix for k, suffix, _, _ in LIMIT_KEYS.values() if k == kind]
    for kind in ("rate", "tokens", "budget")
}


def read_model(v: Reader, node: Node, head: RuleHead) -> ModelRule | None:
    model_node = node.get("model")
    patterns = v.strings(model_node, "'model'")
    if patterns is not None and model_node is not None:
        for pattern in patterns:
            if not glob_is_valid(pattern):
                v.error(model_node, f"invalid model pattern '{pattern}'", "check its [ ] and { } brackets")
    allowed = v.boolean(node.get("allowed"), "'allowed'")
    if patterns is None:
        return None
    allowed_flag = True if allowed is None else allowed
    return ModelRule(head.index, patterns, allowed_flag, head.resource, head.action, head.description)


def read_access(v: Reader, node: Node, head: RuleHead) -> AccessRule | None:
    principals = _principals(v, node.get("allowed_users"), "'allowed_users'")
    if principals is None:
        return None
    users, roles = principals
    return AccessRule(
        head.index,
        head.resource,
        head.operation,
        users,
        tuple(r for r in roles if r != SELF_ROLE),
        head.action,
        head.description,
        self_owned=SELF_ROLE in roles,
    )


def read_limit(v: Reader, node: Node, head: RuleHead) -> LimitRule | None:
    """Rate, token and budget rules: one counter (LimitSpec) per amount key the rule gives."""
    kind = cast(LimitKind, head.kind)
    scope = cast(Scope, v.choice(node.get("scope"), SCOPES, "scope") or "global")
    limits: list[LimitSpec] = []
    ok = True
    given: dict[str, str] = {}
    for key in limit_keys(kind):
        amount_node = node.get(key)
        if amount_node is None:
            continue
        _, suffix, window, period = LIMIT_KEYS[key]
        if suffix in given:
            v.error(
                amount_node,
                f"'{key}' and '{given[suffix]}' both set the {PERIOD_NAMES[str(period)]} budget",
                "give it once (both spellings are in USD)",
            )
            ok = False
            continue
        given[suffix] = key
        if kind == "budget":
            usd = v.number(amount_node, f"'{key}'")
            if usd is not None and usd <= 0:
                v.error(amount_node, f"'{key}' must be greater than zero, got {usd}")
                usd = None
            elif usd is not None and round(Decimal(str(usd)) * 1_000_000) < 1:
                v.error(amount_node, f"'{key}' is below one micro-dollar: {usd}")
                usd = None
            elif usd is not None and Decimal(str(usd)) * 1_000_000 > MAX_AMOUNT:
                v.error(
                    amount_node,
                    f"'{key}' is too large: {usd}",
                    f"the largest is {Decimal(MAX_AMOUNT) / 1_000_000} USD",
                )
                usd = None
            amount: int | float | None = usd
        else:
            amount = v.positive_int(amount_node, f"'{key}'")
        if amount is None:
            ok = False
            continue
        limits.append(LimitSpec(suffix, amount, window, period))
    if not ok:
        return None
    # Counters in the order of LIMIT_KEYS (budgets: the day before the month), whatever the YAML's.
    order = _SUFFIX_ORDER[kind]
    limit_tuple = tuple(sorted(limits, key=lambda spec: order.index(spec.suffix)))
    return LimitRule(
        kind, head.index, head.resource, limit_tuple, scope, head.action, head.warn_at, head.description
    )


def read_param(v: Reader, node: Node, head: RuleHead) -> ParamRule | None:
    parameter = v.string(node.get("parameter"), "'parameter'")
    low = v.number(node.get("min"), "'min'")
    high = v.number(node.get("max"), "'max'")
    max_length = v.positive_int(node.get("max_length"), "'max_length'")
    values_node = node.get("allowed_values")
    values: tuple[Scalar, ...] | None = None
    if values_node is not None:
        if values_node.kind != "sequence" or not values_node.elements():
            v.error(values_node, f"'allowed_values' must be a non-empty list, got {describe(values_node)}")
        else:
            scalars = [e for e in values_node.elements() if e.kind == "scalar" and e.value is not None]
            for element in values_node.elements():
                if element not in scalars:
                    v.error(
                        element,
                        f"each allowed value must be a string, number or boolean, got {describe(element)}",
                    )
            if len(scalars) == len(values_node.elements()):
                values = tuple(cast(Scalar, e.value) for e in scalars)
    if low is not None and high is not None and low > high:
        min_node = node.get("min")
        assert min_node is not None
        v.error(min_node, f"'min' {low} is above 'max' {high}", "swap them, or fix the typo")
    if all(node.get(k) is None for k in ("min", "max", "max_length", "allowed_values")):
        v.error(
            node,
            f"parameter rule for '{parameter}' sets no bound",
            "add min, max, max_length or allowed_values",
        )
        return None
    if parameter is None:
        return None
    return ParamRule(
        head.index,
        parameter,
        low,
        high,
        max_length,
        values,
        head.resource,
        head.operation,
        head.action,
        head.description,
    )


def read_time(v: Reader, node: Node, head: RuleHead) -> TimeRule:
    return TimeRule(
        index=head.index,
        operation=head.operation,
        resource=head.resource,
        allowed_hours=_windows(v, node.get("allowed_hours"), "'allowed_hours'"),
        forbidden_hours=_windows(v, node.get("forbidden_hours"), "'forbidden_hours'"),
        allowed_days=_days(v, node.get("allowed_days"), "'allowed_days'"),
        forbidden_days=_days(v, node.get("forbidden_days"), "'forbidden_days'"),
        action=head.action,
        description=head.description,
    )


def _windows(v: Reader, node: Node | None, what: str) -> tuple[tuple[int, int], ...]:
    if node is None:
        return ()
    elements = node.elements() if node.kind == "sequence" else (node,)
    if not elements:
        v.error(node, f"{what} lists no window", 'write e.g. "22:00-06:00"')
    out: list[tuple[int, int]] = []
    for element in elements:
        window = _window(v, element, what)
        if window is not None:
            out.append(window)
    return tuple(out)


def _window(v: Reader, node: Node, what: str) -> tuple[int, int] | None:
    if node.kind != "scalar" or not isinstance(node.value, str):
        v.error(node, f'{what} must be a quoted window like "22:00-06:00", got {describe(node)}')
        return None
    text = node.value
    match = WINDOW.match(text)
    if not match:
        v.error(node, f"malformed time window '{text}'", 'write HH:MM-HH:MM, e.g. "22:00-06:00"')
        return None
    sh, sm, eh, em = (int(g) for g in match.groups())
    problems: list[str] = []
    if sh > 23:
        problems.append(f"start hour {sh:02d} is past 23")
    if eh > 24 or (eh == 24 and em != 0):
        problems.append(f"end {eh:02d}:{em:02d} is past 24:00")
    if sm > 59 or em > 59:
        problems.append("minutes run from 00 to 59")
    if problems:
        v.error(node, f"impossible time window '{text}': " + "; ".join(problems), "hours run 00:00-24:00")
        return None
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end or (start == 0 and end == 0):
        v.error(
            node, f"empty time window '{text}': start equals end", 'write "00:00-24:00" for the whole day'
        )
        return None
    return start, end


def _days(v: Reader, node: Node | None, what: str) -> tuple[str, ...]:
    names = v.strings(node, what)
    if names is None or node is None:
        return ()
    elements = node.elements() if node.kind == "sequence" else (node,)
    out: list[str] = []
    for name, element in zip(names, elements, strict=True):
        day = name.strip().lower()
        day = next((full for full in WEEKDAYS if full[:3] == day), day)  # "sat" is Saturday
        if day not in WEEKDAYS:
            v.error(element, f"unknown weekday '{name}' in {what}", did_you_mean(day, WEEKDAYS))
        elif day not in out:
            out.append(day)
    return tuple(out)


def _principals(v: Reader, node: Node | None, what: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(user ids, role names) from a list mixing `@role` and user ids."""
    names = v.strings(node, what)
    if names is None or node is None:
        return None
    users: list[str] = []
    roles: list[str] = []
    for name in names:
        if name.startswith("@"):
            role = name[1:].strip()
            if not role:
                v.error(node, f"'{name}' in {what} names no role", "write '@admin' for the admin role")
                return None
            roles.append(role)
        else:
            users.append(name.strip())
    return tuple(users), tuple(roles)


def read_confirmation(v: Reader, node: Node, head: RuleHead) -> ConfirmationRule | None:
    requires_node = node.get("requires")
    requires = v.string(requires_node, "'requires'")
    if requires is not None and requires_node is not None and requires != "confirmation":
        v.error(requires_node, f"unknown requirement '{requires}'", "the only requirement is 'confirmation'")
    if node.get("operation") is None:
        v.error(node, "a confirmation rule needs an 'operation'", "e.g. operation: delete")
        return None
    types = (
        v.strings(node.get("resource_types"), "'resource_types'") if node.get("resource_types") else ("*",)
    )
    if types is None or (requires_node is not None and requires != "confirmation"):
        return None
    return ConfirmationRule(head.index, head.operation, head.resource, types, head.action, head.description)


def read_feature(v: Reader, node: Node, head: RuleHead) -> FeatureRule | None:
    feature = v.string(node.get("feature"), "'feature'")
    enabled_node = node.get("enabled")
    enabled = v.boolean(enabled_node, "'enabled'")
    if enabled_node is None:
        v.error(node, f"feature rule '{feature}' needs 'enabled: true' or 'enabled: false'")
    approval = v.boolean(node.get("requires_approval"), "'requires_approval'")
    approvers: tuple[tuple[str, ...], tuple[str, ...]] | None = ((), ("admin",))
    if node.get("approvers") is not None:
        approvers = _principals(v, node.get("approvers"), "'approvers'")
    if feature is None or enabled is None or approvers is None:
        return None
    return FeatureRule(
        head.index,
        feature,
        enabled,
        bool(approval),
        approvers[0],
        approvers[1],
        head.action,
        head.description,
    )
