"""Generated `opa test` files: they pass on the compiled bundle and catch data that disagrees with YAML."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from compiler.api import compile_policy, load_policy
from compiler.bundle import extract_bundle
from compiler.emit import emit_tests
from compiler.errors import EmitError
from compiler.lower import lower
from compiler.model import Policy
from tests.compiler.conftest import Hexarch
from tests.conftest import EXAMPLE_POLICY
from tests.support.servers import ROOT


def opa_test(opa_bin: str, bundle_dir: Path, only_generated: bool = True) -> subprocess.CompletedProcess[str]:
    args = [opa_bin, "test", "--bundle", "--fail-on-empty", "--format", "json"]
    if only_generated:
        args += ["--run", "hexarch.generated"]
    return subprocess.run([*args, str(bundle_dir)], capture_output=True, text=True, timeout=60, check=False)


def failed_tests(proc: subprocess.CompletedProcess[str]) -> set[str]:
    results = json.loads(proc.stdout or "[]")
    return {f"{r['package']}.{r['name']}" for r in results if r.get("fail") or r.get("error")}


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("example") / "bundle"
    extract_bundle(compile_policy(EXAMPLE_POLICY).bundle, directory)
    return directory


def test_hexarch_test_passes_on_the_example() -> None:
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hexarch"), "test", str(EXAMPLE_POLICY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: " in proc.stdout and "FAIL" not in proc.stdout
    assert "all tests passed" in proc.stdout


def test_hexarch_test_reports_policy_errors(hexarch: Hexarch) -> None:
    result = hexarch("test", ROOT / "tests" / "compiler" / "broken" / "zero_limit.yaml")
    assert result.code == 1
    assert "zero_limit.yaml:6:33: error:" in result.err


def test_generated_tests_pass_on_the_example(opa_bin: str, example_dir: Path) -> None:
    proc = opa_test(opa_bin, example_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) >= 60
    # Every enabled policy of the example has its own generated package.
    packages = {r["package"] for r in results}
    for policy in load_policy(EXAMPLE_POLICY).enabled_policies:
        assert f"data.hexarch.generated.{policy.id}_test" in packages


Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[str | int], value: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        target: Any = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(section: str, index: int) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        del config[section][index]

    return mutate


def _append(path: list[str | int], value: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        target: Any = config
        for key in path:
            target = target[key]
        target.append(value)

    return mutate


EXTRA_LIMIT = {
    "id": "intruder/0/rpm",
    "rule": 0,
    "resource": "*",
    "limit": 1_000_000,
    "window_seconds": 60,
    "scope": "global",
    "action": "block",
    "warn_at": None,
}

# A tampered data.json (left) and a generated test that must then fail (right).
TAMPERING: list[tuple[str, Mutation, str]] = [
    ("rpm limit 30 -> 31", _set(["rate_limits", 0, "limit"], 31), "rate_limit_test.test_r0_rpm_limit"),
    ("rpm limit removed", _drop("rate_limits", 0), "rate_limit_test.test_r0_rpm_limit"),
    ("rate limit warns", _set(["rate_limits", 1, "action"], "warn"), "rate_limit_test.test_r0_rph_limit"),
    ("budget $100 -> $10", _set(["budgets", 0, "limit"], 10_000_000), "api_budget_test.test_r0_month_cost"),
    ("budget warns at 90%", _set(["budgets", 0, "warn_at"], 0.9), "api_budget_test.test_r0_month_cost"),
    (
        "tokens per request 128 -> 256",
        _set(["token_limits", 0, "limit"], 256),
        "token_management_test.test_r0_request_128",
    ),
    (
        "tokens per hour on another resource",
        _set(["token_limits", 1, "resource"], "*"),
        "token_management_test.test_r0_tph_other_resource",
    ),
    (
        "temperature max 1.0 -> 1.5",
        _set(["param_bounds", 0, "max"], 1.5),
        "quality_control_test.test_r0_temperature_past_max",
    ),
    (
        "temperature max 1.0 -> 0.9",
        _set(["param_bounds", 0, "max"], 0.9),
        "quality_control_test.test_r0_temperature_at_max",
    ),
    (
        "system prompt 2000 -> 2001",
        _set(["param_bounds", 2, "max_length"], 2001),
        "quality_control_test.test_r2_system_past_max_length",
    ),
    (
        "any model allowed",
        _set(["model_rules", 0, "patterns"], ["tinyllama", "*"]),
        "model_selection_test.test_model_hexarch_other_model_on",
    ),
    (
        "tagged models dropped",
        _set(["model_rules", 0, "patterns"], ["tinyllama"]),
        "model_selection_test.test_model_tinyllama_x_on",
    ),
    (
        "batch window ends 06:01",
        _set(["time_windows", 0, "allowed_hours"], [[1320, 361]]),
        "time_based_test.test_r0_wednesday_06_00_00_utc",
    ),
    (
        "batch window starts 21:59",
        _set(["time_windows", 0, "allowed_hours"], [[1319, 360]]),
        "time_based_test.test_r0_wednesday_21_59_59_utc",
    ),
    (
        "retrain allowed on sunday",
        _set(["time_windows", 1, "forbidden_days"], ["saturday"]),
        "time_based_test.test_r1_sunday_12_00",
    ),
    ("timezone moved", _set(["timezone"], "Asia/Tokyo"), "time_based_test.test_r0_wednesday_22_00_00_utc"),
    ("admins lose access", _set(["access_rules", 0, "roles"], []), "access_control_test.test_r0_role_admin"),
    (
        "deleting models unconfirmed",
        _set(["confirmations", 0, "resource_types"], ["conversation"]),
        "confirmations_test.test_r0_model",
    ),
    ("vision switched on", _set(["features", 1, "enabled"], True), "features_test.test_r1_vision_off"),
    (
        "cheaper input price",
        _set(["pricing", 0, "input_per_million_usd"], 0.01),
        "hexarch_settings_test.test_pricing_tinyllamax",
    ),
    ("enforcement relaxed", _set(["enforcement"], "monitor"), "hexarch_settings_test.test_enforcement"),
    # Changes no boundary test can see, caught by the pinned entries and settings.
    (
        "alice added to the stats readers",
        _append(["access_rules", 0, "users"], "alice"),
        "access_control_test.test_compiled_entries",
    ),
    (
        "llama3 added to the allowed models",
        _append(["model_rules", 0, "patterns"], "llama3"),
        "model_selection_test.test_compiled_entries",
    ),
    (
        "confirmation turned into a plain block",
        _set(["confirmations", 0, "action"], "block"),
        "confirmations_test.test_compiled_entries",
    ),
    (
        "a limit from a policy the file does not have",
        _append(["rate_limits"], {**EXTRA_LIMIT, "policy": "intruder"}),
        "hexarch_settings_test.test_compiled_settings",
    ),
    # ... and by behaviour: the shortest match of each pattern, and windows pinned in July too.
    (
        "tinyllama:* narrowed to tinyllama:x*",
        _set(["model_rules", 0, "patterns"], ["tinyllama", "tinyllama:x*"]),
        "model_selection_test.test_model_tinyllama__on",  # the name "tinyllama:"
    ),
    (
        "UTC read as Europe/London (same offset in January)",
        _set(["timezone"], "Europe/London"),
        "time_based_test.test_r0_wednesday_in_july_21_59_59_utc",
    ),
]


@pytest.mark.parametrize(("mutate", "must_fail"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_generated_tests_catch_tampered_data(
    opa_bin: str, example_dir: Path, tmp_path: Path, mutate: Mutation, must_fail: str
) -> None:
    tampered = tmp_path / "bundle"
    subprocess.run(["cp", "-r", str(example_dir), str(tampered)], check=True)
    data_file = tampered / "hexarch" / "config" / "data.json"
    config = json.loads(data_file.read_text())
    mutate(config)
    data_file.write_text(json.dumps(config))
    proc = opa_test(opa_bin, tampered)
    assert proc.returncode != 0
    failures = failed_tests(proc)
    assert any(name.startswith(f"data.hexarch.generated.{must_fail}") for name in failures), sorted(failures)


@pytest.mark.parametrize("enforcement", ["strict", "warn", "monitor"])
def test_generated_tests_pass_for_every_kind_and_enforcement(
    opa_bin: str, all_kinds_policy: Path, tmp_path: Path, enforcement: str
) -> None:
    policy = tmp_path / "hexarch.yaml"
    text = all_kinds_policy.read_text().replace("enforcement: strict", f"enforcement: {enforcement}")
    policy.write_text(text)
    (tmp_path / "no_secrets.rego").write_bytes((all_kinds_policy.parent / "no_secrets.rego").read_bytes())
    compiled = compile_policy(policy)
    assert compiled.config["enforcement"] == enforcement
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compiled.bundle, bundle_dir)
    proc = opa_test(opa_bin, bundle_dir)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    packages = {r["package"] for r in json.loads(proc.stdout)}
    assert "data.hexarch.generated.retired_test" not in packages  # disabled policies are not pinned
    assert "data.hexarch.generated.team_rates_test" in packages


def test_generated_tests_pass_on_corner_cases(opa_bin: str, tmp_path: Path) -> None:
    compiled = compile_policy(ROOT / "tests" / "compiler" / "policies" / "edge_cases.yaml")
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compiled.bundle, bundle_dir)
    proc = opa_test(opa_bin, bundle_dir)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    names = {f"{r['package']}.{r['name']}" for r in json.loads(proc.stdout)}
    # Ids that are not Rego names still get their own package.
    assert any(n.startswith("data.hexarch.generated.p_9_lives_test.") for n in names)
    assert any(n.startswith("data.hexarch.generated.p_9lives_test.") for n in names)


def test_emitter_refuses_what_it_does_not_know() -> None:
    model = load_policy(EXAMPLE_POLICY)

    class Mystery:
        index = 0
        action = "block"

    odd = Policy("odd", None, True, (Mystery(),))  # type: ignore[arg-type]
    with pytest.raises(EmitError):
        emit_tests(replace(model, policies=(*model.policies, odd)), lower(model))


def test_generated_files_are_opa_fmt_clean(opa_bin: str, example_dir: Path) -> None:
    proc = subprocess.run(
        [opa_bin, "fmt", "--list", str(example_dir / "hexarch" / "generated")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


def test_generated_files_are_strict_and_formatted(
    opa_bin: str, all_kinds_policy: Path, tmp_path: Path
) -> None:
    """What CI asks of rego/ holds for generated files too: `opa check --strict`, `opa fmt`."""
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compile_policy(all_kinds_policy).bundle, bundle_dir)
    check = subprocess.run(
        [opa_bin, "check", "--strict", "--bundle", str(bundle_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    generated = bundle_dir / "hexarch" / "generated"
    fmt = subprocess.run(
        [opa_bin, "fmt", "--list", str(generated)], capture_output=True, text=True, timeout=60
    )
    assert fmt.returncode == 0 and fmt.stdout == "", fmt.stdout + fmt.stderr
