"""`hexarch usage`: what the counters in Redis hold right now, consuming nothing.

The rate, token and budget rules of the policy file name the counters; their scope names the
subject: `global` counters belong to the rule's resource, `principal` ones to `--principal`, `team`
ones to `--team` (rules of a scope whose subject was not given are left out). Each counter is read
with the admission script in peek mode, so the figures are exactly what the next request would meet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from sidecar.counters import Counters, Limit, LimitState

_UNITS = {"rate_limits": "requests", "token_limits": "tokens", "budgets": "usd_micros"}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "usage",
        help="show the rate, token and budget counters of a principal, team or resource",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="hexarch.yaml (default: $HEXARCH_CONFIG)")
    parser.add_argument("--redis-url", metavar="URL", help="Redis URL (default: sidecar.redis_url)")
    parser.add_argument("--principal", metavar="ID", help="subject of principal-scoped limits")
    parser.add_argument("--team", metavar="TEAM", help="subject of team-scoped limits")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    parser.set_defaults(func=_usage)


def limits_of(config: Mapping[str, Any], principal: str | None, team: str | None) -> list[Limit]:
    """The stored counters the compiled config names, for the given subjects (cost 0: a peek)."""
    subjects = {"principal": principal, "team": team}
    found: list[Limit] = []
    for section, unit in _UNITS.items():
        for entry in config.get(section, ()):
            if entry.get("window_seconds") == 0:
                continue  # a per-request cap is checked per request, never stored
            scope = entry["scope"]
            subject = entry["resource"] if scope == "global" else subjects.get(scope)
            if subject is None:
                continue
            found.append(
                Limit(
                    id=entry["id"],
                    policy=entry["policy"],
                    unit=unit,
                    scope=scope,
                    subject=subject,
                    limit=entry["limit"],
                    cost=0,
                    action="warn",  # a peek never refuses
                    warn_at=entry.get("warn_at"),
                    window_seconds=entry.get("window_seconds"),
                    period=entry.get("period"),
                )
            )
    return found


def _row(state: LimitState) -> dict[str, Any]:
    lim = state.limit
    window = lim.period or f"{lim.window_seconds}s"
    return {
        "id": lim.id,
        "policy": lim.policy,
        "scope": lim.scope,
        "subject": lim.subject,
        "unit": lim.unit,
        "window": window,
        "limit": lim.limit,
        "used": state.used,
        "remaining": state.remaining,
        "reset_seconds": state.reset_seconds,
    }


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "no stored limits for these subjects"
    columns = ("id", "subject", "unit", "window", "used", "limit", "remaining", "reset_seconds")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


async def read_usage(redis_url: str, timezone: str, limits: Sequence[Limit]) -> list[dict[str, Any]]:
    from sidecar.redis_client import create_redis

    counters = Counters(create_redis(redis_url), timezone=timezone)
    try:
        states = await counters.peek(limits) if limits else ()
    finally:
        await counters.close()
    return [_row(s) for s in states]


def _usage(args: argparse.Namespace) -> int:
    from compiler.api import compile_policy
    from compiler.errors import CompilerError
    from sidecar.errors import CounterStoreError, SettingsError
    from sidecar.settings import load_settings

    overrides = {"HEXARCH_REDIS_URL": args.redis_url} if args.redis_url else {}
    try:
        settings = load_settings(args.config, overrides=overrides)
        if settings.source is None:
            print("hexarch usage: --config (or HEXARCH_CONFIG) is required", file=sys.stderr)
            return 2
        config = compile_policy(settings.source).config
        rows = asyncio.run(
            read_usage(settings.redis_url, settings.timezone, limits_of(config, args.principal, args.team))
        )
    except (SettingsError, CompilerError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except CounterStoreError as exc:
        print(f"hexarch usage: Redis is not answering: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() if args.json else render_table(rows))
    return 0
