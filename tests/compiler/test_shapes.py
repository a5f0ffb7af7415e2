"""`hexarch test` passes on every valid policy shape of tests/compiler/policies/shapes/.

The generated tests encode what the emitter believes the Rego library decides; each shape is a
policy combination nobody wrote by hand elsewhere, so a disagreement between the two (or with
docs/architecture.md) shows up here as a failing generated test rather than as a stuck user.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from compiler.api import compile_policy
from compiler.bundle import extract_bundle
from compiler.model import glob_is_valid, glob_match
from tests.support.servers import ROOT

SHAPES = sorted((ROOT / "tests" / "compiler" / "policies" / "shapes").glob("*.yaml"))


def test_there_are_enough_shapes() -> None:
    assert len(SHAPES) >= 20


@pytest.mark.parametrize("policy", SHAPES, ids=[p.stem for p in SHAPES])
def test_hexarch_test_passes_on_shape(opa_bin: str, tmp_path: Path, policy: Path) -> None:
    compiled = compile_policy(policy)
    bundle_dir = tmp_path / "bundle"
    extract_bundle(compiled.bundle, bundle_dir)
    # What `hexarch test` runs: the library's own tests and the generated ones, in one bundle.
    proc = subprocess.run(
        [
            opa_bin,
            "test",
            "--bundle",
            "--fail-on-empty",
            "--format",
            "json",
            str(bundle_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    results = json.loads(proc.stdout or "[]")
    failed = sorted(f"{r['package']}.{r['name']}" for r in results if r.get("fail") or r.get("error"))
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-2000:])
    packages = {r["package"] for r in results}
    for enabled in compiled.model.enabled_policies:
        assert any(p.startswith("data.hexarch.generated.") and p.endswith("_test") for p in packages), (
            enabled.id
        )
    assert "data.hexarch.generated.hexarch_settings_test" in packages


# Class forms where a regex-minded reading and OPA's glob lexer disagree.
GLOB_PATTERNS = [
    "[^a]bc",
    "[!a]bc",
    "[a-c]x",
    "[!a-c]x",
    "[xa-c]",
    "[a\\-z]",
    "[\\]]",
    "[--0]",
    "{a,[b-c]}d",
    "*[,}]",
]
GLOB_TEXTS = [
    "abc",
    "bbc",
    "^bc",
    "ax",
    "bx",
    "dx",
    "a",
    "b",
    "-",
    "z",
    "]",
    "/",
    "ad",
    "cd",
    "x,",
    "x}",
    "x",
]
OPA_REJECTS = ["[a-]x", "[]", "[!]", "[c-a]", "[a-cx]", "[ab"]


def test_compiler_globs_match_as_opa_reads_them(opa_bin: str, tmp_path: Path) -> None:
    calls = [f"glob.match({json.dumps(p)}, null, {json.dumps(t)})" for p in GLOB_PATTERNS for t in GLOB_TEXTS]
    module = tmp_path / "globs.rego"
    module.write_text("package globs\n\nr := [" + ", ".join(calls) + "]\n")
    proc = subprocess.run(
        [opa_bin, "eval", "-d", str(module), "-f", "json", "data.globs.r"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    opa = json.loads(proc.stdout)["result"][0]["expressions"][0]["value"]
    ours = [glob_match(p, t) for p in GLOB_PATTERNS for t in GLOB_TEXTS]
    assert ours == opa
    # Patterns OPA cannot parse would match nothing at run time: the compiler rejects them.
    assert [p for p in OPA_REJECTS if glob_is_valid(p)] == []
