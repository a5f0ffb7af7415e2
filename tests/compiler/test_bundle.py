"""The bundle: standard OPA layout, byte-identical for the same input, signed bundles verified by OPA."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from compiler.api import compile_policy
from compiler.bundle import revision_of
from tests.compiler.conftest import Hexarch
from tests.conftest import EXAMPLE_POLICY
from tests.support.servers import start_opa


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read()


def test_same_input_gives_a_byte_identical_bundle(hexarch: Hexarch, tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert hexarch("compile", EXAMPLE_POLICY, "-o", first).code == 0
    # A copy elsewhere (other path, other mtime) is the same input.
    copy = tmp_path / "copy" / "hexarch.yaml"
    copy.parent.mkdir()
    copy.write_bytes(EXAMPLE_POLICY.read_bytes())
    assert hexarch("compile", copy, "--output", second).code == 0
    assert first.read_bytes() == second.read_bytes()


def test_a_changed_policy_changes_the_revision(tmp_path: Path) -> None:
    edited = tmp_path / "hexarch.yaml"
    edited.write_text(
        EXAMPLE_POLICY.read_text().replace("requests_per_minute: 30", "requests_per_minute: 31")
    )
    assert compile_policy(edited).revision != compile_policy(EXAMPLE_POLICY).revision


def test_layout_order_and_manifest() -> None:
    compiled = compile_policy(EXAMPLE_POLICY)
    infos = members(compiled.data)
    names = [info.name for info in infos]
    assert names[0] == ".manifest"
    assert names[1] == "hexarch/config/data.json"
    lib = [n for n in names if n.startswith("hexarch/lib/")]
    generated = [n for n in names if n.startswith("hexarch/generated/")]
    assert names == [".manifest", "hexarch/config/data.json", *lib, *generated]
    assert "hexarch/lib/hexarch/decision.rego" in lib
    assert any(n.endswith("_test.rego") for n in lib)  # the library ships with its own tests
    assert generated == sorted(generated) and all(n.endswith("_test.rego") for n in generated)
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.mode == 0o644 for i in infos)
    manifest = json.loads(read(compiled.data, ".manifest"))
    assert manifest == {"revision": compiled.revision, "roots": ["hexarch"], "rego_version": 1}
    contents = {n: read(compiled.data, n) for n in names if n != ".manifest"}
    assert compiled.revision == revision_of(contents)
    assert len(compiled.revision) == len(hashlib.sha256().hexdigest())
    assert json.loads(contents["hexarch/config/data.json"]) == compiled.config


def test_custom_policies_are_shipped(all_kinds_policy: Path) -> None:
    compiled = compile_policy(all_kinds_policy)
    names = [info.name for info in members(compiled.data)]
    assert names[-1] == "hexarch/custom/no_secrets.rego"
    assert b"package hexarch.custom.no_secrets" in read(compiled.data, "hexarch/custom/no_secrets.rego")


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    private, public = directory / "private.pem", directory / "public.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    return private, public


def query(url: str, path: str) -> object:
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/data/{path}", timeout=5) as resp:
        return json.loads(resp.read())["result"]


def test_signed_bundle_is_verified_by_opa_run(
    hexarch: Hexarch, tmp_path: Path, rsa_keys: tuple[Path, Path]
) -> None:
    private, public = rsa_keys
    out = tmp_path / "signed.tar.gz"
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out, "--signing-key", private)
    assert result.code == 0, result.err
    assert [i.name for i in members(out.read_bytes())][:2] == [".manifest", ".signatures.json"]
    # Signing is deterministic too (RS256 is PKCS#1 v1.5).
    again = tmp_path / "again.tar.gz"
    assert hexarch("compile", EXAMPLE_POLICY, "-o", again, "--signing-key", private).code == 0
    assert again.read_bytes() == out.read_bytes()
    server = start_opa(["--verification-key", str(public), "--bundle", str(out)], tmp_path)
    try:
        assert query(server.url, "hexarch/config/enforcement") == "strict"
        decision = query(server.url, "hexarch/decision")
        assert isinstance(decision, dict) and "allow" in decision
    finally:
        server.stop()


def test_tampered_signed_bundle_is_refused(opa_bin: str, tmp_path: Path, rsa_keys: tuple[Path, Path]) -> None:
    private, public = rsa_keys
    compiled = compile_policy(EXAMPLE_POLICY, signing_key=str(private))
    tampered = tmp_path / "tampered.tar.gz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, content in compiled.bundle.files.items():
            if name == "hexarch/config/data.json":
                content = content.replace(b'"limit": 30', b'"limit": 3000')
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    tampered.write_bytes(raw.getvalue())
    proc = subprocess.run(
        [
            opa_bin,
            "run",
            "--verification-key",
            str(public),
            "--bundle",
            str(tampered),
            "--format",
            "json",
            "--log-level",
            "error",
            "--",
            "data.hexarch.config.enforcement",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode != 0
    assert "digest mismatch" in (proc.stdout + proc.stderr)


def test_hmac_signing(hexarch: Hexarch, tmp_path: Path) -> None:
    out = tmp_path / "hmac.tar.gz"
    result = hexarch(
        "compile", EXAMPLE_POLICY, "-o", out, "--signing-key", "a-shared-secret", "--signing-alg", "HS256"
    )
    assert result.code == 0, result.err
    server = start_opa(
        ["--verification-key", "a-shared-secret", "--signing-alg", "HS256", "--bundle", str(out)], tmp_path
    )
    try:
        assert query(server.url, "hexarch/config/timezone") == "UTC"
    finally:
        server.stop()


def test_bad_signing_key_is_a_clean_error(hexarch: Hexarch, tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out, "--signing-key", tmp_path / "missing.pem")
    assert result.code == 1
    assert result.err.startswith("hexarch: error: signing key file")
    assert "missing.pem not found" in result.err
    assert "Traceback" not in result.err
    assert not out.exists()


def test_signing_key_relative_to_the_callers_directory(
    hexarch: Hexarch, tmp_path: Path, rsa_keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hexarch compile p.yaml -o b.tar.gz --signing-key private.pem`, run where the key lies."""
    private, public = rsa_keys
    monkeypatch.chdir(private.parent)
    out = tmp_path / "relative.tar.gz"
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out, "--signing-key", private.name)
    assert result.code == 0, result.err
    server = start_opa(["--verification-key", str(public), "--bundle", str(out)], tmp_path)
    try:
        assert query(server.url, "hexarch/config/enforcement") == "strict"
    finally:
        server.stop()


def test_ec_key_signs_with_es256_and_a_mismatch_says_which_alg(hexarch: Hexarch, tmp_path: Path) -> None:
    private = tmp_path / "ec.pem"
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(private)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "signed.tar.gz"
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out, "--signing-key", private)
    assert result.code == 1 and not out.exists()
    assert "does not fit --signing-alg RS256" in result.err and "ES256" in result.err
    result = hexarch("compile", EXAMPLE_POLICY, "-o", out, "--signing-key", private, "--signing-alg", "ES256")
    assert result.code == 0, result.err
    assert [i.name for i in members(out.read_bytes())][:2] == [".manifest", ".signatures.json"]
