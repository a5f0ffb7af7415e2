"""`hexarch usage`: what the counters in Redis hold right now, consuming nothing.

The rate, token and budget rules of the policy file name the counters; their scope names the
subject: `global` counters belong to the rule's resource, `principal` ones to `--principal`, `team`
ones to `--team` (rules of a scope whose subject was not given are left out). Each counter is read
with the admission script in peek mode, so the figures are exactly what the next request would meet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from sidecar import stack_state
from sidecar.counters import Counters, Limit, LimitState
from sidecar.stack_state import DEFAULT_WORK_DIR

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
    parser.add_argument(
        "--work-dir",
        default=str(DEFAULT_WORK_DIR),
        help="where a running `hexarch up` keeps its state (default .hexarch/run): its policy and Redis "
        "are used unless --config/--redis-url say otherwise",
    )
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


BAR_WIDTH = 20


def _bar(used: int, limit: int) -> str:
    share = min(1.0, used / limit) if limit else 1.0
    filled = round(share * BAR_WIDTH)
    return "█" * filled + "░" * (BAR_WIDTH - filled) + f" {share:>4.0%}"


def _amount(row: Mapping[str, Any], value: int) -> str:
    """Budgets in dollars, everything else as the whole number it is."""
    return f"${value / 1_000_000:,.2f}" if row["unit"] == "usd_micros" else str(value)


def render_table(rows: Sequence[Mapping[str, Any]], width: int | None = None) -> str:
    """The rows as a table with a bar per limit (budgets in dollars), for a terminal or a pipe."""
    if not rows:
        return "no stored limits for these subjects"
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in (
        "id",
        "subject",
        "unit",
        "window",
        "used",
        "limit",
        "remaining",
        "reset_seconds",
        "used %",
    ):
        table.add_column(
            column, no_wrap=True, justify="right" if column in ("used", "limit", "remaining") else "left"
        )
    for r in rows:
        unit = "USD" if r["unit"] == "usd_micros" else r["unit"]
        share = r["used"] / r["limit"] if r["limit"] else 1.0
        style = "red" if share >= 1 else "yellow" if share >= 0.75 else "green"
        table.add_row(
            str(r["id"]),
            str(r["subject"]),
            unit,
            str(r["window"]),
            _amount(r, r["used"]),
            _amount(r, r["limit"]),
            _amount(r, r["remaining"]),
            f"{r['reset_seconds']}s",
            f"[{style}]{_bar(r['used'], r['limit'])}[/{style}]",
        )
    console = Console(width=width or 160, record=True, force_terminal=False, color_system=None)
    with console.capture() as captured:
        console.print(table)
    return captured.get().rstrip("\n")


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

    running = stack_state.read(Path(args.work_dir))
    redis_url = args.redis_url or (running or {}).get("redis_url")
    config = args.config or os.environ.get("HEXARCH_CONFIG") or (running or {}).get("policy")
    overrides = {"HEXARCH_REDIS_URL": redis_url} if redis_url else {}
    try:
        settings = load_settings(config, overrides=overrides)
        if settings.source is None:
            print(
                "hexarch usage: no running `hexarch up` found; give --config (or HEXARCH_CONFIG)",
                file=sys.stderr,
            )
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
