"""`hexarch status`: is the running stack healthy? The sidecar (ready, bundle revision), OPA, Redis.

By default it reads the state a running `hexarch up` leaves in `.hexarch/run/stack.json`; `--url`
asks any sidecar instead (its /readyz names OPA's and Redis's state). Exit status 0 when every part
answers, 1 when something is down, 2 when there is nothing to ask.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from sidecar import stack_state


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="health of a running stack: sidecar, OPA, Redis, loaded policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", metavar="URL", help="a sidecar to ask (default: the running `hexarch up`)")
    parser.add_argument(
        "--work-dir",
        default=str(stack_state.DEFAULT_WORK_DIR),
        help="state of `hexarch up` (default .hexarch/run)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    parser.set_defaults(func=_status)


def _get(url: str, key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            return resp.status, orjson.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, orjson.loads(exc.read() or b"null")
        except orjson.JSONDecodeError:
            return exc.code, None
    except (OSError, orjson.JSONDecodeError) as exc:
        return 0, str(exc)


def collect(sidecar_url: str, opa_url: str | None, key: str | None) -> dict[str, Any]:
    code, ready = _get(f"{sidecar_url}/readyz")
    checks = ready.get("checks", {}) if isinstance(ready, dict) else {}
    parts: dict[str, Any] = {
        "sidecar": {
            "ok": code == 200,
            "url": sidecar_url,
            "detail": "ready" if code == 200 else f"{code or 'down'}",
        },
        "opa": {
            "ok": bool(checks.get("opa")),
            "url": opa_url,
            "detail": "answers" if checks.get("opa") else "down",
        },
        "redis": {"ok": bool(checks.get("redis")), "detail": "answers" if checks.get("redis") else "down"},
    }
    if opa_url:
        opa_code, _ = _get(f"{opa_url}/health?bundles")
        parts["opa"]["detail"] = (
            "bundle loaded" if opa_code == 200 else f"no bundle yet ({opa_code or 'down'})"
        )
        parts["opa"]["ok"] = parts["opa"]["ok"] and opa_code == 200
    policy_code, policies = _get(f"{sidecar_url}/hexarch/v1/policies", key)
    if policy_code == 200 and isinstance(policies, dict):
        enabled = [p["id"] for p in policies.get("policies", []) if p.get("enabled")]
        in_sync = (policies.get("opa") or {}).get("in_sync")
        parts["policy"] = {
            "ok": in_sync is not False,
            "detail": f"revision {str(policies.get('revision'))[:12]}, {len(enabled)} enabled, "
            f"loaded {policies.get('loaded_at')}"
            + ("" if in_sync is not False else "; OPA has not activated it yet"),
        }
    return parts


def _status(args: argparse.Namespace) -> int:
    running = stack_state.read(Path(args.work_dir))
    url = args.url or (running or {}).get("sidecar_url")
    if not url:
        print(f"hexarch status: no running `hexarch up` in {args.work_dir}; give --url", file=sys.stderr)
        return 2
    parts = collect(
        url.rstrip("/"),
        (running or {}).get("opa_url") if not args.url else None,
        os.environ.get("HEXARCH_API_KEY"),
    )
    healthy = all(p["ok"] for p in parts.values())
    if args.json:
        print(orjson.dumps({"healthy": healthy, "parts": parts}, option=orjson.OPT_INDENT_2).decode())
        return 0 if healthy else 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hexarch status", box=None, header_style="bold")
    for column in ("part", "state", "detail"):
        table.add_column(column)
    for name, part in parts.items():
        state = "[green]ok[/green]" if part["ok"] else "[red]DOWN[/red]"
        detail = part["detail"] + (f"  {part['url']}" if part.get("url") else "")
        table.add_row(name, state, detail)
    Console().print(table)
    return 0 if healthy else 1
