"""The rule-kind registry (compiler/registry.py) against everything that must agree with it.

validate, lower and emit dispatch through the registry; the Rego side has two hand-written wiring
lists (findings.rego's union of findings, decision.rego's quiet fast path) and reads one config
list per kind. A kind added to one place and forgotten in another fails here.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from compiler.emit import _Emitter
from compiler.lower import Config
from compiler.model import LimitRule
from compiler.precompute import SKIPPED_PACKAGES
from compiler.registry import KEY_SCHEMAS, REGISTRY, RULE_LISTS
from compiler.rule_read import LIMIT_KEYS

REGO = Path(__file__).parents[2] / "rego" / "hexarch"
PACKAGES = {kind.rego_package for kind in REGISTRY.values() if kind.rego_package is not None}


def _imports(text: str) -> set[str]:
    return set(re.findall(r"^import data\.hexarch\.lib\.(\w+)", text, re.MULTILINE))


def test_findings_rego_unions_the_findings_of_every_registered_package() -> None:
    text = (REGO / "findings.rego").read_text()
    union = re.search(r"^all := (.*)$", text, re.MULTILINE)
    assert union is not None
    assert set(re.findall(r"(\w+)\.findings", union.group(1))) == PACKAGES
    assert _imports(text) >= PACKAGES


def test_decision_rego_quiet_path_counts_every_registered_package() -> None:
    text = (REGO / "decision.rego").read_text()
    quiet = text[text.index("_quiet if {") : text.index("_sorted(items)")]
    assert set(re.findall(r"count\((\w+)\.findings\) == 0", quiet)) == PACKAGES
    assert "count(custom.violations) == 0" in quiet
    # The packages _others_quiet skips on the compiler's index are those the index speaks for.
    others = quiet[quiet.index("_others_quiet if {") :]
    assert set(re.findall(r"count\((\w+)\.findings\) == 0", others)) == set(SKIPPED_PACKAGES)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_kind_is_complete(name: str) -> None:
    kind = REGISTRY[name]
    assert callable(getattr(_Emitter, kind.emit, None)), f"no emitter method {kind.emit}"
    assert is_dataclass(kind.model)
    if kind.model is LimitRule:
        assert {k for k, (lk, _, _, _) in LIMIT_KEYS.items() if lk == name} == set(kind.kind_keys)
    else:
        assert kind.model.kind == name  # type: ignore[attr-defined]
    # Its config list is typed in Config and read by the Rego library.
    assert kind.config_list in Config.__annotations__
    library = "".join(p.read_text() for p in REGO.glob("*.rego") if not p.name.endswith("_test.rego"))
    assert f"data.hexarch.config.{kind.config_list}" in library
    if kind.rego_package is not None:
        assert (REGO / f"{kind.rego_package}.rego").is_file()
    # Every key it accepts has a JSON Schema (schema/hexarch.schema.json).
    assert set(kind.keys) <= set(KEY_SCHEMAS)


def test_config_lists_are_exactly_the_registry_lists() -> None:
    typed_lists = {k for k, t in Config.__annotations__.items() if "list[Entry]" in str(t)}
    assert typed_lists == set(RULE_LISTS)


def test_no_kind_key_belongs_to_two_kinds() -> None:
    owners: dict[str, str] = {}
    for kind in REGISTRY.values():
        for key in kind.kind_keys:
            assert key not in owners, f"{key} gives both {owners[key]} and {kind.name}"
            owners[key] = kind.name


def test_limit_dataclass_is_shared_by_the_three_limit_kinds() -> None:
    assert {k.name for k in REGISTRY.values() if k.model is LimitRule} == {"rate", "tokens", "budget"}
    assert next(f.name for f in fields(LimitRule)) == "kind"
