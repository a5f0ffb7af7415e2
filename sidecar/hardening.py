"""The `sidecar.hardening:` section: every bound and breaker knob, driven by one table.

`HARDENING` lists each key once: its YAML name (under `sidecar.hardening`), its HEXARCH_* variable,
its default, its minimum, and the sentence docs/hardening.md shows. The reader, the environment
overrides and the docs table all come from it, so no key can be accepted and then ignored.

This module owns the section; sidecar/settings.py only calls `read_section` and `apply_env`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from compiler.diagnostics import Diagnostic
from compiler.parse import Node


@dataclass(frozen=True)
class HardeningSettings:
    max_json_depth: int = 32
    max_json_keys: int = 10_000
    header_read_timeout_seconds: float = 10.0
    max_connections: int = 4096
    keepalive_timeout_seconds: float = 15.0
    max_inflight_requests: int = 10_000
    max_principal_id_bytes: int = 256
    max_subjects_per_window: int = 100_000
    breaker_failures: int = 3
    breaker_seconds: float = 1.0
    admin_listen: str = ""  # "" : /metrics and the bundle are served on the main listener
    admin_key_env: str = ""  # a variable holding a key that /metrics and the bundle then require


@dataclass(frozen=True)
class Knob:
    key: str
    env: str
    kind: str  # "int" | "float" | "str"
    minimum: float
    doc: str


HARDENING: tuple[Knob, ...] = (
    Knob("max_json_depth", "HEXARCH_MAX_JSON_DEPTH", "int", 1,
         "deepest nesting of arrays/objects in a JSON body; deeper -> 400 `json_too_deep` before admission"),
    Knob("max_json_keys", "HEXARCH_MAX_JSON_KEYS", "int", 1,
         "object keys plus array items in a JSON body; more -> 400 `json_too_large` before admission"),
    Knob("header_read_timeout_seconds", "HEXARCH_HEADER_READ_TIMEOUT_SECONDS", "float", 0.1,
         "a connection must send its request line and headers within this time, or it is closed"),
    Knob("max_connections", "HEXARCH_MAX_CONNECTIONS", "int", 1,
         "open client connections; past it the oldest ones still waiting for their headers are closed"),
    Knob("keepalive_timeout_seconds", "HEXARCH_KEEPALIVE_TIMEOUT_SECONDS", "float", 0.1,
         "an idle keep-alive connection is closed after this time"),
    Knob("max_inflight_requests", "HEXARCH_MAX_INFLIGHT_REQUESTS", "int", 1,
         "requests being handled at once; past it -> 503 `overloaded` with Retry-After (probes exempt)"),
    Knob("max_principal_id_bytes", "HEXARCH_MAX_PRINCIPAL_ID_BYTES", "int", 1,
         "longest trusted-header user/team id; longer -> 400 `principal_too_long`"),
    Knob("max_subjects_per_window", "HEXARCH_MAX_SUBJECTS_PER_WINDOW", "int", 1,
         "distinct principal ids one sidecar admits per 60 s; a new one past it -> 429 `too_many_subjects`"),
    Knob("breaker_failures", "HEXARCH_BREAKER_FAILURES", "int", 1,
         "consecutive OPA (or Redis) failures/timeouts that open its circuit breaker"),
    Knob("breaker_seconds", "HEXARCH_BREAKER_SECONDS", "float", 0.0,
         "an open breaker lets one probe through after this cool-down"),
    Knob("admin_listen", "HEXARCH_ADMIN_LISTEN", "str", 0,
         "host:port of a second listener for /metrics and the bundle (then not on the main one); "
         "with neither this nor admin_key_env they answer loopback clients only"),
    Knob("admin_key_env", "HEXARCH_ADMIN_KEY_ENV", "str", 0,
         "name of a variable holding a key; /metrics and the bundle then need `Authorization: Bearer <key>`"),
)  # fmt: skip

KEYS: tuple[str, ...] = tuple(k.key for k in HARDENING)
assert set(KEYS) == {f.name for f in fields(HardeningSettings)}, "the table and the dataclass disagree"

Report = Callable[[Diagnostic], None]


def _coerce(knob: Knob, value: Any) -> int | float | str | None:
    """The value for `knob`, or None when it has the wrong type or is below the minimum."""
    if knob.kind == "str":
        if not isinstance(value, str):
            return None
        if knob.key == "admin_listen" and value:
            from sidecar.settings import parse_listen  # settings imports this module

            return value if parse_listen(value) is not None else None
        return value
    if isinstance(value, bool):
        return None
    if knob.kind == "int":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int) or value < knob.minimum:
            return None
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float) or value < knob.minimum or value != value:
        return None
    return float(value)


def _expected(knob: Knob) -> str:
    if knob.key == "admin_listen":
        return "host:port, e.g. 127.0.0.1:9090"
    if knob.kind == "str":
        return "a string"
    return f"{'an integer' if knob.kind == 'int' else 'a number'} >= {knob.minimum:g}"


def read_section(node: Node, report: Report, check_keys: Callable[[Node], bool]) -> HardeningSettings:
    """`sidecar.hardening` from the YAML tree; bad values are reported and fall back to defaults."""
    result = HardeningSettings()
    if not check_keys(node):
        return result
    changes: dict[str, Any] = {}
    for knob in HARDENING:
        child = node.get(knob.key)
        if child is None:
            continue
        value = _coerce(knob, child.value)
        if value is None:
            report(child.diag(f"sidecar.hardening.{knob.key} must be {_expected(knob)}", knob.doc))
            continue
        changes[knob.key] = value
    return replace(result, **changes)


def apply_env(
    current: HardeningSettings, env: Mapping[str, str], report: Callable[[str, str], None]
) -> HardeningSettings:
    """HEXARCH_* overrides of the table; `report(name, message)` for a bad one."""
    changes: dict[str, Any] = {}
    for knob in HARDENING:
        raw = env.get(knob.env)
        if raw is None:
            continue
        value = _coerce(knob, raw)
        if value is None:
            report(knob.env, f"{knob.env}='{raw}' is not {_expected(knob)}")
            continue
        changes[knob.key] = value
    return replace(current, **changes) if changes else current


def docs_table() -> str:
    """The markdown table docs/hardening.md carries (a test keeps the two equal)."""
    rows = ["| key (`sidecar.hardening.`) | variable | default | meaning |", "|---|---|---|---|"]
    defaults = HardeningSettings()
    for knob in HARDENING:
        default = getattr(defaults, knob.key)
        shown = f"`{default}`" if default != "" else "(none)"
        rows.append(f"| `{knob.key}` | `{knob.env}` | {shown} | {knob.doc} |")
    return "\n".join(rows)
