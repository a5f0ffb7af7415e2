"""Stage 2 output: the validated policy as frozen dataclasses.

Everything here is already checked and normalised (actions split into action + warn threshold,
windows in minutes after midnight, money still in USD as written), so `lower` and `emit` never
have to re-check user input. Disabled policies are kept: `lower` drops them, `check` reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from compiler.diagnostics import Diagnostic

Scalar = str | int | float | bool | None

Action = Literal["block", "warn", "allow", "require_confirmation"]
Scope = Literal["global", "principal", "team"]
Enforcement = Literal["strict", "warn", "monitor"]
LimitKind = Literal["rate", "tokens", "budget"]

WEEKDAYS: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class LimitSpec:
    """One counter of a rate/token/budget rule, e.g. requests per minute."""

    suffix: str  # limit id suffix: rpm rph rpd | request tpm tph tpd | day month
    amount: int | float  # requests or tokens (int), or USD (number) for budgets
    window_seconds: int  # 0 for per-request tokens; unused for budgets
    period: str | None  # "day" | "month" for budgets


@dataclass(frozen=True)
class LimitRule:
    """A rate, token or budget rule: the three kinds share one shape, told apart by `kind`."""

    kind: LimitKind
    index: int
    resource: str
    limits: tuple[LimitSpec, ...]
    scope: Scope
    action: Action
    warn_at: float | None
    description: str | None = None


@dataclass(frozen=True)
class ParamRule:
    kind: ClassVar[str] = "param"
    index: int
    parameter: str
    min: int | float | None
    max: int | float | None
    max_length: int | None
    allowed_values: tuple[Scalar, ...] | None
    resource: str
    operation: str
    action: Action
    description: str | None = None


@dataclass(frozen=True)
class TimeRule:
    kind: ClassVar[str] = "time"
    index: int
    operation: str
    resource: str
    allowed_hours: tuple[tuple[int, int], ...]  # [start, end) minutes after midnight; wraps if start > end
    forbidden_hours: tuple[tuple[int, int], ...]
    allowed_days: tuple[str, ...]
    forbidden_days: tuple[str, ...]
    action: Action
    description: str | None = None


@dataclass(frozen=True)
class ModelRule:
    kind: ClassVar[str] = "model"
    index: int
    patterns: tuple[str, ...]
    allowed: bool
    resource: str
    action: Action
    description: str | None = None


@dataclass(frozen=True)
class AccessRule:
    kind: ClassVar[str] = "access"
    index: int
    resource: str
    operation: str
    users: tuple[str, ...]
    roles: tuple[str, ...]
    action: Action
    description: str | None = None
    # `@self`: the principal owns the resource named in the request (input.resource_owner == its id).
    self_owned: bool = False


@dataclass(frozen=True)
class ConfirmationRule:
    kind: ClassVar[str] = "confirmation"
    index: int
    operation: str
    resource: str
    resource_types: tuple[str, ...]
    action: Action
    description: str | None = None


@dataclass(frozen=True)
class FeatureRule:
    kind: ClassVar[str] = "feature"
    index: int
    feature: str
    enabled: bool
    requires_approval: bool
    approver_users: tuple[str, ...]
    approver_roles: tuple[str, ...]
    action: Action
    description: str | None = None


Rule = LimitRule | ParamRule | TimeRule | ModelRule | AccessRule | ConfirmationRule | FeatureRule


@dataclass(frozen=True)
class Policy:
    id: str
    description: str | None
    enabled: bool
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Price:
    model: str  # glob
    input_per_million_usd: float
    output_per_million_usd: float


@dataclass(frozen=True)
class CustomPolicy:
    id: str
    file: Path  # resolved against the policy file's directory
    source: str  # the Rego text, read and checked at validation


@dataclass(frozen=True)
class Upstream:
    """An upstream section's name; its contents belong to sidecar/settings.py."""

    name: str


@dataclass(frozen=True)
class PolicyFile:
    source: str  # the policy file as given on the command line
    version: int
    enforcement: Enforcement
    timezone: str
    pricing: tuple[Price, ...]
    default_max_output_tokens: int
    custom: tuple[CustomPolicy, ...]
    policies: tuple[Policy, ...]
    upstreams: tuple[Upstream, ...]
    # Located warnings (valid but suspicious forms); `--strict` makes them fail.
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def enabled_policies(self) -> tuple[Policy, ...]:
        return tuple(p for p in self.policies if p.enabled)


DEFAULT_INPUT_PRICE = 0.5
DEFAULT_OUTPUT_PRICE = 1.5
DEFAULT_MAX_OUTPUT_TOKENS = 1024


def glob_regex(pattern: str) -> str | None:
    """The regex OPA's `glob.match(pattern, [], text)` uses: `*` any run, `?` one character,
    `[...]` a class, `{a,b}` alternatives, `\\` escapes. None when the pattern is malformed."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= len(pattern):
                return None
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            cls = glob_class(pattern, i + 1)
            if cls is None:
                return None
            out.append(cls[0])
            i = cls[1]
            continue
        elif ch == "{":
            depth += 1
            out.append("(?:")
        elif ch == "}" and depth > 0:
            depth -= 1
            out.append(")")
        elif ch == "," and depth > 0:
            out.append("|")
        elif ch in "]}":
            return None
        else:
            out.append(re.escape(ch))
        i += 1
    return None if depth else "".join(out)


def glob_class(pattern: str, i: int) -> tuple[str, int] | None:
    """The `[...]` class starting after `[` at `i`, as OPA's glob lexer reads it: `!` negates;
    `x-y]` is a range, anything else a list of literal characters (`\\` escapes, `^` and `-`
    included) up to `]`. Returns (regex, index after `]`); None when OPA rejects it."""
    negate = pattern.startswith("!", i)
    i += negate
    prefix = "[^" if negate else "["
    if i + 1 < len(pattern) and pattern[i + 1] == "-":
        if i + 3 >= len(pattern) or pattern[i + 3] != "]" or pattern[i] > pattern[i + 2]:
            return None
        return f"{prefix}{re.escape(pattern[i])}-{re.escape(pattern[i + 2])}]", i + 4
    chars: list[str] = []
    while i < len(pattern) and pattern[i] != "]":
        if pattern[i] == "\\":
            i += 1
            if i >= len(pattern):
                return None
        chars.append(pattern[i])
        i += 1
    if i >= len(pattern) or not chars:
        return None
    return prefix + "".join(re.escape(c) for c in chars) + "]", i + 1


def glob_is_valid(pattern: str) -> bool:
    return glob_regex(pattern) is not None


def glob_match(pattern: str, text: str) -> bool:
    regex = glob_regex(pattern)
    return regex is not None and re.fullmatch(regex, text, re.DOTALL) is not None
