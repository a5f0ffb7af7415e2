"""The `opa` binary: where it is, and what the compiler asks of it (check, test, sign).

Lookup order: $HEXARCH_OPA, then <repo>/.tools/bin/opa (installed by scripts/setup.sh at the one
pinned version), then PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import OpaToolError

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_opa() -> str:
    candidates = [
        os.environ.get("HEXARCH_OPA"),
        str(REPO_ROOT / ".tools" / "bin" / "opa"),
        shutil.which("opa"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OpaToolError("opa not found: set HEXARCH_OPA, run scripts/setup.sh, or put opa on PATH")


@dataclass(frozen=True)
class OpaResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_opa(args: list[str], timeout: float = 120.0, cwd: Path | None = None) -> OpaResult:
    opa = find_opa()
    try:
        proc = subprocess.run(
            [opa, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OpaToolError(f"running opa {' '.join(args[:1])} failed: {exc}") from exc
    return OpaResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class OpaProblem:
    file: str  # as given in `modules`
    row: int
    col: int
    message: str


def opa_check_modules(modules: Mapping[str, str]) -> list[OpaProblem]:
    """`opa check` (Rego v1) on modules given as {relative path: source}; every error it reports."""
    with tempfile.TemporaryDirectory(prefix="hexarch-check-") as tmp:
        root = Path(tmp)
        for name, source in modules.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
        result = run_opa(["check", "--format", "json", "."], cwd=root)
    if result.ok:
        return []
    try:
        errors = json.loads(result.stderr or result.stdout)["errors"]
        return [
            OpaProblem(
                e["location"]["file"], int(e["location"]["row"]), int(e["location"]["col"]), e["message"]
            )
            for e in errors
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise OpaToolError(f"opa check failed: {(result.stderr or result.stdout).strip()[:500]}") from exc


def opa_test_bundle(bundle: Path, *, verbose: bool = False) -> OpaResult:
    """`opa test --bundle` on a bundle file or directory; fails when no test ran."""
    args = ["test", "--bundle", "--fail-on-empty", "--timeout", "60s"]
    if verbose:
        args.append("--verbose")
    return run_opa([*args, str(bundle)])


def opa_sign(bundle_dir: Path, signing_key: str, signing_alg: str, output_dir: Path) -> Path:
    """Write `.signatures.json` for the bundle directory into `output_dir`; return its path.

    Runs inside the directory: the signed file names must be the bundle's own (".manifest", ...),
    not paths of the temporary directory, or `opa run --verification-key` rejects the bundle.
    """
    # `opa sign` runs in the bundle directory, so a key file named relative to the caller's
    # directory must be made absolute; a value that is no file is an HMAC secret (HS*) as it is.
    key_path = Path(signing_key)
    if key_path.is_file():
        signing_key = str(key_path.resolve())
    elif not signing_alg.upper().startswith("HS"):
        raise OpaToolError(f"signing key file {signing_key} not found ({signing_alg} needs a PEM key file)")
    result = run_opa(
        [
            "sign",
            "--bundle",
            ".",
            "--signing-key",
            signing_key,
            "--signing-alg",
            signing_alg,
            "--output-file-path",
            str(output_dir.resolve()),
        ],
        cwd=bundle_dir,
    )
    if not result.ok:
        problem = result.stderr.strip() or result.stdout.strip()
        if "invalid key type" in problem:
            raise OpaToolError(
                f"the signing key does not fit --signing-alg {signing_alg}: use RS256 or PS256 for an RSA "
                "key, ES256, ES384 or ES512 for an EC key, HS256 for an HMAC secret"
            )
        raise OpaToolError(f"opa sign failed: {problem}")
    path = output_dir / ".signatures.json"
    if not path.is_file():
        raise OpaToolError("opa sign wrote no .signatures.json")
    return path
