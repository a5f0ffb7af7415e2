"""Errors of the compiler package.

    CompilerError                  base; never raised itself
    ├── PolicyError                the policy file is wrong; carries every Diagnostic found
    ├── BundleError                writing or signing the bundle failed (I/O, `opa sign`)
    ├── EmitError                  lower/emit met a construct it does not know (a compiler bug)
    └── OpaToolError               the `opa` binary is missing or `opa test` could not run

`hexarch compile|check|test` print PolicyError diagnostics one per line and exit 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from compiler.diagnostics import Diagnostic, format_all


class CompilerError(Exception):
    """Base of every error the compiler raises."""


class PolicyError(CompilerError):
    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(format_all(self.diagnostics))


class BundleError(CompilerError):
    """The bundle could not be written or signed."""


class EmitError(CompilerError):
    """The emitter does not know how to emit a construct: fail loudly, never emit a weaker test."""


class OpaToolError(CompilerError):
    """The opa binary is missing or failed to run."""
