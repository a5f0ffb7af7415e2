"""The `hexarch` console command: one entry point, one sub-command per capability.

Each sub-command lives beside the code it drives and exposes `register(subparsers)`, which adds
its parser and sets `func`. Imports stay lazy inside those functions so `hexarch check` does not
pay for aiohttp and redis at start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from compiler import cli as compiler_cli
    from sidecar import commands as sidecar_commands
    from sidecar.settings import file_diagnostics

    parser = argparse.ArgumentParser(prog="hexarch", description="Policy sidecar for LLM traffic.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compiler_cli.register(sub)
    # One owner per section: the compiler's commands also report the settings' sections.
    for name in compiler_cli.WHOLE_FILE_COMMANDS:
        sub.choices[name].set_defaults(file_checks=(file_diagnostics,))
    sidecar_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
