"""The compiler as a library: hexarch.yaml -> a bundle, for the CLI and for the sidecar.

parse -> validate -> lower -> emit -> bundle, each a small pure stage; this module only chains
them. User mistakes raise PolicyError (with every diagnostic); compiler or I/O failures raise the
other CompilerError subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compiler.bundle import CUSTOM_DIR, DATA_PATH, Bundle, build_bundle, library_files
from compiler.diagnostics import Diagnostic
from compiler.emit import emit_tests
from compiler.errors import OpaToolError, PolicyError
from compiler.lower import Config, config_json, lower
from compiler.model import PolicyFile
from compiler.opa_tool import opa_check_modules
from compiler.parse import parse_file
from compiler.precompute import precompute
from compiler.validate import validate


@dataclass(frozen=True)
class CompiledBundle:
    data: bytes  # the bundle, tar.gz
    revision: str
    config: Config  # the compiled data (data.hexarch.config)
    model: PolicyFile
    bundle: Bundle


def load_policy(path: str | Path) -> PolicyFile:
    """Parse and validate the YAML (custom Rego is checked by `check_custom`)."""
    return validate(parse_file(str(path)))


def check_custom(model: PolicyFile) -> None:
    """Custom Rego files must compile beside the library, or OPA would refuse the whole bundle.

    Raises PolicyError with OPA's own messages, located in the custom files.
    """
    if not model.custom:
        return
    modules = {
        name: text.decode("utf-8")
        for name, text in library_files().items()
        if name.endswith(".rego") and not name.endswith("_test.rego")
    }
    by_name = {f"{CUSTOM_DIR}/{custom.id}.rego": custom for custom in model.custom}
    modules.update({name: custom.source for name, custom in by_name.items()})
    diagnostics = []
    for problem in opa_check_modules(modules):
        custom = by_name.get(problem.file)
        if custom is None:
            raise OpaToolError(
                f"the Rego library does not compile: {problem.file}:{problem.row}: {problem.message}"
            )
        hint = "custom policies are Rego v1 (`if`, `contains`), checked by `opa check`"
        diagnostics.append(Diagnostic(str(custom.file), problem.row, problem.col, "", problem.message, hint))
    if diagnostics:
        raise PolicyError(diagnostics)


def compile_policy(
    path: str | Path, *, signing_key: str | None = None, signing_alg: str = "RS256"
) -> CompiledBundle:
    model = load_policy(path)
    check_custom(model)
    # data.json carries the lowered lists and the index the Rego fast path reads.
    config = precompute(lower(model))
    files: dict[str, bytes] = {DATA_PATH: config_json(config)}
    files.update(library_files())
    for name, source in emit_tests(model, config).items():
        files[name] = source.encode("utf-8")
    for custom in model.custom:
        files[f"{CUSTOM_DIR}/{custom.id}.rego"] = custom.source.encode("utf-8")
    bundle = build_bundle(files, signing_key=signing_key, signing_alg=signing_alg)
    return CompiledBundle(bundle.data, bundle.revision, config, model, bundle)
