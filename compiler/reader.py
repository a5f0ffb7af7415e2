"""Typed reading of located YAML values, collecting every problem as a Diagnostic.

One reader for the whole of hexarch.yaml: the compiler's validator (policies, pricing, opa...) and
the sidecar's settings loader (`sidecar:` and upstream sections) read values through it, so a wrong
type, an unknown key or a misspelt choice reads the same wherever it is, with the same hints.

Every reader takes the node (None when the key is absent) and a label for messages; without a
label, the node's own key is used ("'max_body_bytes' must be a whole number, got ..."). A reader
returns the value, or None when the key is absent or the problem has been recorded.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import yaml

from compiler.diagnostics import Diagnostic, did_you_mean
from compiler.parse import Node, describe

# Counts and micro-USD amounts must stay exact as JSON numbers (OPA, the sidecar) and in Redis.
MAX_AMOUNT = 2**53 - 1

# YAML 1.1 numbers the parser keeps as text (compiler/parse.py): base 60, octal, hex, binary.
_NOT_DECIMAL = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|0[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+)$"
)
# Where to list the allowed keys in an unknown-key hint: short lists only.
_LISTED_KEYS = 12


def number_hint(value: object) -> str | None:
    """Why a value that looks like a number is not one, and how to write it as one."""
    if isinstance(value, float) and value.is_integer():
        return f"write {int(value)} without a decimal point"
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _NOT_DECIMAL.match(text):
        yaml11 = yaml.safe_load(text)
        return f"YAML 1.1 would read '{text}' as {yaml11}: write numbers in plain decimal digits"
    try:
        float(text)
    except ValueError:
        return None
    if "." not in text and "e" in text.lower():
        return "YAML reads this as text: write exponents with a dot and a sign, e.g. 1.0e+3 or 1.0e-9"
    return "write the number without quotes"


def key_name(node: Node) -> str:
    """The last step of a node's YAML path: `max_body_bytes` for `sidecar.max_body_bytes`."""
    return node.path.rsplit(".", 1)[-1] or "the document"


class Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.diags: list[Diagnostic] = []
        # Valid but probably not what the author meant: reported, fatal only under --strict.
        self.warnings: list[Diagnostic] = []

    # --- reporting -----------------------------------------------------------------------------
    def add(self, diag: Diagnostic) -> None:
        self.diags.append(diag)

    def error(self, node: Node, message: str, hint: str | None = None) -> None:
        self.diags.append(node.diag(message, hint))

    def warn(self, node: Node, message: str, hint: str | None = None) -> None:
        self.warnings.append(dataclasses.replace(node.diag(message, hint), severity="warning"))

    def check_keys(
        self, node: Node, allowed: Iterable[str], what: str, *, misplaced: Mapping[str, str] | None = None
    ) -> None:
        """Report every key of the mapping `node` outside `allowed`; `misplaced` says where some go."""
        allowed = tuple(allowed)
        listed = f"allowed keys: {', '.join(allowed)}" if len(allowed) <= _LISTED_KEYS else None
        for key, _ in node.items():
            name = str(key.value)
            if name not in allowed:
                hint = (misplaced or {}).get(name) or did_you_mean(name, allowed) or listed
                self.unknown_key(node, key, f"unknown key '{name}' in {what}", hint)

    def unknown_key(self, parent: Node, key: Node, message: str, hint: str | None) -> None:
        # Key nodes carry their parent's path; report the path of the key itself.
        path = f"{parent.path}.{key.value}" if parent.path else str(key.value)
        self.diags.append(Diagnostic(key.file, key.line, key.col, path, message, hint))

    # --- typed readers ---------------------------------------------------------------------------
    def mapping(self, node: Node, what: str | None = None) -> bool:
        if node.kind != "mapping":
            self.error(node, f"{what or _label(node)} must be a mapping, got {describe(node)}")
            return False
        return True

    def string(self, node: Node | None, what: str | None = None) -> str | None:
        if node is None:
            return None
        if node.kind != "scalar" or not isinstance(node.value, str) or not node.value.strip():
            # YAML reads unquoted `off`, `yes`, `1.0` as booleans and numbers.
            quote = node.kind == "scalar" and node.value is not None and not isinstance(node.value, str)
            hint = "put it in quotes" if quote else None
            self.error(node, f"{what or _label(node)} must be a non-empty string, got {describe(node)}", hint)
            return None
        return node.value

    def boolean(self, node: Node | None, what: str | None = None) -> bool | None:
        if node is None:
            return None
        if node.kind != "scalar" or not isinstance(node.value, bool):
            self.error(node, f"{what or _label(node)} must be true or false, got {describe(node)}")
            return None
        return node.value

    def number(
        self, node: Node | None, what: str | None = None, *, minimum: float | None = None
    ) -> float | None:
        """A finite int or float (an int stays an int), at least `minimum` when given."""
        if node is None:
            return None
        label = what or _label(node)
        value = node.value
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, f"{label} must be a number, got {describe(node)}", number_hint(value))
            return None
        if value != value or value in (float("inf"), float("-inf")):
            self.error(node, f"{label} must be a finite number")
            return None
        if minimum is not None and value < minimum:
            self.error(node, f"{label} must be at least {minimum:g}, got {value}")
            return None
        return value

    def integer(self, node: Node | None, what: str | None = None, *, minimum: int = 0) -> int | None:
        """A whole number from `minimum` up to MAX_AMOUNT."""
        if node is None:
            return None
        label = what or _label(node)
        value = node.value
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, int):
            self.error(node, f"{label} must be a whole number, got {describe(node)}", number_hint(value))
            return None
        if value < minimum:
            wanted = "greater than zero" if minimum == 1 else f"at least {minimum}"
            self.error(node, f"{label} must be {wanted}, got {value}")
            return None
        if value > MAX_AMOUNT:
            self.error(node, f"{label} is too large: {value}", f"the largest is {MAX_AMOUNT}")
            return None
        return value

    def positive_int(self, node: Node | None, what: str | None = None) -> int | None:
        return self.integer(node, what, minimum=1)

    def choice(self, node: Node | None, choices: tuple[str, ...], what: str | None = None) -> str | None:
        if node is None:
            return None
        text = self.string(node, what)
        if text is None:
            return None
        if text not in choices:
            listed = ", ".join(choices)
            close = did_you_mean(text, choices)
            hint = f"{close} (one of {listed})" if close else f"use one of {listed}"
            self.error(node, f"unknown {what or key_name(node)} '{text}'", hint)
            return None
        return text

    def strings(
        self, node: Node | None, what: str | None = None, *, allow_empty: bool = False
    ) -> tuple[str, ...] | None:
        """A string or a list of strings (non-empty unless `allow_empty`)."""
        if node is None:
            return None
        label = what or _label(node)
        if node.kind == "scalar":
            one = self.string(node, label)
            return None if one is None else (one,)
        if node.kind != "sequence" or not (node.elements() or allow_empty):
            kind = "list" if allow_empty else "non-empty list"
            self.error(node, f"{label} must be a string or a {kind} of strings, got {describe(node)}")
            return None
        out: list[str] = []
        for element in node.elements():
            text = self.string(element, f"each entry of {label}")
            if text is not None:
                out.append(text)
        return tuple(out) if len(out) == len(node.elements()) else None


def _label(node: Node) -> str:
    return f"'{key_name(node)}'"
