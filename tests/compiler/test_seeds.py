"""The original Hexarch Guardrails policy files, every published version, used verbatim.

tests/seeds/guardrails/ holds `hexarch.yaml` and `tinyllama_hexarch.yaml` exactly as the public
repository published them (see its README). For each: `hexarch check` exits 0, `hexarch test`
passes, and a table of decisions by the real `opa eval` pins what the files' own comments say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compiler.api import compile_policy
from compiler.bundle import write_bundle
from tests.compiler.conftest import Hexarch
from tests.compiler.test_decision_table import decide

SEEDS_DIR = Path(__file__).parents[1] / "seeds" / "guardrails"
VERSIONS = sorted(p.name for p in SEEDS_DIR.iterdir() if p.is_dir())
SEED_FILES = sorted(SEEDS_DIR.glob("*/*.yaml"))
TINYLLAMA = [p for p in SEED_FILES if p.name == "tinyllama_hexarch.yaml"]
GUARDRAILS = [p for p in SEED_FILES if p.name == "hexarch.yaml"]

WEDNESDAY_NOON = "2026-01-14T12:00:00"  # timezone: the seeds name none, so UTC
WEDNESDAY_EVENING = "2026-01-14T20:00:00"
WEDNESDAY_1730 = "2026-01-14T17:30:00"
WEDNESDAY_NIGHT = "2026-01-14T23:00:00"
FRIDAY_NOON = "2026-01-16T12:00:00"


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_every_published_version_is_here() -> None:
    assert VERSIONS == ["bbf0e3c", "ffd198f"]
    assert len(SEED_FILES) == 4
    # The two versions differ only in the budget key's spelling.
    for name in ("hexarch.yaml", "tinyllama_hexarch.yaml"):
        old, new = (SEEDS_DIR / v / name for v in VERSIONS)
        assert "monthly_budget_usd:" in old.read_text() and "monthly_budget_usd:" not in new.read_text()
        assert old.read_text().replace("monthly_budget_usd:", "monthly_budget:") == new.read_text()


@pytest.mark.parametrize("seed", SEED_FILES, ids=_ids(SEED_FILES))
def test_check_accepts_the_seed(hexarch: Hexarch, seed: Path) -> None:
    result = hexarch("check", seed)
    assert result.code == 0, result.err
    assert f"{seed}: ok" in result.out


@pytest.mark.parametrize("seed", SEED_FILES, ids=_ids(SEED_FILES))
def test_generated_tests_pass(hexarch: Hexarch, seed: Path) -> None:
    result = hexarch("test", seed)
    assert result.code == 0, result.out + result.err
    assert "all tests passed" in result.out


@pytest.mark.parametrize("seed", SEED_FILES, ids=_ids(SEED_FILES))
def test_strict_fails_on_the_seeds_unpriced_budgets(hexarch: Hexarch, seed: Path) -> None:
    """The seeds budget in USD but price no model: a located warning, fatal under --strict."""
    plain = hexarch("check", seed)
    assert plain.code == 0
    assert f"{seed}:" in plain.err and ": warning: budget of policy 'api_budget' has no pricing" in plain.err
    strict = hexarch("check", "--strict", seed)
    assert strict.code == 1
    assert "(--strict)" in strict.err and "ok" not in strict.out


# --- decisions -----------------------------------------------------------------------------------

Report = tuple[str, str, int]


def _bundle(tmp_path_factory: pytest.TempPathFactory, seed: Path) -> Path:
    path = tmp_path_factory.mktemp("seed") / "bundle.tar.gz"
    write_bundle(compile_policy(seed).bundle, path)
    return path


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "request": {"id": "req-1", "method": "POST", "path": "/api/chat", "api": "tinyllama.chat"},
        "principal": {"id": "alice", "team": "ml", "roles": [], "tier": "pro", "authenticated": True},
        "resources": ["tinyllama_chat", "tinyllama", "*"],
        "operation": "chat",
        "resource_type": None,
        "resource_owner": None,
        "feature": None,
        "confirmed": False,
        "model": "tinyllama",
        "params": {"temperature": 0.7, "num_predict": 128, "stream": False},
        "estimate": {"prompt_tokens": 42, "max_output_tokens": 128},
    }
    params = changes.pop("params", {})
    doc.update(changes)
    doc["params"] = {**doc["params"], **params}
    return doc


QUALITY = ("quality_control", "invalid_parameter", 400)
MODEL = ("model_selection", "model_not_allowed", 403)
CLEAR_CACHE = ("safe_delete", "confirmation_required", 428)
VOICE = ("time_based", "time_restricted", 403)

# name, request changes, time (UTC), allowed, violations, warnings
TINYLLAMA_TABLE: list[tuple[str, dict[str, Any], str, bool, set[Report], set[Report]]] = [
    ("plain chat with tinyllama", {}, WEDNESDAY_NOON, True, set(), set()),
    # Policy 7: only tinyllama passes model_selection; `action: allow` does not switch the list off.
    ("another model", {"model": "mistral"}, WEDNESDAY_NOON, False, {MODEL}, set()),
    ("no model named", {"model": None}, WEDNESDAY_NOON, False, {MODEL}, set()),
    # Policy 4: temperature 0.0-1.0, num_predict 1-512 block; a long system prompt warns.
    ("temperature 1.0", {"params": {"temperature": 1.0}}, WEDNESDAY_NOON, True, set(), set()),
    ("temperature 1.5", {"params": {"temperature": 1.5}}, WEDNESDAY_NOON, False, {QUALITY}, set()),
    ("num_predict 512", {"params": {"num_predict": 512}}, WEDNESDAY_NOON, True, set(), set()),
    ("num_predict 513", {"params": {"num_predict": 513}}, WEDNESDAY_NOON, False, {QUALITY}, set()),
    ("num_predict 0", {"params": {"num_predict": 0}}, WEDNESDAY_NOON, False, {QUALITY}, set()),
    ("system of 2000 chars", {"params": {"system": "s" * 2000}}, WEDNESDAY_NOON, True, set(), set()),
    ("system of 2001 chars", {"params": {"system": "s" * 2001}}, WEDNESDAY_NOON, True, set(), {QUALITY}),
    # Policy 3: clear_cache needs confirmation (428), and passes once confirmed.
    ("clear_cache", {"operation": "clear_cache"}, WEDNESDAY_NOON, False, {CLEAR_CACHE}, set()),
    (
        "clear_cache confirmed",
        {"operation": "clear_cache", "confirmed": True},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
    # Policy 6: voice in business hours warns (forbidden 09-17), and so does any time outside the
    # off-peak allowed_hours 18-08; at 20:00 it is quiet.
    ("voice at noon", {"operation": "chat_with_voice"}, WEDNESDAY_NOON, True, set(), {VOICE}),
    ("voice at 17:30", {"operation": "chat_with_voice"}, WEDNESDAY_1730, True, set(), {VOICE}),
    ("voice at 20:00", {"operation": "chat_with_voice"}, WEDNESDAY_EVENING, True, set(), set()),
    # Policy 5 is `enabled: false`: an anonymous caller of the voice endpoint is not refused.
    (
        "anonymous voice caller",
        {
            "resources": ["tinyllama_voice", "tinyllama", "*"],
            "principal": {"id": None, "roles": [], "authenticated": False},
        },
        WEDNESDAY_EVENING,
        True,
        set(),
        set(),
    ),
]

SAFE_DELETE = ("safe_delete", "confirmation_required", 428)
DEPLOY = ("time_based", "confirmation_required", 428)
EXPENSIVE = ("time_based", "time_restricted", 403)
ACCESS = ("access_control", "access_denied", 403)
EXPERIMENTAL = ("feature_flags", "feature_disabled", 403)
BETA = ("feature_flags", "feature_requires_approval", 403)
OPENAI = {"resources": ["openai", "*"], "model": "gpt-4o"}

GUARDRAILS_TABLE: list[tuple[str, dict[str, Any], str, bool, set[Report], set[Report]]] = [
    ("plain openai call", OPENAI, WEDNESDAY_NOON, True, set(), set()),
    # Policy 3: destructive operations on the listed resource types need confirmation.
    (
        "delete a file",
        {"operation": "delete", "resource_type": "file"},
        WEDNESDAY_NOON,
        False,
        {SAFE_DELETE},
        set(),
    ),
    (
        "delete a file, confirmed",
        {"operation": "delete", "resource_type": "file", "confirmed": True},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
    (
        "delete a conversation",
        {"operation": "delete", "resource_type": "conversation"},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
    (
        "truncate a table",
        {"operation": "truncate", "resource_type": "table"},
        WEDNESDAY_NOON,
        False,
        {SAFE_DELETE},
        set(),
    ),
    (
        "format a disk",
        {"operation": "format", "resource_type": "disk"},
        WEDNESDAY_NOON,
        False,
        {SAFE_DELETE},
        set(),
    ),
    ("format a table", {"operation": "format", "resource_type": "table"}, WEDNESDAY_NOON, True, set(), set()),
    # Policy 5: deploys at night (22:00-06:00) need confirmation instead of being blocked.
    ("deploy at noon", {"operation": "deploy_to_production"}, WEDNESDAY_NOON, True, set(), set()),
    ("deploy at 23:00", {"operation": "deploy_to_production"}, WEDNESDAY_NIGHT, False, {DEPLOY}, set()),
    (
        "deploy at 23:00, confirmed",
        {"operation": "deploy_to_production", "confirmed": True},
        WEDNESDAY_NIGHT,
        True,
        set(),
        set(),
    ),
    # ... and expensive operations on Friday to Sunday warn.
    ("expensive on a Wednesday", {"operation": "expensive_operation"}, WEDNESDAY_NOON, True, set(), set()),
    ("expensive on a Friday", {"operation": "expensive_operation"}, FRIDAY_NOON, True, set(), {EXPENSIVE}),
    # Policy 4: admin operations for @owner (the owner role) only; sensitive data for @self only.
    (
        "admin operation by an owner",
        {"resources": ["admin_operations", "*"], "principal": {"id": "ann", "roles": ["owner"]}},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
    (
        "admin operation by a stranger",
        {"resources": ["admin_operations", "*"]},
        WEDNESDAY_NOON,
        False,
        {ACCESS},
        set(),
    ),
    (
        "own sensitive data",
        {"resources": ["sensitive_data", "*"], "resource_owner": "alice"},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
    (
        "someone else's sensitive data",
        {"resources": ["sensitive_data", "*"], "resource_owner": "bob"},
        WEDNESDAY_NOON,
        False,
        {ACCESS},
        set(),
    ),
    (
        "sensitive data with no owner named",
        {"resources": ["sensitive_data", "*"]},
        WEDNESDAY_NOON,
        False,
        {ACCESS},
        set(),
    ),
    # Policy 6: the experimental model feature is off; beta_api needs approval (warn).
    ("experimental feature", {"feature": "experimental_model"}, WEDNESDAY_NOON, False, {EXPERIMENTAL}, set()),
    ("beta api", {"feature": "beta_api"}, WEDNESDAY_NOON, True, set(), {BETA}),
    (
        "beta api by an admin",
        {"feature": "beta_api", "principal": {"id": "root", "roles": ["admin"]}},
        WEDNESDAY_NOON,
        True,
        set(),
        set(),
    ),
]


def _reports(items: list[dict[str, Any]]) -> set[Report]:
    return {(i["policy"], i["code"], i["status"]) for i in items}


@pytest.fixture(scope="module", params=TINYLLAMA, ids=_ids(TINYLLAMA))
def tinyllama_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory, request.param)


@pytest.fixture(scope="module", params=GUARDRAILS, ids=_ids(GUARDRAILS))
def guardrails_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory, request.param)


@pytest.mark.parametrize(
    ("changes", "when", "allowed", "violations", "warnings"),
    [row[1:] for row in TINYLLAMA_TABLE],
    ids=[row[0] for row in TINYLLAMA_TABLE],
)
def test_tinyllama_decisions(
    opa_bin: str,
    tinyllama_bundle: Path,
    changes: dict[str, Any],
    when: str,
    allowed: bool,
    violations: set[Report],
    warnings: set[Report],
) -> None:
    decision = decide(opa_bin, tinyllama_bundle, _doc(**changes), when)
    assert (decision["allow"], _reports(decision["violations"])) == (allowed, violations)
    assert _reports(decision["warnings"]) == warnings


@pytest.mark.parametrize(
    ("changes", "when", "allowed", "violations", "warnings"),
    [row[1:] for row in GUARDRAILS_TABLE],
    ids=[row[0] for row in GUARDRAILS_TABLE],
)
def test_guardrails_decisions(
    opa_bin: str,
    guardrails_bundle: Path,
    changes: dict[str, Any],
    when: str,
    allowed: bool,
    violations: set[Report],
    warnings: set[Report],
) -> None:
    decision = decide(opa_bin, guardrails_bundle, _doc(**changes), when)
    assert (decision["allow"], _reports(decision["violations"])) == (allowed, violations)
    assert _reports(decision["warnings"]) == warnings


def test_tinyllama_limits(opa_bin: str, tinyllama_bundle: Path) -> None:
    """Policies 1, 2 and 8: the counters the sidecar enforces for a chat call."""
    decision = decide(opa_bin, tinyllama_bundle, _doc(), WEDNESDAY_NOON)
    limits = {e["id"]: e for e in decision["limits"]}
    assert {k: (v["limit"], v["action"], v["warn_at"]) for k, v in limits.items()} == {
        "rate_limit/0/rpm": (30, "block", None),
        "rate_limit/0/rph": (500, "block", None),
        "rate_limit/1/rpm": (20, "block", None),
        "rate_limit/1/rph": (300, "block", None),
        "api_budget/0/month": (100_000_000, "block", 0.75),  # 100 USD in micro-USD, warn at 75%
        "token_management/0/request": (128, "block", 0.8),
        "token_management/0/tph": (10000, "block", 0.8),
    }


def test_guardrails_budgets(opa_bin: str, guardrails_bundle: Path) -> None:
    """Policies 1 and 2 for an OpenAI call: its budget (USD, in either spelling) and rate limits."""
    decision = decide(opa_bin, guardrails_bundle, _doc(**OPENAI), WEDNESDAY_NOON)
    limits = {e["id"]: e for e in decision["limits"]}
    assert {k: (v["limit"], v["warn_at"]) for k, v in limits.items()} == {
        "api_budget/0/month": (10_000_000, 0.75),
        "rate_limit/0/rpm": (100, None),
        "rate_limit/0/rph": (1000, None),
        "rate_limit/2/rpm": (20, None),
    }
