"""Stage 4: validated model (+ compiled data) -> generated `opa test` files.

Each enabled rule is pinned at its boundaries with the literal values of the YAML: a limit's
number, a bound exactly at and just past it, each listed model (its shortest and a longer match)
and an unlisted one, a time just inside and just outside each window in the policy's timezone, in
winter and in summer. These tests evaluate `data.hexarch.decision`, so they fail when the bundle's
data.json disagrees with the YAML (or the Rego library disagrees with the documented semantics).
Behaviour alone cannot notice an entry that was added (one more user, model or policy), so each
policy's file also pins its compiled entries, and the settings file pins the file-wide settings
and which policies the data holds. Expected outcomes are computed here from
the documented semantics (docs/architecture.md); anything this module does not know how to pin
raises EmitError rather than silently emitting a weaker test.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from compiler.errors import EmitError
from compiler.lower import RULE_LISTS, Config, limit_id, usd_to_micros
from compiler.model import (
    WEEKDAYS,
    AccessRule,
    ConfirmationRule,
    FeatureRule,
    LimitRule,
    ModelRule,
    ParamRule,
    Policy,
    PolicyFile,
    Rule,
    Scalar,
    TimeRule,
    glob_class,
    glob_is_valid,
    glob_match,
)
from compiler.registry import kind_of

GENERATED_DIR = "hexarch/generated"
TEST_USER = "hexarch-test-user"
TEST_TEAM = "hexarch-test-team"
OTHER = "hexarch-other"

# Monday 2026-01-12 .. Sunday 2026-01-18: a week without DST changes in either hemisphere's usual rules.
REFERENCE_MONDAY = (2026, 1, 12)
# Monday 2026-07-13: window boundaries are pinned again in July, so that a timezone with the same
# winter offset (UTC and Europe/London) cannot stand in for the configured one.
SUMMER_MONDAY = (2026, 7, 13)
NOON = 12 * 60

STATUS = {
    "invalid_parameter": 400,
    "model_not_allowed": 403,
    "time_restricted": 403,
    "access_denied": 403,
    "confirmation_required": 428,
    "feature_disabled": 403,
    "feature_requires_approval": 403,
}

HELPERS = """\
# Helpers: match a decision entry by policy, rule index ("*" = any rule of the policy) and code.
same_rule(_, "*") := true

same_rule(v, rule) if object.get(v, "rule", rule) == rule

reported(entries, policy, rule, code) if {
	some v in entries
	v.policy == policy
	same_rule(v, rule)
	v.code == code
}

# The rule denies the request: a violation with this code and status.
blocks(d, policy, rule, code, status) if {
	some v in d.violations
	v.policy == policy
	same_rule(v, rule)
	v.code == code
	v.status == status
	d.allow == false
}

# The rule only warns: a warning with this code and status, no violation.
warns(d, policy, rule, code, status) if {
	some w in d.warnings
	w.policy == policy
	same_rule(w, rule)
	w.code == code
	w.status == status
	not reported(d.violations, policy, rule, code)
}

# Monitor enforcement: the problem is reported and the request still allowed.
monitors(d, policy, rule, code) if {
	reported(d.violations, policy, rule, code)
	d.allow == true
}

monitors(d, policy, rule, code) if {
	reported(d.warnings, policy, rule, code)
	d.allow == true
}

# The rule reports nothing.
passes(d, policy, rule, code) if {
	not reported(d.violations, policy, rule, code)
	not reported(d.warnings, policy, rule, code)
}

reported_anywhere(d, policy, rule, code) if reported(d.violations, policy, rule, code)

reported_anywhere(d, policy, rule, code) if reported(d.warnings, policy, rule, code)

has_limit(d, id) if {
	some l in d.limits
	l.id == id
}
"""


def rego_value(value: Any) -> str:
    """A JSON value as Rego source (JSON is valid Rego; Decimals keep their exact digits)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float) and "e" in repr(value):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {rego_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(rego_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class LongString:
    """A string of `length` characters, built in Rego so the test file stays small."""

    length: int


@dataclass
class _Test:
    name: str
    comment: str
    input: dict[str, Any] | None  # None: the checks read data.hexarch.config, no decision
    now_ns: int
    checks: list[str]


@dataclass
class _File:
    package: str
    title: str | None = None  # the policy's description, shown at the top of its file
    tests: list[_Test] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def add(
        self, name: str, comment: str, input_doc: dict[str, Any] | None, now_ns: int, checks: list[str]
    ) -> None:
        base = re.sub(r"[^a-z0-9_]+", "_", f"test_{name}".lower()).strip("_")
        unique, n = base, 2
        while unique in self.names:
            unique, n = f"{base}_{n}", n + 1
        self.names.add(unique)
        self.tests.append(_Test(unique, comment, input_doc, now_ns, checks))

    def render(self) -> str:
        # No file path or time here: the same policy must give byte-identical files anywhere.
        out = ["# Generated by `hexarch compile` from the policy file. Do not edit: recompile."]
        if self.title:
            out.append("# Policy: " + " ".join(self.title.split()))
        out.append("")
        out += [f"package {self.package}", "", HELPERS]
        out += [
            "# The request every test starts from; a test replaces whole top-level fields or drops some.",
            f"base := {rego_value(BASE_INPUT)}",
            "",
            "request(drop, fields) := object.union(",
            "\tobject.remove(object.remove(base, drop), object.keys(fields)),",
            "\tfields,",
            ")",
            "",
        ]
        for test in self.tests:
            if test.input is None:
                out += ["# " + " ".join(test.comment.split()), f"{test.name} if {{"]
                out += [*(f"\t{check}" for check in test.checks), "}", ""]
                continue
            lets: list[str] = []
            fields = {k: v for k, v in test.input.items() if BASE_INPUT.get(k, _MISSING) != v}
            dropped = sorted(k for k in BASE_INPUT if k not in test.input)
            text = rego_value(fields)
            for length in sorted({int(m) for m in re.findall(r'"__hexarch_long_(\d+)__"', text)}):
                lets.append(
                    f'\tlong_{length} := sprintf("%0*d", [{length}, 0]) # a string of {length} characters'
                )
                text = text.replace(f'"__hexarch_long_{length}__"', f"long_{length}")
            out.append("# " + " ".join(test.comment.split()))
            out.append(f"{test.name} if {{")
            out.extend(lets)
            out.append(f"\tinp := request({rego_value(dropped)}, {text})")
            out.append(f"\td := data.hexarch.decision with input as inp with time.now_ns as {test.now_ns}")
            # The fast path (the compiler's index) and the generic path (the lists) must agree, so
            # a hand edit of either part of data.json fails the test.
            out.append(
                "\td == data.hexarch.decision with input as inp with time.now_ns as "
                f"{test.now_ns} with data.hexarch.config.index as null"
            )
            out.extend(f"\t{check}" for check in test.checks)
            out.append("}")
            out.append("")
        return "\n".join(out)


def _materialise(value: Any) -> Any:
    if isinstance(value, LongString):
        return f"__hexarch_long_{value.length}__"
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    return value


BASE_INPUT: dict[str, Any] = {
    "request": {
        "id": "hexarch-generated",
        "method": "POST",
        "path": "/v1/chat/completions",
        "api": "openai.chat",
    },
    "principal": {"id": TEST_USER, "team": TEST_TEAM, "roles": [], "tier": "free", "authenticated": True},
    "resources": ["*"],
    "operation": "chat",
    "resource_type": None,
    "feature": None,
    "confirmed": False,
    "model": "hexarch-test-model",
    "params": {},
    "estimate": {"prompt_tokens": 10, "max_output_tokens": 20},
}
_MISSING = object()


def base_input(**overrides: Any) -> dict[str, Any]:
    doc = {**BASE_INPUT, **overrides}
    return {k: _materialise(v) for k, v in doc.items()}


def _resources(resource: str) -> list[str]:
    return ["*"] if resource == "*" else [resource, "*"]


def _operation(operation: str) -> str:
    return "chat" if operation == "*" else operation


class _Clock:
    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)

    def ns(
        self, day: int, minute: int, second: int = 0, week: tuple[int, int, int] = REFERENCE_MONDAY
    ) -> int:
        """Epoch ns of `day` (0 = Monday of `week`) at `minute` after local midnight."""
        year, month, monday = week
        local = datetime(year, month, monday + day, minute // 60, minute % 60, second, tzinfo=self.zone)
        return int(local.timestamp()) * 1_000_000_000


def _inside(window: tuple[int, int], minute: int) -> bool:
    start, end = window
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _time_violates(rule: TimeRule, day: int, minute: int) -> bool:
    name = WEEKDAYS[day]
    return (
        (bool(rule.allowed_hours) and not any(_inside(w, minute) for w in rule.allowed_hours))
        or any(_inside(w, minute) for w in rule.forbidden_hours)
        or (bool(rule.allowed_days) and name not in rule.allowed_days)
        or name in rule.forbidden_days
    )


_ALPHABET = "xa0-_:.Zb1" + "23456789cdefghijklmnopqrstuvwyzABCDEFGHIJKLMNOPQRSTUVWXY"


def glob_sample(pattern: str, star: str = "x") -> str:
    """A concrete string matching `pattern` (a literal stays itself); `*` becomes `star`."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if ch == "[":
            # The class ends at the first `]` that closes a valid class (`[\\]]`, `[a-]]`).
            end = pattern.find("]", i + 1)
            while end >= 0 and not glob_is_valid(pattern[i : end + 1]):
                end = pattern.find("]", end + 1)
            cls = pattern[i : end + 1]
            pick = next((c for c in _ALPHABET + cls if glob_match(cls, c)), None)
            if end < 0 or pick is None:
                break
            out.append(pick)
            i = end + 1
            continue
        if ch == "{":
            group = _brace_group(pattern, i)
            if group is None:
                break
            alternatives, i = group
            out.append(glob_sample(alternatives[0], star))
            continue
        out.append(star if ch == "*" else "x" if ch == "?" else ch)
        i += 1
    sample = "".join(out)
    if not glob_match(pattern, sample):
        raise EmitError(f"cannot find a model name matching the pattern '{pattern}'")
    return sample


def _brace_group(pattern: str, start: int) -> tuple[list[str], int] | None:
    """The alternatives of the `{...}` opening at `start` (nested groups, classes and escapes kept
    whole) and the index after its `}`; None when it does not close."""
    alternatives: list[str] = []
    depth, begin, i = 0, start + 1, start + 1
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            cls = glob_class(pattern, i + 1)
            if cls is None:
                return None
            i = cls[1]
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        elif ch in ",}" and not depth:
            alternatives.append(pattern[begin:i])
            begin = i + 1
            if ch == "}":
                return alternatives, i + 1
        i += 1
    return None


def _outside_sample(patterns: list[str], base: str) -> str | None:
    """A name no pattern matches, or None when the patterns match everything (e.g. "*")."""
    for candidate in (base, f"{base}-2#", "#", "", "\u00e9"):
        if not any(glob_match(p, candidate) for p in patterns):
            return candidate
    return None


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, (tuple, list)):
        return {s for v in value for s in _strings(v)}
    return set()


def _same_value(a: Scalar, b: Scalar) -> bool:
    """Equality as Rego sees it: 1 == 1.0, but true != 1 and "1" != 1 (Python says otherwise)."""
    if isinstance(a, (bool, str)) or isinstance(b, (bool, str)):
        return type(a) is type(b) and a == b
    return a == b


class _Emitter:
    def __init__(self, model: PolicyFile, config: Config) -> None:
        self.model = model
        # Read as a plain mapping: settings() and pin_entries() walk its lists by name.
        self.config: dict[str, Any] = cast(dict[str, Any], config)
        self.clock = _Clock(model.timezone)
        self.now = self.clock.ns(2, NOON)  # Wednesday noon, local time
        # Every name the policy file uses, so the emitter's "someone/something else" is really else.
        self.taken = {TEST_USER, TEST_TEAM}
        for policy in model.policies:
            for rule in policy.rules:
                for item in fields(rule) if is_dataclass(rule) else ():
                    self.taken |= _strings(getattr(rule, item.name))

    def other(self, kind: str) -> str:
        """A `kind` name (user, role, resource...) that the policy file does not mention."""
        name = f"{OTHER}-{kind}"
        while name in self.taken:
            name += "-x"
        return name

    # --- expectations --------------------------------------------------------------------------------
    def verdict(self, policy: str, rule: int | str, action: str, code: str) -> str:
        """The Rego check that the rule reported (code, action) under the file's enforcement."""
        if action == "require_confirmation":
            code = "confirmation_required"
        status = STATUS[code]
        target = rego_value(rule)
        enforcement = self.model.enforcement
        if enforcement == "monitor":
            return f'monitors(d, "{policy}", {target}, "{code}")'
        if enforcement == "warn" or action == "warn":
            extra = "; d.allow == true" if enforcement == "warn" else ""
            return f'warns(d, "{policy}", {target}, "{code}", {status}){extra}'
        return f'blocks(d, "{policy}", {target}, "{code}", {status})'

    def passes(self, policy: str, rule: int | str, action: str, code: str) -> str:
        if action == "require_confirmation":
            code = "confirmation_required"
        return f'passes(d, "{policy}", {rego_value(rule)}, "{code}")'

    def expect(
        self,
        f: _File,
        policy: Policy,
        rule: Rule,
        code: str,
        name: str,
        comment: str,
        doc: dict[str, Any],
        violates: bool,
        now: int | None = None,
    ) -> None:
        now = self.now if now is None else now
        if violates:
            f.add(
                name,
                comment + " -> reported",
                doc,
                now,
                [self.verdict(policy.id, rule.index, rule.action, code)],
            )
        else:
            f.add(
                name,
                comment + " -> passes",
                doc,
                now,
                [self.passes(policy.id, rule.index, rule.action, code)],
            )

    def confirm_variant(self, f: _File, policy: Policy, rule: Rule, code: str, doc: dict[str, Any]) -> None:
        """`require_confirmation`: the same violating request passes once confirmed."""
        if rule.action == "require_confirmation":
            confirmed = {**doc, "confirmed": True}
            f.add(
                f"r{rule.index}_confirmed",
                "confirmed request passes",
                confirmed,
                self.now,
                [self.passes(policy.id, rule.index, rule.action, code)],
            )

    # --- per kind ------------------------------------------------------------------------------------
    def rule(self, f: _File, policy: Policy, rule: Rule) -> None:
        """The generated tests of one rule: its kind's emitter method (compiler/registry.py)."""
        method = getattr(self, kind_of(rule).emit, None)
        if method is None:  # pragma: no cover - tests/compiler/test_registry.py checks every kind
            raise EmitError(f"no generated tests for rule kind {rule.kind}")
        method(f, policy, rule)

    def limit_action(self, rule: LimitRule) -> str:
        return rule.action if self.model.enforcement == "strict" else "warn"

    def subject(self, rule: LimitRule) -> str:
        return {"global": rule.resource, "principal": TEST_USER, "team": TEST_TEAM}[rule.scope]

    def per_request_reservation(self, resources: list[str]) -> int:
        limits = [
            entry["limit"]
            for entry in self.config["token_limits"]
            if entry["window_seconds"] == 0 and (entry["resource"] == "*" or entry["resource"] in resources)
        ]
        return min(limits) if limits else int(self.config["default_max_output_tokens"])

    def prices(self, model_name: str) -> tuple[Decimal, Decimal]:
        for entry in self.config["pricing"]:
            if glob_match(entry["model"], model_name):
                return Decimal(str(entry["input_per_million_usd"])), Decimal(
                    str(entry["output_per_million_usd"])
                )
        default = self.config["default_pricing"]
        return Decimal(str(default["input_per_million_usd"])), Decimal(str(default["output_per_million_usd"]))

    def limit_rule(self, f: _File, policy: Policy, rule: LimitRule) -> None:
        resources = _resources(rule.resource)
        model_name = self.priced_model()
        for spec in rule.limits:
            lid = limit_id(policy.id, rule.index, spec.suffix)
            common = [
                "some l in d.limits",
                f'l.id == "{lid}"',
                f'l.policy == "{policy.id}"',
                f'l.scope == "{rule.scope}"',
                f'l.subject == "{self.subject(rule)}"',
                f"l.warn_at == {rego_value(rule.warn_at)}",
                f'l.action == "{self.limit_action(rule)}"',
            ]
            if rule.kind == "rate":
                amount = int(spec.amount)
                doc = base_input(resources=resources, model=model_name)
                checks = [*common, 'l.unit == "requests"', f"l.window_seconds == {spec.window_seconds}"]
                checks += [f"l.limit == {amount}", "l.cost == 1"]
                checks += [f"l.cost * {amount} <= l.limit", f"l.cost * {amount + 1} > l.limit"]
                f.add(
                    f"r{rule.index}_{spec.suffix}_limit",
                    f"{lid}: {amount} requests fit, one more does not",
                    doc,
                    self.now,
                    checks,
                )
            elif rule.kind == "tokens":
                amount = int(spec.amount)
                head = [*common, 'l.unit == "tokens"', f"l.window_seconds == {spec.window_seconds}"]
                head.append(f"l.limit == {amount}")
                if spec.window_seconds == 0:
                    for out, fits in ((amount, True), (amount + 1, False)):
                        doc = base_input(
                            resources=resources,
                            model=model_name,
                            estimate={"prompt_tokens": 10, "max_output_tokens": out},
                        )
                        cmp = "<=" if fits else ">"
                        f.add(
                            f"r{rule.index}_request_{out}",
                            f"{lid}: {out} output tokens " + ("fit" if fits else "exceed the limit"),
                            doc,
                            self.now,
                            [*head, f"l.cost == {out}", f"l.cost {cmp} l.limit"],
                        )
                    doc = base_input(resources=resources, model=model_name, estimate={"prompt_tokens": 10})
                    reserve = self.per_request_reservation(resources)
                    f.add(
                        f"r{rule.index}_request_default",
                        f"{lid}: no max given reserves {reserve}",
                        doc,
                        self.now,
                        [*head, f"l.cost == {reserve}"],
                    )
                else:
                    doc = base_input(
                        resources=resources,
                        model=model_name,
                        estimate={"prompt_tokens": amount - 1, "max_output_tokens": 1},
                    )
                    f.add(
                        f"r{rule.index}_{spec.suffix}_at_limit",
                        f"{lid}: a request of exactly {amount} tokens",
                        doc,
                        self.now,
                        [*head, f"l.cost == {amount}", "l.cost <= l.limit"],
                    )
                    doc = base_input(
                        resources=resources,
                        model=model_name,
                        estimate={"prompt_tokens": amount, "max_output_tokens": 1},
                    )
                    f.add(
                        f"r{rule.index}_{spec.suffix}_past_limit",
                        f"{lid}: {amount + 1} tokens exceed it",
                        doc,
                        self.now,
                        [*head, f"l.cost == {amount + 1}", "l.cost > l.limit"],
                    )
                    reserve = self.per_request_reservation(resources)
                    doc = base_input(resources=resources, model=model_name, estimate={"prompt_tokens": 7})
                    f.add(
                        f"r{rule.index}_{spec.suffix}_reservation",
                        f"{lid}: no max given reserves {reserve}",
                        doc,
                        self.now,
                        [*head, f"l.cost == {7 + reserve}"],
                    )
            else:
                micros = usd_to_micros(spec.amount)
                head = [
                    *common,
                    'l.unit == "usd_micros"',
                    f'l.period == "{spec.period}"',
                    f"l.limit == {micros}",
                ]
                price_in, price_out = self.prices(model_name)
                prompt, out = self.fractional_tokens(price_in, price_out)
                cost = prompt * price_in + out * price_out
                doc = base_input(
                    resources=resources,
                    model=model_name,
                    estimate={"prompt_tokens": prompt, "max_output_tokens": out},
                )
                f.add(
                    f"r{rule.index}_{spec.suffix}_cost",
                    f"{lid}: ${spec.amount} is {micros} micro-USD; cost of {prompt}+{out} tokens",
                    doc,
                    self.now,
                    [*head, *self.cost_checks(cost)],
                )
                reserve = self.per_request_reservation(resources)
                doc = base_input(resources=resources, model=model_name, estimate={"prompt_tokens": prompt})
                cost = prompt * price_in + reserve * price_out
                f.add(
                    f"r{rule.index}_{spec.suffix}_reservation",
                    f"{lid}: no max given reserves {reserve}",
                    doc,
                    self.now,
                    [*head, *self.cost_checks(cost)],
                )
            if rule.resource != "*":
                doc = base_input(resources=[self.other("resource")], model=model_name)
                f.add(
                    f"r{rule.index}_{spec.suffix}_other_resource",
                    f"{lid} does not count other resources",
                    doc,
                    self.now,
                    [f'not has_limit(d, "{lid}")'],
                )

    @staticmethod
    def fractional_tokens(price_in: Decimal, price_out: Decimal) -> tuple[int, int]:
        """Token counts whose micro-USD cost is far from an integer, so `ceil` is exact in any float."""
        for prompt in range(1000, 3000):
            frac = (prompt * price_in + 100 * price_out) % 1
            if Decimal("0.2") <= frac <= Decimal("0.8"):
                return prompt, 100
        return 1000, 100

    @staticmethod
    def cost_checks(cost: Decimal) -> list[str]:
        frac = cost % 1
        if Decimal("0.2") <= frac <= Decimal("0.8"):
            return [f"l.cost == {math.ceil(cost)}"]
        return [f"l.cost >= {math.floor(cost)}", f"l.cost <= {math.floor(cost) + 1}"]

    def priced_model(self) -> str:
        return (
            glob_sample(self.config["pricing"][0]["model"])
            if self.config["pricing"]
            else "hexarch-test-model"
        )

    def param_rule(self, f: _File, policy: Policy, rule: ParamRule) -> None:
        code = "invalid_parameter"
        resources, operation = _resources(rule.resource), _operation(rule.operation)
        cases: list[tuple[str, Any]] = []
        for bound, sign in ((rule.max, 1), (rule.min, -1)):
            if bound is None:
                continue
            step = Decimal("0.001") * max(Decimal(1), abs(Decimal(str(bound))))
            label = "max" if sign > 0 else "min"
            cases.append((f"at_{label}", Decimal(str(bound))))
            cases.append((f"past_{label}", Decimal(str(bound)) + sign * step))
        if rule.min is not None or rule.max is not None:
            cases.append(("not_a_number", "not-a-number"))
        if rule.max_length is not None:
            cases.append(("at_max_length", LongString(rule.max_length)))
            cases.append(("past_max_length", LongString(rule.max_length + 1)))
        if rule.allowed_values is not None:
            for value in rule.allowed_values:
                cases.append((f"listed_{value}", value))
            cases.append(("unlisted", self.unlisted(rule.allowed_values)))
        first_violation: dict[str, Any] | None = None
        for label, value in cases:
            doc = base_input(resources=resources, operation=operation, params={rule.parameter: value})
            violates = _param_violates(rule, value)
            shown = f"{value.length} characters" if isinstance(value, LongString) else rego_value(value)
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_{rule.parameter}_{label}",
                f"{rule.parameter} = {shown}",
                doc,
                violates,
            )
            if violates and first_violation is None:
                first_violation = doc
        doc = base_input(resources=resources, operation=operation, params={})
        self.expect(
            f,
            policy,
            rule,
            code,
            f"r{rule.index}_{rule.parameter}_absent",
            f"{rule.parameter} absent",
            doc,
            False,
        )
        if first_violation is None:
            raise EmitError(f"no violating value found for parameter rule {policy.id}/{rule.index}")
        self.confirm_variant(f, policy, rule, code, first_violation)
        if rule.resource != "*":
            doc = {**first_violation, "resources": [self.other("resource")]}
            self.expect(
                f, policy, rule, code, f"r{rule.index}_other_resource", "another resource", doc, False
            )
        if rule.operation != "*":
            doc = {**first_violation, "operation": self.other("operation")}
            self.expect(
                f, policy, rule, code, f"r{rule.index}_other_operation", "another operation", doc, False
            )

    @staticmethod
    def unlisted(values: tuple[Scalar, ...]) -> Scalar:
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            return max(numbers) + 1
        candidate = "hexarch-unlisted-value"
        while candidate in values:
            candidate += "-x"
        return candidate

    def time_rule(self, f: _File, policy: Policy, rule: TimeRule) -> None:
        code = "time_restricted"
        resources, operation = _resources(rule.resource), _operation(rule.operation)
        doc = base_input(resources=resources, operation=operation)
        day = next((d for d in (2, 3, 4, 0, 1, 5, 6) if not _day_violates(rule, d)), 2)
        seconds: set[int] = set()
        for start, end in (*rule.allowed_hours, *rule.forbidden_hours):
            seconds |= {start * 60, (start * 60 - 1) % 86400, (end * 60 - 1) % 86400, (end * 60) % 86400}
        first_violation: int | None = None
        for week, season in ((REFERENCE_MONDAY, ""), (SUMMER_MONDAY, " in July")):
            for second in sorted(seconds):
                minute = second // 60
                violates = _time_violates(rule, day, minute)
                clock = f"{minute // 60:02d}:{minute % 60:02d}:{second % 60:02d}"
                at = f"{WEEKDAYS[day]}{season} {clock} {self.model.timezone}"
                now = self.clock.ns(day, minute, second % 60, week)
                self.expect(
                    f, policy, rule, code, f"r{rule.index}_{at}", f"{operation} at {at}", doc, violates, now
                )
                if violates and first_violation is None:
                    first_violation = now
        if rule.allowed_days or rule.forbidden_days:
            minute = _passing_minute(rule)
            for d in range(7):
                violates = _time_violates(rule, d, minute)
                at = f"{WEEKDAYS[d]} {minute // 60:02d}:{minute % 60:02d}"
                now = self.clock.ns(d, minute)
                self.expect(
                    f, policy, rule, code, f"r{rule.index}_{at}", f"{operation} on {at}", doc, violates, now
                )
                if violates and first_violation is None:
                    first_violation = now
        if first_violation is None:
            return  # e.g. allowed_hours "00:00-24:00" alone: every moment passes, as pinned above
        if rule.action == "require_confirmation":
            f.add(
                f"r{rule.index}_confirmed",
                "confirmed request passes",
                {**doc, "confirmed": True},
                first_violation,
                [self.passes(policy.id, rule.index, rule.action, code)],
            )
        if rule.operation != "*":
            other = {**doc, "operation": self.other("operation")}
            f.add(
                f"r{rule.index}_other_operation",
                "another operation is not restricted",
                other,
                first_violation,
                [self.passes(policy.id, rule.index, rule.action, code)],
            )
        if rule.resource != "*":
            other = {**doc, "resources": [self.other("resource")]}
            f.add(
                f"r{rule.index}_other_resource",
                "another resource is not restricted",
                other,
                first_violation,
                [self.passes(policy.id, rule.index, rule.action, code)],
            )

    def model_policy(self, f: _File, policy: Policy, rules: list[ModelRule]) -> None:
        code = "model_not_allowed"
        all_patterns = [p for r in rules for p in r.patterns]
        resources_sets = {tuple(_resources(r.resource)) for r in rules}

        def expected(model_name: str | None, resources: list[str]) -> list[ModelRule]:
            applying = [r for r in rules if r.resource == "*" or r.resource in resources]
            allow = [r for r in applying if r.allowed]
            # An unnamed model might be a denied one: it fails deny-lists too (fail closed).
            culprits = [
                r
                for r in applying
                if not r.allowed
                and (model_name is None or any(glob_match(p, model_name) for p in r.patterns))
            ]
            if allow and (
                model_name is None or not any(glob_match(p, model_name) for r in allow for p in r.patterns)
            ):
                # The strictest applying allow rule speaks for the policy's list (docs/architecture.md).
                culprits.append(min(allow, key=lambda r: (_STRICTNESS.get(r.action, 0), r.index)))
            return culprits

        # A longer and the shortest match of each pattern: "gpt-5x" alone would not notice "gpt-5*"
        # narrowed to "gpt-5x*".
        samples = list(
            dict.fromkeys(s for p in all_patterns for s in (glob_sample(p), glob_sample(p, star="")))
        )
        outside = _outside_sample(all_patterns, f"{OTHER}-model")
        if outside is not None:
            samples.append(outside)
        for resources in sorted(resources_sets):
            for sample in [*samples, None]:
                doc = base_input(resources=list(resources))
                if sample is None:
                    doc.pop("model")
                else:
                    doc["model"] = sample
                culprits = expected(sample, list(resources))
                label = "no model" if sample is None else f"model {sample}"
                name = f"{label}_on_{'_'.join(resources)}"
                if not culprits:
                    # Per rule, not "*": another rule of the policy may report confirmation_required.
                    checks = [self.passes(policy.id, r.index, r.action, code) for r in rules]
                    f.add(name, f"{label} on {list(resources)} -> passes", doc, self.now, checks)
                    continue
                checks = [self.verdict(policy.id, c.index, c.action, code) for c in culprits]
                f.add(name, f"{label} on {list(resources)} -> reported", doc, self.now, checks)
                confirmable = [c for c in culprits if c.action == "require_confirmation"]
                if confirmable and sample is not None:
                    f.add(
                        f"{name}_confirmed",
                        "confirmed request passes the rules that ask for a confirmation",
                        {**doc, "confirmed": True},
                        self.now,
                        [self.passes(policy.id, c.index, c.action, code) for c in confirmable],
                    )

    def access_rule(self, f: _File, policy: Policy, rule: AccessRule) -> None:
        code = "access_denied"
        resources, operation = _resources(rule.resource), _operation(rule.operation)

        def principal(pid: str, roles: list[str]) -> dict[str, Any]:
            return {"id": pid, "team": TEST_TEAM, "roles": roles, "tier": "free", "authenticated": True}

        for user in rule.users:
            doc = base_input(resources=resources, operation=operation, principal=principal(user, []))
            self.expect(f, policy, rule, code, f"r{rule.index}_user_{user}", f"user {user}", doc, False)
        for role in rule.roles:
            doc = base_input(
                resources=resources,
                operation=operation,
                principal=principal(self.other("user"), [self.other("role"), role]),
            )
            self.expect(f, policy, rule, code, f"r{rule.index}_role_{role}", f"role @{role}", doc, False)
        outsider = self.other("user")
        doc = base_input(
            resources=resources, operation=operation, principal=principal(outsider, [self.other("role")])
        )
        self.expect(
            f,
            policy,
            rule,
            code,
            f"r{rule.index}_outsider",
            f"user {outsider} without a listed role",
            doc,
            True,
        )
        anonymous = base_input(
            resources=resources,
            operation=operation,
            principal={"id": None, "roles": [], "authenticated": False},
        )
        self.expect(
            f, policy, rule, code, f"r{rule.index}_anonymous", "an anonymous principal", anonymous, True
        )
        if rule.self_owned:
            owner = {**doc, "resource_owner": outsider}
            self.expect(
                f, policy, rule, code, f"r{rule.index}_self", f"@self: {outsider} owns it", owner, False
            )
            stranger = {**doc, "resource_owner": self.other("owner")}
            self.expect(
                f, policy, rule, code, f"r{rule.index}_not_self", "@self: another owns it", stranger, True
            )
        self.confirm_variant(f, policy, rule, code, doc)
        if rule.resource != "*":
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_other_resource",
                "another resource",
                {**doc, "resources": [self.other("resource")]},
                False,
            )
        if rule.operation != "*":
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_other_operation",
                "another operation",
                {**doc, "operation": self.other("operation")},
                False,
            )

    def confirmation_rule(self, f: _File, policy: Policy, rule: ConfirmationRule) -> None:
        code = "confirmation_required"
        resources, operation = _resources(rule.resource), _operation(rule.operation)
        any_type = "*" in rule.resource_types
        types = [t for t in rule.resource_types if t != "*"] or [self.other("type")]
        for rtype in types:
            doc = base_input(resources=resources, operation=operation, resource_type=rtype)
            self.expect(
                f, policy, rule, code, f"r{rule.index}_{rtype}", f"{operation} {rtype} unconfirmed", doc, True
            )
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_{rtype}_confirmed",
                f"{operation} {rtype} confirmed",
                {**doc, "confirmed": True},
                False,
            )
        doc = base_input(resources=resources, operation=operation, resource_type=None)
        self.expect(
            f, policy, rule, code, f"r{rule.index}_no_type", f"{operation} without a resource type", doc, True
        )
        if not any_type:
            unlisted = self.other("type")
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_unlisted_type",
                f"{operation} {unlisted}",
                {**doc, "resource_type": unlisted},
                False,
            )
        # operation "*" confirms every operation: another operation is reported too.
        self.expect(
            f,
            policy,
            rule,
            code,
            f"r{rule.index}_other_operation",
            "another operation",
            {**doc, "operation": self.other("operation")},
            rule.operation == "*",
        )
        if rule.resource != "*":
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_other_resource",
                "another resource",
                {**doc, "resources": [self.other("resource")]},
                False,
            )

    def feature_rule(self, f: _File, policy: Policy, rule: FeatureRule) -> None:
        doc = base_input(feature=rule.feature)
        other = base_input(feature=self.other("feature"))
        if not rule.enabled:
            code = "feature_disabled"
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_{rule.feature}_off",
                f"feature {rule.feature}",
                doc,
                True,
            )
            self.confirm_variant(f, policy, rule, code, doc)
            self.expect(
                f, policy, rule, code, f"r{rule.index}_other_feature", "another feature", other, False
            )
            self.unstated_feature(f, policy, rule, code, doc)
            return
        if not rule.requires_approval:
            for code in ("feature_disabled", "feature_requires_approval"):
                self.expect(
                    f,
                    policy,
                    rule,
                    code,
                    f"r{rule.index}_{rule.feature}_on_{code}",
                    f"feature {rule.feature} is on",
                    doc,
                    False,
                )
            return
        code = "feature_requires_approval"
        outsider = {
            "id": self.other("user"),
            "team": TEST_TEAM,
            "roles": [],
            "tier": "free",
            "authenticated": True,
        }
        doc = {**doc, "principal": outsider}
        self.expect(
            f,
            policy,
            rule,
            code,
            f"r{rule.index}_{rule.feature}_unapproved",
            f"feature {rule.feature} by a non-approver",
            doc,
            True,
        )
        self.confirm_variant(f, policy, rule, code, doc)
        self.unstated_feature(f, policy, rule, code, doc)
        for user in rule.approver_users:
            approver = {"id": user, "team": TEST_TEAM, "roles": [], "tier": "free", "authenticated": True}
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_approver_{user}",
                f"approver {user}",
                {**doc, "principal": approver},
                False,
            )
        for role in rule.approver_roles:
            approver = {
                "id": self.other("user"),
                "team": TEST_TEAM,
                "roles": [role],
                "tier": "free",
                "authenticated": True,
            }
            self.expect(
                f,
                policy,
                rule,
                code,
                f"r{rule.index}_approver_role_{role}",
                f"approver role @{role}",
                {**doc, "principal": approver},
                False,
            )
        self.expect(f, policy, rule, code, f"r{rule.index}_other_feature", "another feature", other, False)

    def unstated_feature(
        self, f: _File, policy: Policy, rule: FeatureRule, code: str, doc: dict[str, Any]
    ) -> None:
        """No `feature` field at all (null would say "none"): the flag applies, fail closed."""
        unstated = {k: v for k, v in doc.items() if k != "feature"}
        name = f"r{rule.index}_feature_unstated"
        self.expect(f, policy, rule, code, name, "a request that does not state its feature", unstated, True)

    def pin_entries(self, f: _File, policy: Policy) -> None:
        """The policy's compiled entries, exactly: behaviour cannot notice an added user or model."""
        checks = []
        for name in RULE_LISTS:
            entries = [e for e in self.config[name] if e["policy"] == policy.id]
            selected = f"[e | some e in data.hexarch.config.{name}; e.policy == {json.dumps(policy.id)}]"
            checks.append(f"{selected} == {rego_value(entries)}")
        f.add("compiled_entries", f"the compiled entries of {policy.id}", None, self.now, checks)

    def pin_settings(self, f: _File) -> None:
        """File-wide settings, and that the data holds entries of the enabled policies only."""
        checks = [
            f"data.hexarch.config.{key} == {rego_value(self.config[key])}"
            for key in ("enforcement", "timezone", "default_max_output_tokens", "pricing", "default_pricing")
        ]
        owners = sorted({e["policy"] for name in RULE_LISTS for e in self.config[name]})
        expected = "{" + ", ".join(json.dumps(o) for o in owners) + "}" if owners else "set()"
        lists = rego_value(list(RULE_LISTS))
        checks.append(
            f"{{e.policy | some name in {lists}; some e in data.hexarch.config[name]}} == {expected}"
        )
        f.add("compiled_settings", "the compiled file-wide settings", None, self.now, checks)

    def settings(self, f: _File) -> None:
        self.pin_settings(f)
        doc = base_input()
        f.add(
            "enforcement",
            f"enforcement is {self.model.enforcement}",
            doc,
            self.now,
            [f'd.enforcement == "{self.model.enforcement}"'],
        )
        names: list[str] = []
        for entry in self.config["pricing"]:
            names.append(glob_sample(entry["model"]))
        patterns = [e["model"] for e in self.config["pricing"]]
        unpriced = _outside_sample(patterns, f"{OTHER}-unpriced-model")
        if unpriced is not None:
            names.append(unpriced)
        for name in names:
            price_in, price_out = self.prices(name)
            f.add(
                f"pricing_{name}",
                f"model {name} is priced {price_in}/{price_out} USD per million tokens",
                base_input(model=name),
                self.now,
                [
                    f"d.pricing.input_per_million_usd == {rego_value(price_in)}",
                    f"d.pricing.output_per_million_usd == {rego_value(price_out)}",
                ],
            )


def _day_violates(rule: TimeRule, day: int) -> bool:
    name = WEEKDAYS[day]
    return (bool(rule.allowed_days) and name not in rule.allowed_days) or name in rule.forbidden_days


def _passing_minute(rule: TimeRule) -> int:
    candidates = [NOON, *(s for s, _ in rule.allowed_hours), *(e % 1440 for _, e in rule.forbidden_hours)]
    for minute in candidates:
        if not any(_inside(w, minute) for w in rule.forbidden_hours) and (
            not rule.allowed_hours or any(_inside(w, minute) for w in rule.allowed_hours)
        ):
            return minute
    return NOON


def _param_violates(rule: ParamRule, value: Any) -> bool:
    if isinstance(value, LongString):
        value = "x" * value.length
    if isinstance(value, float):
        # As written (and as OPA reads it): 0.1 is not above a max of 0.1. Python would compare
        # the float's binary value, 0.1000000000000000055..., with Decimal("0.1").
        value = Decimal(repr(value))
    number = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
    if rule.min is not None and (not number or value < Decimal(str(rule.min))):
        return True
    if rule.max is not None and (not number or value > Decimal(str(rule.max))):
        return True
    if rule.max_length is not None and (not isinstance(value, (str, list)) or len(value) > rule.max_length):
        return True
    if rule.allowed_values is not None:
        scalar = float(value) if isinstance(value, Decimal) else value
        return not any(_same_value(scalar, allowed) for allowed in rule.allowed_values)
    return False


# How strict an action is (block first): the strictest applying allow rule speaks for a policy.
_STRICTNESS = {"block": 0, "require_confirmation": 1, "warn": 2}


def _package_name(raw: str, used: set[str]) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", raw.lower()).strip("_") or "policy"
    if not name[0].isalpha():
        name = f"p_{name}"
    unique, n = f"{name}_test", 2
    while unique in used:
        unique, n = f"{name}_{n}_test", n + 1
    used.add(unique)
    return unique


def emit_tests(model: PolicyFile, config: Config) -> dict[str, str]:
    """Bundle path -> Rego source of every generated test file."""
    emitter = _Emitter(model, config)
    files: dict[str, str] = {}
    used: set[str] = set()
    settings = _File(f"hexarch.generated.{_package_name('hexarch_settings', used)}")
    emitter.settings(settings)
    files[f"{GENERATED_DIR}/{settings.package.rsplit('.', 1)[1]}.rego"] = settings.render()
    for policy in model.enabled_policies:
        package = _package_name(policy.id, used)
        f = _File(f"hexarch.generated.{package}", title=policy.description)
        # Kinds pinned per policy (allow-lists combine within a policy) get all their rules at once.
        grouped: dict[str, list[Rule]] = {}
        for rule in policy.rules:
            kind = kind_of(rule)
            if kind.emit_per_policy:
                grouped.setdefault(kind.emit, []).append(rule)
            else:
                emitter.rule(f, policy, rule)
        for method, rules in grouped.items():
            getattr(emitter, method)(f, policy, rules)
        if not f.tests:
            raise EmitError(f"policy '{policy.id}' produced no generated test")
        emitter.pin_entries(f, policy)
        files[f"{GENERATED_DIR}/{package}.rego"] = f.render()
    return files
