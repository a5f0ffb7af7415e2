"""`hexarch compile | check | test`: the compiler's sub-commands of the `hexarch` console command.

User mistakes (PolicyError) print one `FILE:LINE:COL: error: MESSAGE` line each on stderr and exit
1, never a traceback, and never leave a bundle behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compiler.diagnostics import Diagnostic
from compiler.errors import CompilerError, PolicyError
from compiler.model import PolicyFile

STRICT_HELP = "fail (exit 1) on warnings too, not only on errors"


def _warnings_fail(model: PolicyFile, args: argparse.Namespace) -> bool:
    """Print the model's located warnings on stderr; True when --strict makes them fatal."""
    for warning in model.warnings:
        print(warning.format(), file=sys.stderr)
    if model.warnings and getattr(args, "strict", False):
        count = len(model.warnings)
        print(f"{count} warning{'s' if count != 1 else ''} (--strict)", file=sys.stderr)
        return True
    return False


def register(subparsers: Any) -> None:
    compile_p = subparsers.add_parser(
        "compile", help="compile hexarch.yaml into an OPA bundle", description="Compile a policy file."
    )
    compile_p.add_argument("policy", help="the policy file (hexarch.yaml)")
    compile_p.add_argument(
        "-o", "--output", required=True, help="the bundle to write (.tar.gz); '-' writes it to stdout"
    )
    compile_p.add_argument("--signing-key", help="sign the bundle: PEM private key file, or HMAC secret")
    compile_p.add_argument(
        "--signing-alg",
        default="RS256",
        help="JWT algorithm of the signature: RS256 (default) or PS256 for RSA keys, ES256/ES384/ES512 "
        "for EC keys, HS256 for an HMAC secret",
    )
    compile_p.set_defaults(func=run_compile)

    check_p = subparsers.add_parser(
        "check", help="validate hexarch.yaml", description="Validate a policy file."
    )
    check_p.add_argument("policy", help="the policy file (hexarch.yaml)")
    check_p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    check_p.set_defaults(func=run_check)

    test_p = subparsers.add_parser(
        "test", help="compile and run `opa test` on the bundle", description="Compile and test a policy file."
    )
    test_p.add_argument("policy", help="the policy file (hexarch.yaml)")
    test_p.add_argument("-v", "--verbose", action="store_true", help="list every test")
    test_p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    test_p.set_defaults(func=run_test)


def _fail(exc: CompilerError) -> int:
    if isinstance(exc, PolicyError):
        print(str(exc), file=sys.stderr)
        count = len(exc.diagnostics)
        print(f"{count} error{'s' if count != 1 else ''}; nothing written", file=sys.stderr)
    else:
        print(f"hexarch: error: {exc}", file=sys.stderr)
    return 1


# Checks of the sections other packages own (sidecar/settings.py: `sidecar`, `logging`, `opa`,
# upstream sections), run on the same file so every command reports the whole file's problems. The
# `hexarch` entry point (sidecar/cli.py) sets them as the `file_checks` default of these commands.
FileCheck = Callable[[str], Sequence[Diagnostic]]
WHOLE_FILE_COMMANDS = ("compile", "check", "test")


def whole_file(args: argparse.Namespace, exc: PolicyError | None = None) -> None:
    """Raise PolicyError with `exc`'s diagnostics plus those of the other sections' owners."""
    extra = [d for check in getattr(args, "file_checks", ()) for d in check(args.policy)]
    if exc is None and not [d for d in extra if d.severity == "error"]:
        return
    seen = set(exc.diagnostics) if exc is not None else set()
    merged = [*(exc.diagnostics if exc is not None else ()), *(d for d in extra if d not in seen)]
    merged.sort(key=lambda d: (d.file, d.line, d.col))
    raise PolicyError(merged)


def _summary(model: PolicyFile) -> str:
    enabled = model.enabled_policies
    rules = sum(len(p.rules) for p in enabled)
    disabled = len(model.policies) - len(enabled)
    text = f"{len(enabled)} policies, {rules} rules"
    return text + (
        f"; {disabled} disabled {'policy' if disabled == 1 else 'policies'} left out" if disabled else ""
    )


def run_compile(args: argparse.Namespace) -> int:
    from compiler.api import compile_policy
    from compiler.bundle import write_bundle

    to_stdout = args.output == "-"
    try:
        try:
            compiled = compile_policy(args.policy, signing_key=args.signing_key, signing_alg=args.signing_alg)
        except PolicyError as exc:
            whole_file(args, exc)
            raise
        whole_file(args)
        if to_stdout:
            sys.stdout.buffer.write(compiled.bundle.data)
            sys.stdout.buffer.flush()
        else:
            write_bundle(compiled.bundle, Path(args.output))
    except CompilerError as exc:
        return _fail(exc)
    signed = ", signed" if args.signing_key else ""
    where = "<stdout>" if to_stdout else args.output
    summary = f"{where}: {_summary(compiled.model)}, revision {compiled.revision[:12]}{signed}"
    # The bundle may be on stdout (`-o -`, `-o /dev/stdout`): the summary must not land in it.
    print(summary, file=sys.stderr if to_stdout or not Path(args.output).is_file() else sys.stdout)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from compiler.api import check_custom, load_policy
    from compiler.emit import emit_tests
    from compiler.lower import lower

    try:
        try:
            model = load_policy(args.policy)
        except PolicyError as exc:
            whole_file(args, exc)
            raise
        whole_file(args)
        check_custom(model)
        # Lower and emit too, so a file that passes `check` also compiles.
        emit_tests(model, lower(model))
    except CompilerError as exc:
        return _fail(exc)
    if _warnings_fail(model, args):
        return 1
    print(f"{args.policy}: ok ({_summary(model)})")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from compiler.api import compile_policy
    from compiler.bundle import extract_bundle
    from compiler.opa_tool import opa_test_bundle

    try:
        try:
            compiled = compile_policy(args.policy)
        except PolicyError as exc:
            whole_file(args, exc)
            raise
        whole_file(args)
        with tempfile.TemporaryDirectory(prefix="hexarch-test-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            extract_bundle(compiled.bundle, bundle_dir)
            result = opa_test_bundle(bundle_dir, verbose=args.verbose)
    except CompilerError as exc:
        return _fail(exc)
    if _warnings_fail(compiled.model, args):
        return 1
    # opa prints paths inside the temporary directory; show them relative to the bundle.
    output = (result.stdout + result.stderr).replace(f"{bundle_dir}/", "")
    print(output.rstrip(), flush=True)
    if not result.ok:
        print(f"{args.policy}: opa test failed (revision {compiled.revision[:12]})", file=sys.stderr)
        return 1
    print(f"{args.policy}: all tests passed ({_summary(compiled.model)}, revision {compiled.revision[:12]})")
    return 0
