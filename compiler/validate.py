"""Stage 2: located YAML nodes -> the frozen model, collecting every problem before failing.

A guardrail file with a typo must never compile into a weaker policy, so every key is checked
against the keys its section (or rule kind) accepts, and every value against its type and range.
All diagnostics are gathered and raised together as one PolicyError.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import cast

from compiler.diagnostics import did_you_mean
from compiler.errors import PolicyError
from compiler.lint import lint
from compiler.model import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Action,
    CustomPolicy,
    Enforcement,
    Policy,
    PolicyFile,
    Price,
    Rule,
    Upstream,
    glob_is_valid,
)
from compiler.parse import Node, describe
from compiler.reader import Reader
from compiler.registry import ACTIONS, KIND_KEY_NAMES, LIMIT_KINDS, REGISTRY
from compiler.rule_read import RuleHead

TOP_LEVEL_KEYS = (
    "version",
    "enforcement",
    "timezone",
    "logging",
    "opa",
    "pricing",
    "defaults",
    "custom",
    "policies",
    "sidecar",
)
# Top-level keys starting with "x-" are the user's own (a place for YAML anchors, as in
# docker-compose files); nothing reads them.
EXTENSION_PREFIX = "x-"
# A top-level mapping with one of these keys is an upstream section (`tinyllama: {api_url: ...}`).
# The compiler only recognises the sections it does not own: `logging`, `opa`, `sidecar` and upstream
# sections are read and checked by their one owner, sidecar/settings.py (`hexarch check` runs both).
UPSTREAM_URL_KEYS = ("base_url", "api_url")
ENFORCEMENTS = ("strict", "warn", "monitor")

# Keys that are right in another place of the file: say where, rather than guess a spelling.
MISPLACED_KEYS = {
    "timezone": "the timezone is set once, at the top level of the file",
    "enforcement": "enforcement is set once, at the top level of the file",
    "pricing": "pricing is a top-level section: pricing: {MODEL_GLOB: {input_per_million_usd, ...}}",
    "enabled": "'enabled: false' belongs to a policy (it switches the policy off); delete the rule instead",
}
PRICE_DECIMALS = 9
POLICY_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
CUSTOM_ID = re.compile(r"^[a-z_][a-z0-9_]*$")
WARN_AT_ACTION = re.compile(r"^warn_at_(\d+(?:\.\d+)?)%$")


def validate(tree: Node, base_dir: Path | None = None) -> PolicyFile:
    """Check the whole document; return the model or raise PolicyError with every diagnostic."""
    v = Reader(tree.file)
    model = _validate_file(v, tree, base_dir if base_dir is not None else Path(tree.file).parent)
    if v.diags or model is None:
        if not v.diags:  # pragma: no cover - _validate_file only returns None after reporting
            v.error(tree, "invalid policy file")
        raise PolicyError(v.diags)
    found = (*v.warnings, *lint(model, tree))
    return replace(model, warnings=tuple(sorted(found, key=lambda d: (d.line, d.col, d.message))))


def _validate_file(v: Reader, tree: Node, base_dir: Path) -> PolicyFile | None:
    if not v.mapping(tree, "the policy file"):
        return None
    upstreams: list[Upstream] = []
    for key, value in tree.items():
        name = str(key.value)
        if name in TOP_LEVEL_KEYS or name.startswith(EXTENSION_PREFIX):
            continue
        if value.kind == "mapping" and any(value.get(k) is not None for k in UPSTREAM_URL_KEYS):
            upstreams.append(Upstream(name))
            continue
        hint = (
            did_you_mean(name, TOP_LEVEL_KEYS)
            or "an upstream section is a mapping with a base_url (or api_url); keys starting with 'x-' "
            "are ignored"
        )
        v.unknown_key(tree, key, f"unknown top-level key '{name}'", hint)

    version = 1
    version_node = tree.get("version")
    if version_node is not None and (
        version_node.kind != "scalar" or isinstance(version_node.value, bool) or version_node.value != 1
    ):
        v.error(version_node, f"unsupported version: {describe(version_node)}", "the only version is 1")

    enforcement = v.choice(tree.get("enforcement"), ENFORCEMENTS, "enforcement") or "strict"
    timezone = _timezone(v, tree.get("timezone")) or "UTC"
    pricing = _pricing(v, tree.get("pricing"))
    default_max_output = _defaults(v, tree.get("defaults"))
    custom = _custom(v, tree.get("custom"), base_dir)

    policies_node = tree.get("policies")
    policies: list[Policy] = []
    if policies_node is None:
        v.error(tree, "the policy file has no 'policies' list", "add 'policies:' with at least one policy")
    elif policies_node.kind != "sequence":
        v.error(policies_node, f"'policies' must be a list, got {describe(policies_node)}")
    else:
        seen: dict[str, Node] = {}
        for element in policies_node.elements():
            policy = _policy(v, element, seen)
            if policy is not None:
                policies.append(policy)

    if v.diags:
        return None
    return PolicyFile(
        source=tree.file,
        version=version,
        enforcement=cast(Enforcement, enforcement),
        timezone=timezone,
        pricing=pricing,
        default_max_output_tokens=default_max_output,
        custom=custom,
        policies=tuple(policies),
        upstreams=tuple(upstreams),
    )


# --- top-level sections ----------------------------------------------------------------------------


def _timezone(v: Reader, node: Node | None) -> str | None:
    name = v.string(node, "timezone")
    if name is None or node is None:
        return None
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(name, zoneinfo.available_timezones()) or "use an IANA name such as 'Europe/Paris'"
        v.error(node, f"unknown timezone '{name}'", hint)
        return None
    return name


def _pricing(v: Reader, node: Node | None) -> tuple[Price, ...]:
    if node is None or not v.mapping(node, "'pricing'"):
        return ()
    prices: list[Price] = []
    for key, entry in node.items():
        pattern = str(key.value)
        if not glob_is_valid(pattern):
            v.error(key, f"invalid model pattern '{pattern}'", "check its [ ] and { } brackets")
        if not v.mapping(entry, f"the price of '{pattern}'"):
            continue
        fields = ("input_per_million_usd", "output_per_million_usd")
        v.check_keys(entry, fields, f"the price of '{pattern}'")
        values: list[float] = []
        for field in fields:
            field_node = entry.get(field)
            if field_node is None:
                v.error(entry, f"the price of '{pattern}' needs '{field}'")
                continue
            price = v.number(field_node, f"'{field}'")
            if price is not None and price < 0:
                v.error(field_node, f"'{field}' must not be negative, got {price}")
            elif price is not None and _decimals(price) > PRICE_DECIMALS:
                # OPA computes costs in whole billionths of these units (rego/hexarch/limits.rego).
                v.error(
                    field_node,
                    f"'{field}' has more than {PRICE_DECIMALS} decimal places: {price}",
                    "a price is counted in billionths of a dollar per million tokens",
                )
            elif price is not None:
                values.append(price)
        if len(values) == 2:
            prices.append(Price(pattern, values[0], values[1]))
    return tuple(prices)


def _defaults(v: Reader, node: Node | None) -> int:
    if node is None or not v.mapping(node, "'defaults'"):
        return DEFAULT_MAX_OUTPUT_TOKENS
    v.check_keys(node, ("max_output_tokens",), "'defaults'")
    value = v.positive_int(node.get("max_output_tokens"), "'defaults.max_output_tokens'")
    return DEFAULT_MAX_OUTPUT_TOKENS if value is None else value


def _custom(v: Reader, node: Node | None, base_dir: Path) -> tuple[CustomPolicy, ...]:
    if node is None:
        return ()
    if node.kind != "sequence":
        v.error(node, f"'custom' must be a list of {{id, file}}, got {describe(node)}")
        return ()
    out: list[CustomPolicy] = []
    seen: dict[str, Node] = {}
    for entry in node.elements():
        if not v.mapping(entry, "each 'custom' entry"):
            continue
        v.check_keys(entry, ("id", "file", "description"), "a custom policy")
        id_node, file_node = entry.get("id"), entry.get("file")
        if id_node is None or file_node is None:
            v.error(entry, "a custom policy needs 'id' and 'file'")
            continue
        v.string(entry.get("description"), "'description'")
        cid = v.string(id_node, "custom policy id")
        fname = v.string(file_node, "custom policy file")
        if cid is None or fname is None:
            continue
        if not CUSTOM_ID.match(cid):
            v.error(id_node, f"custom policy id '{cid}' must be a Rego name (lower-case letters, digits, _)")
            continue
        if cid in seen:
            v.error(id_node, f"duplicate custom policy id '{cid}'", f"first given at line {seen[cid].line}")
            continue
        seen[cid] = id_node
        path = (base_dir / fname).resolve()
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            v.error(
                file_node, f"cannot read custom policy file '{fname}': {exc.strerror}", f"looked at {path}"
            )
            continue
        except UnicodeDecodeError:
            v.error(file_node, f"custom policy file '{fname}' is not UTF-8 text")
            continue
        if not re.search(rf"^\s*package\s+hexarch\.custom\.{cid}\s*$", source, re.MULTILINE):
            v.error(file_node, f"'{fname}' must declare 'package hexarch.custom.{cid}'")
            continue
        out.append(CustomPolicy(cid, path, source))
    return tuple(out)


# --- policies and rules --------------------------------------------------------------------------------


def _policy(v: Reader, node: Node, seen: dict[str, Node]) -> Policy | None:
    if not v.mapping(node, "each policy"):
        return None
    v.check_keys(node, ("id", "description", "enabled", "rules"), "a policy", misplaced=MISPLACED_KEYS)
    id_node = node.get("id")
    pid: str | None = None
    if id_node is None:
        v.error(node, "a policy needs an 'id'")
    else:
        pid = v.string(id_node, "policy id")
        if pid is not None and not POLICY_ID.match(pid):
            v.error(id_node, f"policy id '{pid}' may only use letters, digits, '_', '.' and '-'")
            pid = None
        elif pid is not None and pid in seen:
            v.error(id_node, f"duplicate policy id '{pid}'", f"first given at line {seen[pid].line}")
            pid = None
        elif pid is not None:
            seen[pid] = id_node
    description = v.string(node.get("description"), "'description'")
    enabled = v.boolean(node.get("enabled"), "'enabled'")
    rules_node = node.get("rules")
    rules: list[Rule] = []
    if rules_node is None:
        v.error(node, "a policy needs a 'rules' list")
    elif rules_node.kind != "sequence" or not rules_node.elements():
        v.error(rules_node, f"'rules' must be a non-empty list, got {describe(rules_node)}")
    else:
        for index, rule_node in enumerate(rules_node.elements()):
            rule = _rule(v, rule_node, index)
            if rule is not None:
                rules.append(rule)
    if pid is None:
        return None
    return Policy(pid, description, True if enabled is None else enabled, tuple(rules))


def _rule(v: Reader, node: Node, index: int) -> Rule | None:
    if not v.mapping(node, "each rule"):
        return None
    keys = node.keys()
    kinds = [kind.name for kind in REGISTRY.values() if any(k in keys for k in kind.kind_keys)]
    if not kinds and _confirmation_by_action(node):
        # The seed's form: `operation: delete, action: require_confirmation`, with no `requires`.
        kinds = ["confirmation"]
    if len(kinds) != 1:
        known = {k for kind in REGISTRY.values() for k in kind.keys}
        unknown = [(key, str(key.value)) for key, _ in node.items() if str(key.value) not in known]
        for key, name in unknown:
            hint = MISPLACED_KEYS.get(name) or did_you_mean(name, known)
            v.unknown_key(node, key, f"unknown key '{name}' in a rule", hint)
        if len(kinds) > 1:
            named = "; ".join(
                f"{kind} ({', '.join(k for k in REGISTRY[kind].kind_keys if k in keys)})" for kind in kinds
            )
            v.error(
                node,
                f"rule mixes keys of {len(kinds)} rule kinds: {named}",
                "split it into one rule per kind",
            )
        elif not any(did_you_mean(name, KIND_KEY_NAMES) for _, name in unknown):
            # Unless a typo of a kind key explains it (reported above), say what is missing.
            v.error(
                node,
                "rule has no key that gives its kind",
                "add one of "
                + ", ".join(KIND_KEY_NAMES)
                + ", or 'operation' with 'action: require_confirmation'",
            )
        return None
    kind = REGISTRY[kinds[0]]
    v.check_keys(node, kind.keys, f"a {kind.label} rule", misplaced=MISPLACED_KEYS)
    description = v.string(node.get("description"), "'description'")
    action, warn_at = _action(v, node, kind.name)
    resource = v.string(node.get("resource"), "'resource'") or "*"
    operation = v.string(node.get("operation"), "'operation'") or "*"
    return kind.read(v, node, RuleHead(kind.name, index, action, warn_at, resource, operation, description))


def _confirmation_by_action(node: Node) -> bool:
    action = node.get("action")
    return (
        node.get("operation") is not None
        and action is not None
        and action.kind == "scalar"
        and action.value == "require_confirmation"
    )


def _action(v: Reader, node: Node, kind: str) -> tuple[Action, float | None]:
    """The rule's action and warn threshold (from `warn_at_NN%` and/or a percentage key)."""
    default: Action = "require_confirmation" if kind == "confirmation" else "block"
    action_node = node.get("action")
    action: Action = default
    warn_at: float | None = None
    text = v.string(action_node, "'action'")
    if text is not None and action_node is not None:
        match = WARN_AT_ACTION.match(text)
        if match:
            percent = float(match.group(1))
            if kind not in LIMIT_KINDS:
                v.error(
                    action_node,
                    f"'{text}' only applies to rate, token and budget limits, not to a {kind} rule",
                    "use block, warn, allow or require_confirmation",
                )
            elif not 0 < percent < 100:
                v.error(action_node, f"'{text}': the warning threshold must be between 1% and 99%")
            else:
                warn_at = _ratio(percent)
        elif text == "allow":
            # `allow` never weakens a rule (docs/policy-format.md, "action: allow"): an allow-list
            # entry lists a permitted model and the list refuses every other; on every other kind the
            # rule keeps its default action, with a warning saying so.
            action = default
            if kind != "model" or _allowed_flag(node) is False:
                v.warn(
                    action_node,
                    f"'action: allow' does not switch off a {kind} rule: it is enforced as '{default}'",
                    "to switch a rule off, set 'enabled: false' on its policy, or delete the rule",
                )
        elif text in ACTIONS:
            action = cast(Action, text)
            if kind in LIMIT_KINDS and action == "require_confirmation":
                v.error(
                    action_node,
                    f"'require_confirmation' is not an action of a {kind} limit",
                    "limits are enforced by counters: use block, warn, allow or warn_at_NN%",
                )
        else:
            v.error(action_node, f"unknown action '{text}'", _action_hint(text))
    for key in ("alert_at_percentage", "warn_at_percentage"):
        pct_node = node.get(key)
        percent_value = v.number(pct_node, f"'{key}'")
        if percent_value is None or pct_node is None:
            continue
        if not 0 < percent_value < 100:
            v.error(pct_node, f"'{key}' must be between 0 and 100 (exclusive), got {percent_value}")
            continue
        ratio = _ratio(percent_value)
        if warn_at is not None and ratio != warn_at:
            v.error(
                pct_node,
                f"'{key}: {percent_value}' disagrees with action '{text}'",
                "give the warning threshold once, or the same number in both",
            )
            continue
        warn_at = ratio
    return action, warn_at


def _allowed_flag(node: Node) -> bool | None:
    """The `allowed` flag of a model rule as written (None when absent or not a boolean)."""
    allowed = node.get("allowed")
    if allowed is None or not isinstance(allowed.value, bool):
        return None
    return allowed.value


_WARN_AT_LOOSE = re.compile(r"^\s*warn[\s_-]*at[\s_-]*(\d+(?:\.\d+)?)\s*%?\s*$", re.IGNORECASE)


def _action_hint(text: str) -> str:
    loose = _WARN_AT_LOOSE.match(text)
    if loose:
        return f"did you mean 'warn_at_{loose.group(1)}%'?"
    return did_you_mean(text, ACTIONS) or "use block, warn, allow, require_confirmation or warn_at_NN%"


def _decimals(number: float) -> int:
    exponent = Decimal(str(number)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _ratio(percent: float) -> float:
    return float(Decimal(str(percent)) / 100)
