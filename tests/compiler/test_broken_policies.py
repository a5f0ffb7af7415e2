"""Broken policy files: each is rejected at the right FILE:LINE:COL, and no bundle is written.

Each fixture in broken/ states what it expects in `# expect: LINE:COL: MESSAGE[; HINT]` comments;
a fixture with several problems lists them all, because the compiler reports every problem at once.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.compiler.conftest import BROKEN, Hexarch

FIXTURES = sorted(BROKEN.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.MULTILINE)


def expectations(path: Path) -> list[tuple[int, int, str]]:
    found = [(int(a), int(b), msg) for a, b, msg in EXPECT.findall(path.read_text(encoding="utf-8"))]
    assert found, f"{path.name} states no expectation"
    return found


def test_there_are_enough_broken_fixtures() -> None:
    assert len(FIXTURES) >= 10


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_compile_rejects_at_the_right_place_and_writes_nothing(
    fixture: Path, hexarch: Hexarch, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.tar.gz"
    result = hexarch("compile", fixture, "-o", out)
    assert result.code == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    for line, col, fragment in expectations(fixture):
        prefix = f"{fixture}:{line}:{col}: error: "
        matching = [text for text in lines if text.startswith(prefix)]
        assert matching, f"no diagnostic at {line}:{col} in:\n{result.err}"
        # The message comes before " (at PATH)" and the hint after it: "; " separates the two here.
        parts = fragment.split("; ")
        assert any(all(part in text for part in parts) for text in matching), (
            f"'{fragment}' not in {matching}"
        )
    assert result.out == ""


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_check_reports_the_same_problems(fixture: Path, hexarch: Hexarch) -> None:
    result = hexarch("check", fixture)
    assert result.code == 1
    for line, col, _ in expectations(fixture):
        assert f"{fixture}:{line}:{col}: error: " in result.err


def test_every_problem_is_reported_in_one_run(hexarch: Hexarch) -> None:
    result = hexarch("check", BROKEN / "many_errors.yaml")
    assert result.err.count(": error: ") == len(expectations(BROKEN / "many_errors.yaml")) == 6
    assert "6 errors; nothing written" in result.err


def test_diagnostics_carry_the_yaml_path(hexarch: Hexarch) -> None:
    result = hexarch("check", BROKEN / "unknown_key.yaml")
    assert "(at policies[0].rules[0].requests_per_minut)" in result.err


def test_an_existing_bundle_is_left_untouched(hexarch: Hexarch, tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    out.write_bytes(b"previous bundle")
    result = hexarch("compile", BROKEN / "zero_limit.yaml", "-o", out)
    assert result.code == 1
    assert out.read_bytes() == b"previous bundle"


def test_missing_file_is_a_located_error(hexarch: Hexarch, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = hexarch("check", missing)
    assert result.code == 1
    assert result.err.startswith(f"{missing}:1:1: error: cannot read policy file")
