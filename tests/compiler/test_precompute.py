"""The compiler's index (compiler/precompute.py): the Rego fast path decides exactly like the lists.

Every policy file of the suite is compiled under each enforcement mode; a real `opa` then
evaluates data.hexarch.decision for many requests twice, once as served (fast path, through
data.hexarch.config.index) and once with the index removed (the generic path over the lists),
and the two decision documents must be identical.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from compiler.api import compile_policy
from compiler.bundle import extract_bundle
from compiler.lower import lower
from compiler.precompute import precompute
from tests.conftest import EXAMPLE_POLICY
from tests.support.servers import ROOT

POLICIES = [
    EXAMPLE_POLICY,
    ROOT / "tests" / "compiler" / "policies" / "all_kinds.yaml",
    ROOT / "tests" / "compiler" / "policies" / "edge_cases.yaml",
    ROOT / "tests" / "compiler" / "policies" / "fast_paths.yaml",
]


def _cases(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Requests over every resource the data names, and a few it does not."""
    named = sorted(config["index"]["by_resource"])
    # the sidecar's own shapes too: it always adds "*", and names the upstream and the model
    sidecar_lists: list[Any] = [[r, "*"] for r in named] + [[r, r, "*"] for r in named[:2]]
    resource_lists: list[Any] = [[r] for r in named] + sidecar_lists
    resource_lists += [[], ["*"], ["nowhere"], ["nowhere", "*"], named[:2], [*named[:1], "nowhere", "*"]]
    resource_lists += [None, "tinyllama"]
    principals: list[Any] = [
        {"id": "alice", "team": "research", "roles": ["user"]},
        {"id": "", "team": None, "roles": []},
        None,
    ]
    estimates: list[Any] = [
        {"prompt_tokens": 12, "max_output_tokens": 64},
        {"prompt_tokens": 7.5},
        {"prompt_tokens": 3.2, "max_output_tokens": 0.5},
        # beyond OPA's machine-word arithmetic: the costs stay exact
        {"prompt_tokens": 10**12 + 7, "max_output_tokens": 3 * 10**9},
        {"prompt_tokens": -1, "max_output_tokens": "64"},
        {},
        None,
    ]
    cases = []
    for resources, principal, estimate in itertools.product(resource_lists, principals, estimates):
        case: dict[str, Any] = {"operation": "chat", "model": "tinyllama", "params": {"temperature": 0.5}}
        for key, value in (("resources", resources), ("principal", principal), ("estimate", estimate)):
            if value is not None:
                case[key] = value
        cases.append(case)
    # What the checks' fast paths depend on: operation, model and feature.
    operations: list[Any] = ["chat", "delete", "batch", "retrain", None]
    # Every name of the exact-name tables, and names only a glob (or nothing) matches.
    index = config["index"]
    literal = set(index["exact_prices"]) | {
        name for entry in index["by_resource"].values() for name in entry.get("models_ok", {})
    }
    models: list[Any] = [*sorted(literal), "tinyllama:1.1b", "tinyX", "bx", "llama3", None, 5]
    features: list[Any] = [None, "voice", "vision", "other", _ABSENT]
    for resources, operation, model, feature in itertools.product(
        resource_lists, operations, models, features
    ):
        case = {"principal": {"id": "bob", "roles": ["admin"]}, "resource_type": "model"}
        for key, value in (("resources", resources), ("operation", operation), ("model", model)):
            if value is not None:
                case[key] = value
        if feature is not _ABSENT:
            case["feature"] = feature
        cases.append(case)
    # What the parameter fast path depends on: which parameters, of which type, in or out of range.
    params: list[Any] = [
        {"temperature": 0.5, "max_tokens": 64},
        {"temperature": 1.5},
        {"temperature": "hot"},
        {"top_p": -0.1, "temperature": 0},
        {"system": "x" * 3000},
        {"system": "brief", "n": 2},
        {"system": ["a", "b"], "stop": ["x", "y", "z"]},
        {"system": None, "temperature": True},
        {"top_p": 0.95, "seed": 3},
        {"top_p": 0.5, "stop": "ab", "seed": -1, "n": 3},
        {},
        "not an object",
    ]
    for resources, param in itertools.product(resource_lists, params):
        case = {"operation": "chat", "model": "tinyllama", "params": param}
        if resources is not None:
            case["resources"] = resources
        cases.append(case)
    # The sidecar's request for every literal model and two a glob may allow, with and without a
    # stated output.
    sidecar_models = [*sorted(literal), "gpt-4o-mini", "tinyllama:1.1b"]
    for resources, model, estimate in itertools.product(sidecar_lists, sidecar_models, estimates[:2]):
        cases.append(
            {
                "resources": resources,
                "operation": "chat",
                "model": model,
                "feature": None,
                "principal": {"id": "carol", "team": "ops"},
                "params": {"temperature": 0.5, "max_tokens": 64},
                "estimate": estimate,
            }
        )
    return cases


_ABSENT = object()


def _opa_value(opa_bin: str, bundle_dir: Path, input_file: Path, query: str, timeout: int = 60) -> Any:
    """`opa eval` of `query` on the bundle for `input_file`: the value, None when undefined."""
    proc = subprocess.run(
        [opa_bin, "eval", "-b", str(bundle_dir), "-i", str(input_file), "-f", "json", query],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    result = json.loads(proc.stdout).get("result")
    return result[0]["expressions"][0]["value"] if result else None


def _policy_copy(source: Path, tmp_path: Path, enforcement: str) -> Path:
    for extra in source.parent.glob("*.rego"):
        (tmp_path / extra.name).write_bytes(extra.read_bytes())
    target = tmp_path / source.name
    target.write_text(source.read_text().replace("enforcement: strict", f"enforcement: {enforcement}"))
    return target


@pytest.mark.parametrize("enforcement", ["strict", "warn", "monitor"])
@pytest.mark.parametrize("policy", POLICIES, ids=[p.stem for p in POLICIES])
def test_fast_path_decides_like_the_lists(
    opa_bin: str, tmp_path: Path, policy: Path, enforcement: str
) -> None:
    compiled = compile_policy(_policy_copy(policy, tmp_path, enforcement))
    config = dict(compiled.config)
    assert "index" in config
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compiled.bundle, bundle_dir)
    cases = _cases(config)
    (tmp_path / "input.json").write_text(json.dumps({"cases": cases}))
    # `one_body`: whether decision.rego's one-body branch decided (only it reads index.enforcement).
    query = (
        "[[fast, generic, one_body] | some c in input.cases; "
        "fast := data.hexarch.decision with input as c; "
        "generic := data.hexarch.decision with input as c with data.hexarch.config.index as null; "
        'marked := data.hexarch.decision with input as c with data.hexarch.config.index.enforcement as "x"; '
        'one_body := marked.enforcement == "x"]'
    )
    pairs = _opa_value(opa_bin, bundle_dir, tmp_path / "input.json", query, timeout=120)
    assert len(pairs) == len(cases)
    for case, (fast, generic, _) in zip(cases, pairs, strict=True):
        assert fast == generic, case
    # The cases reach limits on the fast paths (not only empty lists), and the one-body branch
    # decides some requests with limits (in edge_cases.yaml a time window concerns every operation,
    # so no request is quiet enough for it).
    assert any(fast["limits"] for fast, _, _ in pairs)
    one_body = [fast for fast, _, one_body in pairs if one_body]
    if policy.stem == "edge_cases":
        assert one_body == []
    else:
        assert any(fast["limits"] for fast in one_body)


def test_index_orders_templates_and_keeps_fixed_fields() -> None:
    config = precompute(lower(compile_policy(EXAMPLE_POLICY).model))
    index = config["index"]
    ids = [t["item"]["id"] for t in index["by_resource"]["tinyllama"]["limits"]]
    assert ids == [
        "api_budget/0/month",
        "rate_limit/0/rph",
        "rate_limit/0/rpm",
        "token_management/0/request",
        "token_management/0/tph",
    ]
    assert index["by_resource"]["tinyllama"]["reservation"] == 128
    assert index["any"]["limits"] == []
    # The access rule on stats applies to every operation there; the others name operations.
    assert index["by_resource"]["stats"]["checks"] == {
        "*": True,
        "batch": True,
        "retrain": True,
        "delete": True,
    }
    assert index["by_resource"]["tinyllama"]["checks"] == {"batch": True, "retrain": True, "delete": True}
    assert index["by_resource"]["tinyllama"]["models"] == {"model_selection": ["tinyllama", "tinyllama:*"]}
    assert index["features"] == {"voice": True, "vision": True}
    assert index["any"]["params"] == {
        "temperature": [{"lo": 0.0, "hi": 1.0}],
        "top_p": [{"lo": 0.0, "hi": 1.0}],
        "system": [{}],  # max_length: only the full checks say
    }
    # Prices in tenths of a micro-USD per token (d = 10): small integers for OPA's arithmetic.
    tinyllama_price = {
        "model": "tinyllama*",
        "usd": {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2},
        "i": 1,
        "o": 2,
        "d": 10,
    }
    assert index["prices"] == [tinyllama_price]
    assert index["exact_prices"] == {"tinyllama": tinyllama_price}
    assert index["by_resource"]["tinyllama"]["models_ok"] == {"tinyllama": True}
    assert index["enforcement"] == "strict"
    entry = index["by_resource"]["tinyllama"]
    assert entry["ranges"] == [
        {"p": "temperature", "lo": 0.0, "hi": 1.0},
        {"p": "top_p", "lo": 0.0, "hi": 1.0},
    ]
    assert entry["lengths"] == [{"p": "system", "n": 2000}]
    assert entry["unchecked"] == []
    assert entry["scoped"] is False
    # A global rate limit is complete (subject and cost); a budget's cost is patched in per request.
    assert entry["limits"][2] == {
        "item": {
            "id": "rate_limit/0/rpm",
            "policy": "rate_limit",
            "unit": "requests",
            "window_seconds": 60,
            "scope": "global",
            "subject": "tinyllama",
            "limit": 30,
            "cost": 1,
            "warn_at": None,
            "action": "block",
        },
        "k": "",
    }
    assert entry["limits"][0]["k"] == "usd"
    assert [t["k"] for t in entry["limits"][3:]] == ["out", "tokens"]


def test_exact_name_tables_decide_only_what_the_compiler_can_match() -> None:
    """Literal names get their price and allow-list verdict at compile time, in file order; a name
    a glob with classes or alternatives might match first is left to OPA's scan."""
    config = precompute(
        lower(compile_policy(ROOT / "tests" / "compiler" / "policies" / "fast_paths.yaml").model)
    )
    index = config["index"]
    exact = {name: (p["model"], p["i"], p["o"], p["d"]) for name, p in index["exact_prices"].items()}
    assert exact == {
        "tinyllama": ("tinyllama", 1, 2, 10),
        "nano": ("nano", 1, 123_456_789_000, 10**9),
    }
    # "axolotl", "gpt-4o", "mistral": "[ab]x*" comes first, which only OPA's glob.match decides.
    assert index["by_resource"]["*"]["models_ok"] == {"tinyllama": True, "axolotl": True, "nano": True}
    assert index["by_resource"]["premium"]["models_ok"] == {
        "tinyllama": True,
        "axolotl": True,
        "nano": True,
        "mistral": True,
    }
    # A deny-list applies there: no allow-list shortcut at all.
    assert "models_ok" not in index["by_resource"]["restricted"]
    tinyllama = index["by_resource"]["tinyllama"]
    assert tinyllama["scoped"] is True
    assert [t["k"] for t in tinyllama["limits"]] == [
        "",
        "principal:",
        "team:usd",
        "principal:out",
        "principal:tokens",
    ]
    assert tinyllama["unchecked"] == ["n", "seed"]
    assert tinyllama["lengths"] == [{"p": "system", "n": 50}, {"p": "stop", "n": 2}]


def test_no_index_when_a_resource_is_not_a_string() -> None:
    config = lower(compile_policy(EXAMPLE_POLICY).model)
    broken = json.loads(json.dumps(config))
    broken["rate_limits"][0]["resource"] = 5
    assert "index" not in precompute(broken)


def test_the_sidecars_request_takes_the_fast_path(opa_bin: str, tmp_path: Path) -> None:
    """The request the sidecar sends for a chat (bench/decision_input.json: the model and "*") is
    decided through the index, not the generic path: what the speed-up is for."""
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compile_policy(EXAMPLE_POLICY).bundle, bundle_dir)
    query = "data.hexarch.lib.applies.index_entry.limits"
    sidecar_input = ROOT / "bench" / "decision_input.json"
    templates = _opa_value(opa_bin, bundle_dir, sidecar_input, query)
    assert templates is not None, "the index entry is undefined for the sidecar's request"
    assert [t["item"]["id"] for t in templates][:1] == ["api_budget/0/month"]
    # decision.rego's one-body branch decides it (only that branch reads index.enforcement).
    marked = 'data.hexarch.decision.enforcement with data.hexarch.config.index.enforcement as "one-body"'
    assert _opa_value(opa_bin, bundle_dir, sidecar_input, marked) == "one-body"
