"""Located warnings: forms that are valid but probably not what the author meant.

Errors stop the compiler; warnings do not, except under `hexarch check --strict` or
`hexarch test --strict`. Each warning is a Diagnostic with severity "warning", printed as
`FILE:LINE:COL: warning: MESSAGE (at PATH); HINT`, located at the key that causes it.

Warnings given while reading a rule (e.g. `action: allow` on a limit) come from the validator;
the checks here look at the whole validated file at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from compiler.diagnostics import Diagnostic
from compiler.model import WEEKDAYS, LimitRule, ModelRule, PolicyFile, TimeRule, glob_match
from compiler.parse import Node

WHOLE_DAY = 24 * 60


def lint(model: PolicyFile, tree: Node) -> tuple[Diagnostic, ...]:
    """Every whole-file warning of a validated model, located in its YAML tree."""
    policies_node = tree.get("policies")
    if policies_node is None or policies_node.kind != "sequence":
        return ()
    out: list[Diagnostic] = []
    nodes = policies_node.elements()
    for policy, policy_node in zip(model.policies, nodes, strict=True):
        rules_node = policy_node.get("rules")
        if rules_node is None or rules_node.kind != "sequence":
            continue
        rule_nodes = rules_node.elements()
        allow_rules = [r for r in policy.rules if isinstance(r, ModelRule) and r.allowed]
        if allow_rules and {p for r in allow_rules for p in r.patterns} == {"*"}:
            node = rule_nodes[allow_rules[0].index]
            out.append(
                _warning(
                    node.get("model") or node,
                    f"the allow-list of policy '{policy.id}' lists only '*': it permits every model",
                    "list the permitted models by name (e.g. model: tinyllama), or delete the policy",
                )
            )
        for rule in policy.rules:
            if isinstance(rule, TimeRule):
                out.extend(_time_warnings(rule, rule_nodes[rule.index]))
    out.extend(_unpriced_budgets(model, nodes))
    return tuple(out)


def _warning(node: Node, message: str, hint: str | None = None) -> Diagnostic:
    return dataclasses.replace(node.diag(message, hint), severity="warning")


def _time_warnings(rule: TimeRule, node: Node) -> Iterator[Diagnostic]:
    """A window list that can never restrict anything."""
    whole = [w for w in rule.allowed_hours if _minutes(w) >= WHOLE_DAY]
    if whole:
        yield _warning(
            node.get("allowed_hours") or node,
            "allowed_hours covers the whole day: this window never matches, so it restricts nothing",
            'give the hours the operation is allowed in, e.g. "18:00-08:00"',
        )
    if rule.allowed_days and set(rule.allowed_days) == set(WEEKDAYS):
        yield _warning(
            node.get("allowed_days") or node,
            "allowed_days lists every day of the week: it restricts nothing",
            "list only the days the operation is allowed on",
        )


def _minutes(window: tuple[int, int]) -> int:
    start, end = window
    return end - start if start <= end else WHOLE_DAY - start + end


def _unpriced_budgets(model: PolicyFile, policy_nodes: tuple[Node, ...]) -> Iterator[Diagnostic]:
    """A budget counted at the built-in default price because no `pricing` entry covers the models
    the policy lets through (its allow-listed models, or any model when there is no allow-list)."""
    listed = sorted(
        {
            pattern
            for policy in model.enabled_policies
            for rule in policy.rules
            if isinstance(rule, ModelRule) and rule.allowed
            for pattern in rule.patterns
        }
    )
    if listed:
        unpriced = [
            m for m in listed if not any(p.model == m or glob_match(p.model, m) for p in model.pricing)
        ]
    else:
        unpriced = [] if any(p.model == "*" for p in model.pricing) else ["any model"]
    if not unpriced:
        return
    for policy, policy_node in zip(model.policies, policy_nodes, strict=True):
        if not policy.enabled:
            continue
        rules_node = policy_node.get("rules")
        if rules_node is None or rules_node.kind != "sequence":
            continue
        for rule in policy.rules:
            if not isinstance(rule, LimitRule) or rule.kind != "budget":
                continue
            node = rules_node.elements()[rule.index]
            key = next((k for k in node.keys() if "budget" in k), None)  # noqa: SIM118 - Node, not dict
            yield _warning(
                (node.get(key) if key else None) or node,
                f"budget of policy '{policy.id}' has no pricing for {', '.join(unpriced)}: "
                "its cost is counted at the default price",
                "add a top-level 'pricing:' entry, e.g. pricing: {tinyllama: {input_per_million_usd: 0, "
                "output_per_million_usd: 0}}",
            )
