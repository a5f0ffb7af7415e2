"""Sidecar sub-commands of `hexarch`: `serve`, plus `demo-model`, `up` and `usage` from their modules.

`hexarch serve --config hexarch.yaml` runs the sidecar. Flags override `HEXARCH_*` variables, which
override the file (docs/sidecar.md lists them all).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def register(subparsers: Any) -> None:
    from sidecar import demo_model, stack, status, usage

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the sidecar (OpenAI/Ollama-compatible proxy enforcing the policy)",
        description="Run the sidecar. Settings come from the file's `sidecar:` section, upstream sections "
        "and `opa:`, then HEXARCH_* variables, then these flags.",
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="hexarch.yaml (default: $HEXARCH_CONFIG)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="listen address (default 127.0.0.1:8080)")
    parser.add_argument("--opa-url", metavar="URL", help="OPA base URL (default http://127.0.0.1:8181)")
    parser.add_argument("--redis-url", metavar="URL", help="Redis URL (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--fail-mode", choices=("fail_closed", "fail_open"), help="when OPA or Redis fail")
    parser.add_argument("--upstream-url", metavar="URL", help="base URL of the default upstream")
    parser.add_argument(
        "--log-level", default=None, help="debug, info, warning (default: logging.level or info)"
    )
    parser.add_argument("--check", action="store_true", help="validate the settings, print them, and exit")
    parser.set_defaults(func=_serve)
    demo_model.register(subparsers)
    stack.register(subparsers)
    usage.register(subparsers)
    status.register(subparsers)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    pairs = {
        "HEXARCH_LISTEN": args.listen,
        "HEXARCH_OPA_URL": args.opa_url,
        "HEXARCH_REDIS_URL": args.redis_url,
        "HEXARCH_FAIL_MODE": args.fail_mode,
        "HEXARCH_UPSTREAM_URL": args.upstream_url,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _log_level(settings_level: str, flag: str | None) -> int:
    """The flag's level, else `logging.level` of the file (default info)."""
    name = flag or settings_level
    return logging.getLevelNamesMapping().get(name.upper(), logging.INFO)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from compiler.errors import CompilerError
    from sidecar.admin import admin_listens
    from sidecar.app import create_app
    from sidecar.errors import SettingsError
    from sidecar.http_server import serve_forever
    from sidecar.settings import load_settings

    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 1
    logging.basicConfig(level=_log_level(settings.log_level, args.log_level), format="%(message)s")
    if args.check:
        print(settings)
        return 0
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is absent on Windows; the default loop works, only slower
        loop = None
    upstreams = ", ".join(f"{u.name}={u.base_url}" for u in settings.upstreams.values()) or "none"
    logging.getLogger("hexarch.sidecar").info(
        "hexarch sidecar on http://%s:%d (OPA %s, %s, upstreams: %s)",
        settings.listen_host,
        settings.listen_port,
        settings.opa_url,
        settings.fail_mode,
        upstreams,
    )
    try:
        listens = [(settings.listen_host, settings.listen_port), *admin_listens(settings)]
        serve = serve_forever(create_app(settings), settings.hardening, listens, shutdown_timeout=10)
        if loop is not None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve)
        else:
            asyncio.run(serve)
    except CompilerError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"hexarch serve: cannot listen on {settings.listen_host}:{settings.listen_port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0
