"""`hexarch compile | check | test` as a user runs them."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from tests.compiler.conftest import BROKEN, Hexarch
from tests.conftest import EXAMPLE_POLICY
from tests.support.servers import ROOT


def test_check_accepts_the_example(hexarch: Hexarch) -> None:
    result = hexarch("check", EXAMPLE_POLICY)
    assert result.code == 0
    assert result.out.strip() == f"{EXAMPLE_POLICY}: ok (9 policies, 13 rules)"
    assert result.err == ""


def test_compile_writes_a_bundle_and_says_so(hexarch: Hexarch, tmp_path: Path) -> None:
    out = tmp_path / "out" / "bundle.tar.gz"
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out)
    assert result.code == 0, result.err
    assert result.out.startswith(f"{out}: 9 policies, 13 rules, revision ")
    with tarfile.open(out) as tar:
        assert tar.getnames()[:2] == [".manifest", "hexarch/config/data.json"]


def test_compile_needs_an_output(hexarch: Hexarch) -> None:
    result = hexarch("compile", EXAMPLE_POLICY)
    assert result.code == 2
    assert "-o/--output" in result.err


def test_console_command_reports_errors_without_traceback(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "hexarch"),
            "compile",
            str(BROKEN / "impossible_window.yaml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(
        f"{BROKEN / 'impossible_window.yaml'}:6:24: error: impossible"
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_test_command_lists_tests_when_verbose(hexarch: Hexarch, tmp_path: Path) -> None:
    policy = tmp_path / "small.yaml"
    policy.write_text("policies:\n  - id: rpm\n    rules:\n      - requests_per_minute: 5\n")
    result = hexarch("test", "-v", policy)
    assert "data.hexarch.generated.rpm_test.test_r0_rpm_limit: PASS" in result.out


def test_output_through_a_symlink_replaces_its_target(hexarch: Hexarch, tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    link = tmp_path / "current.tar.gz"
    link.symlink_to(tmp_path / "bundles" / "v1.tar.gz")
    assert hexarch("compile", EXAMPLE_POLICY, "-o", link).code == 0
    assert link.is_symlink()  # OPA configs often point at a stable link name
    with tarfile.open(tmp_path / "bundles" / "v1.tar.gz") as tar:
        assert ".manifest" in tar.getnames()


def test_bundle_permissions_follow_the_umask_or_the_existing_file(hexarch: Hexarch, tmp_path: Path) -> None:
    fresh, kept = tmp_path / "fresh.tar.gz", tmp_path / "kept.tar.gz"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    previous = os.umask(0o022)
    try:
        assert hexarch("compile", EXAMPLE_POLICY, "-o", fresh).code == 0
        assert hexarch("compile", EXAMPLE_POLICY, "-o", kept).code == 0
    finally:
        os.umask(previous)
    # Readable by an OPA running as another user, as any file the user writes would be.
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_dash_writes_the_bundle_to_stdout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hexarch"), "compile", str(EXAMPLE_POLICY), "-o", "-"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.getnames()[0] == ".manifest"
    assert proc.stderr.decode().startswith("<stdout>: 9 policies, 13 rules, revision ")


def test_custom_rego_that_does_not_compile_is_a_located_error(hexarch: Hexarch, tmp_path: Path) -> None:
    """OPA refuses a whole bundle for one broken module: the compiler says where, and writes nothing."""
    (tmp_path / "no_pii.rego").write_text(
        "package hexarch.custom.no_pii\n\n"
        "violations contains v if {\n"
        '\tcontains(input.params.system, "SSN"\n'
        '\tv := {"code": "pii", "message": "no SSNs"}\n'
        "}\n"
    )
    policy = tmp_path / "hexarch.yaml"
    policy.write_text(
        "custom:\n  - {id: no_pii, file: no_pii.rego}\n"
        "policies:\n  - id: a\n    rules: [{requests_per_minute: 3}]\n"
    )
    out = tmp_path / "bundle.tar.gz"
    for args in (("check", policy), ("compile", policy, "-o", out)):
        result = hexarch(*args)
        assert result.code == 1
        assert result.err.startswith(f"{tmp_path / 'no_pii.rego'}:5:2: error: unexpected identifier token")
        assert "1 error; nothing written" in result.err
    assert not out.exists()
