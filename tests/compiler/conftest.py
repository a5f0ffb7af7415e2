"""Helpers for the compiler tests: the real `hexarch` entry point, run in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.cli import main

POLICIES = Path(__file__).parent / "policies"
BROKEN = Path(__file__).parent / "broken"


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


Hexarch = Callable[..., CliResult]


@pytest.fixture
def hexarch(capsys: pytest.CaptureFixture[str]) -> Hexarch:
    """Run `hexarch ARGS...` through the console entry point; return exit code and output."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def all_kinds_policy() -> Path:
    return POLICIES / "all_kinds.yaml"
