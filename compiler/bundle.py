"""Stage 5: files -> a deterministic OPA bundle (gzip tar), optionally signed by `opa sign`.

Layout and order (docs/architecture.md "Bundle"): `.manifest`, `.signatures.json` (when signed),
`hexarch/config/data.json`, the library under `hexarch/lib/`, generated tests under
`hexarch/generated/`, custom policies under `hexarch/custom/`. Every tar entry has mtime 0,
uid/gid 0, mode 0644 and the gzip header carries no name or time, so the same input gives a
byte-identical file and the revision (a hash of the contents) is stable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import BundleError, OpaToolError
from compiler.opa_tool import REPO_ROOT, opa_sign

ROOTS = ["hexarch"]
DATA_PATH = "hexarch/config/data.json"
LIB_DIR = "hexarch/lib"
CUSTOM_DIR = "hexarch/custom"
_SECTION_ORDER = (DATA_PATH, f"{LIB_DIR}/", "hexarch/generated/", f"{CUSTOM_DIR}/")


def rego_dir() -> Path:
    """The Rego library: $HEXARCH_REGO_DIR, else <repo>/rego."""
    override = os.environ.get("HEXARCH_REGO_DIR")
    return Path(override) if override else REPO_ROOT / "rego"


def library_files(root: Path | None = None) -> dict[str, bytes]:
    """Bundle path -> bytes of every `.rego` file of the library (its tests included)."""
    root = rego_dir() if root is None else root
    if not root.is_dir():
        raise BundleError(f"Rego library directory not found: {root}")
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*.rego")):
        rel = path.relative_to(root).as_posix()
        try:
            files[f"{LIB_DIR}/{rel}"] = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    if not files:
        raise BundleError(f"no .rego files under {root}")
    return files


def _order(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_SECTION_ORDER):
        if name == prefix or (prefix.endswith("/") and name.startswith(prefix)):
            return rank, name
    return len(_SECTION_ORDER), name


def revision_of(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(name.encode("utf-8") + b"\0" + str(len(content)).encode("ascii") + b"\0" + content)
    return digest.hexdigest()


def manifest_bytes(revision: str) -> bytes:
    manifest = {"revision": revision, "roots": ROOTS, "rego_version": 1}
    return (json.dumps(manifest, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Bundle:
    data: bytes  # the tar.gz
    revision: str
    files: Mapping[str, bytes]  # every file of the bundle, manifest (and signature) included


def build_bundle(
    files: Mapping[str, bytes], *, signing_key: str | None = None, signing_alg: str = "RS256"
) -> Bundle:
    """Pack `files` (bundle path -> bytes, without manifest) into a bundle."""
    for name in files:
        if name.startswith(("/", ".")) or ".." in name.split("/"):
            raise BundleError(f"invalid bundle path: {name}")
    revision = revision_of(files)
    everything: dict[str, bytes] = {".manifest": manifest_bytes(revision), **files}
    if signing_key is not None:
        everything[".signatures.json"] = _signature(everything, signing_key, signing_alg)
    names = [".manifest"]
    if ".signatures.json" in everything:
        names.append(".signatures.json")
    names += sorted((n for n in files), key=_order)
    return Bundle(_targz(names, everything), revision, everything)


def _signature(files: Mapping[str, bytes], signing_key: str, signing_alg: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="hexarch-sign-") as tmp:
        root = Path(tmp) / "bundle"
        for name, content in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        out = Path(tmp) / "out"
        out.mkdir()
        try:
            return opa_sign(root, signing_key, signing_alg, out).read_bytes()
        except OpaToolError as exc:
            raise BundleError(str(exc)) from exc


def _targz(names: list[str], files: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in names:
            content = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_bundle(bundle: Bundle, path: Path) -> None:
    """Write a file atomically: the output appears whole or not at all.

    A symlink is followed (its target is replaced, the link stays); a pipe or device such as
    /dev/stdout is written to as it is; a new file gets the usual permissions (0666 minus the
    umask) and an existing one keeps its own, so OPA running as another user can still read it.
    """
    given = Path(path)
    try:
        if given.exists() and not given.is_file() and not given.is_dir():
            with open(given, "wb") as stream:
                stream.write(bundle.data)
            return
        path = Path(os.path.realpath(given))
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=".hexarch-", suffix=".tar.gz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bundle.data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise BundleError(f"cannot write bundle {given}: {exc.strerror}") from exc


def _umask() -> int:
    # The only way to read the umask is to set it; the CLI is single-threaded when it writes.
    current = os.umask(0o022)
    os.umask(current)
    return current


def extract_bundle(bundle: Bundle, directory: Path) -> None:
    """Write the bundle's files as a directory tree (what `opa test --bundle DIR` reads)."""
    for name, content in bundle.files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
