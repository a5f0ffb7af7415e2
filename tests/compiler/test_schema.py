"""schema/hexarch.schema.json: generated from the validator's tables, and agreeing with it.

The published file must equal what compiler/schema.py generates now (regenerate with
`python -m compiler.schema --write`); every file `hexarch check` accepts here validates against it
with the `jsonschema` package, and typical mistakes are refused by both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from compiler.schema import SCHEMA_PATH, schema_text
from tests.compiler.conftest import BROKEN, POLICIES
from tests.conftest import EXAMPLE_POLICY

SEEDS = sorted((Path(__file__).parents[1] / "seeds" / "guardrails").glob("*/*.yaml"))
ACCEPTED = [*SEEDS, EXAMPLE_POLICY, *sorted(POLICIES.glob("*.yaml"))]
# Broken files whose mistake is one of shape (a key, a type, a choice), which a schema can see.
REFUSED = [
    "unknown_key",
    "two_kinds",
    "no_kind",
    "unknown_action",
    "unknown_enforcement",
    "unknown_scope",
    "wrong_type",
    "zero_limit",
    "negative_budget",
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_published_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "schema/hexarch.schema.json is stale: run `python -m compiler.schema --write`"
    )


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_accepted_files_validate(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_load(path))]
    assert errors == []


@pytest.mark.parametrize("name", REFUSED)
def test_shape_mistakes_are_refused(validator: jsonschema.Draft202012Validator, name: str) -> None:
    assert list(validator.iter_errors(_load(BROKEN / f"{name}.yaml")))


def test_every_rule_kind_and_key_is_in_the_schema() -> None:
    from compiler.registry import REGISTRY

    schema = json.loads(schema_text())
    for name, kind in REGISTRY.items():
        assert set(schema["$defs"][f"{name}_rule"]["properties"]) == set(kind.keys)


def test_the_seed_confirmation_form_matches_exactly_one_kind(
    validator: jsonschema.Draft202012Validator,
) -> None:
    doc = {"policies": [{"id": "p", "rules": [{"operation": "delete", "action": "require_confirmation"}]}]}
    assert list(validator.iter_errors(doc)) == []
    doc["policies"][0]["rules"][0]["action"] = "block"
    assert list(validator.iter_errors(doc))


def test_example_names_the_schema_for_editors() -> None:
    first = EXAMPLE_POLICY.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schema/hexarch.schema.json"
    assert (EXAMPLE_POLICY.parent / "../schema/hexarch.schema.json").resolve() == SCHEMA_PATH
