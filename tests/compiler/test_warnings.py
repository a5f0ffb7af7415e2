"""Located warnings: valid forms that are probably not what the author meant.

`hexarch check` and `hexarch test` print them (`FILE:LINE:COL: warning: ...`) and still succeed;
with `--strict` a warning fails the command (exit 1). Each case is a small policy file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.api import compile_policy
from tests.compiler.conftest import Hexarch
from tests.conftest import EXAMPLE_POLICY

PRICED = "pricing:\n  tinyllama: {input_per_million_usd: 0.1, output_per_million_usd: 0.2}\n"

# name, policies YAML (after `policies:`), (line, col) of the warning, words of its message
CASES: list[tuple[str, str, tuple[int, int], str]] = [
    (
        "allow-list of only *",
        '  - id: models\n    rules:\n      - model: "*"\n        allowed: true\n        action: allow\n',
        (6, 16),
        "the allow-list of policy 'models' lists only '*': it permits every model",
    ),
    (
        "allowed_hours of the whole day",
        '  - id: hours\n    rules:\n      - operation: batch\n        allowed_hours: ["00:00-24:00"]\n',
        (7, 24),
        "allowed_hours covers the whole day: this window never matches",
    ),
    (
        "allowed_days of every day",
        "  - id: days\n    rules:\n      - operation: batch\n"
        "        allowed_days: [mon, tue, wed, thu, fri, sat, sun]\n",
        (7, 23),
        "allowed_days lists every day of the week: it restricts nothing",
    ),
    (
        "budget with no pricing for an allowed model",
        "  - id: spend\n    rules:\n      - monthly_budget: 10\n  - id: models\n    rules:\n"
        "      - model: [tinyllama, mistral]\n        action: allow\n",
        (6, 25),
        "budget of policy 'spend' has no pricing for mistral: its cost is counted at the default price",
    ),
    (
        "action allow on a rate limit",
        "  - id: rates\n    rules:\n      - requests_per_minute: 5\n        action: allow\n",
        (7, 17),
        "'action: allow' does not switch off a rate rule: it is enforced as 'block'",
    ),
    (
        "action allow on a deny-list entry",
        "  - id: models\n    rules:\n      - model: gpt-4o\n        allowed: false\n        action: allow\n",
        (8, 17),
        "'action: allow' does not switch off a model rule: it is enforced as 'block'",
    ),
]


def _write(tmp_path: Path, policies: str) -> Path:
    path = tmp_path / "hexarch.yaml"
    path.write_text(PRICED + "policies:\n" + policies, encoding="utf-8")
    return path


@pytest.mark.parametrize(("policies", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_warning_is_located_and_strict_fails(
    hexarch: Hexarch, tmp_path: Path, policies: str, where: tuple[int, int], message: str
) -> None:
    path = _write(tmp_path, policies)
    plain = hexarch("check", path)
    assert plain.code == 0, plain.err
    lines = [line for line in plain.err.splitlines() if ": warning: " in line]
    assert len(lines) == 1, plain.err
    assert lines[0].startswith(f"{path}:{where[0]}:{where[1]}: warning: {message}")
    strict = hexarch("check", "--strict", path)
    assert strict.code == 1
    assert "1 warning (--strict)" in strict.err


def test_strict_test_fails_on_a_warning(hexarch: Hexarch, tmp_path: Path) -> None:
    path = _write(tmp_path, CASES[0][1])
    assert hexarch("test", path).code == 0
    strict = hexarch("test", "--strict", path)
    assert strict.code == 1 and ": warning: " in strict.err


def test_a_clean_file_passes_strict(hexarch: Hexarch) -> None:
    result = hexarch("check", "--strict", EXAMPLE_POLICY)
    assert result.code == 0 and result.err == ""


def test_a_priced_budget_and_a_named_allow_list_do_not_warn(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "  - id: spend\n    rules:\n      - monthly_budget: 10\n  - id: models\n    rules:\n"
        "      - model: tinyllama\n        action: allow\n",
    )
    assert compile_policy(path).model.warnings == ()


def test_action_allow_keeps_the_rule(tmp_path: Path) -> None:
    """The stricter reading: an `allow` rate limit still counts (block), an allow-list still lists."""
    path = _write(
        tmp_path,
        "  - id: rates\n    rules:\n      - requests_per_minute: 5\n        action: allow\n"
        "  - id: models\n    rules:\n      - model: tinyllama\n"
        "        allowed: true\n        action: allow\n",
    )
    config = compile_policy(path).config
    assert [(r["id"], r["action"], r["limit"]) for r in config["rate_limits"]] == [
        ("rates/0/rpm", "block", 5)
    ]
    assert [(m["patterns"], m["allowed"], m["action"]) for m in config["model_rules"]] == [
        (["tinyllama"], True, "block")
    ]
