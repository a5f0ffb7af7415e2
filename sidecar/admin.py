"""Secure-by-default operator endpoints: `/metrics` and the policy bundle.

Both tell an outsider a lot (principal ids, remaining budgets, the whole policy). They can be
protected in two ways, set in `sidecar.hardening` (docs/hardening.md):

- `admin_listen: host:port` - a second listener; the operator endpoints answer only there (404 in
  the error shape on the main listener), so the main port can face clients while the admin port
  stays on an internal interface;
- `admin_key_env: NAME` - the variable NAME holds a key; the operator endpoints then need
  `Authorization: Bearer <key>` (compared in constant time) or answer 401 in the error shape.

With neither set (the default), the operator endpoints answer **loopback clients only** (the OPA
next to the sidecar polling the bundle, a local Prometheus agent); any other client gets 403 in the
error shape. `admin_middleware` enforces all three; `admin_listens` gives `hexarch serve` the extra
address.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from sidecar.errors_http import error_response
from sidecar.proxy import Handler
from sidecar.settings import Settings, parse_listen

ADMIN_PATHS = frozenset({"/metrics", "/bundles/hexarch.tar.gz"})


def admin_listens(settings: Settings) -> list[tuple[str, int]]:
    """The admin address, when one is set (validated when the settings are loaded)."""
    text = settings.hardening.admin_listen
    parsed = parse_listen(text) if text else None
    return [parsed] if parsed is not None else []


def admin_key(settings: Settings, env: Mapping[str, str] | None) -> str | None:
    name = settings.hardening.admin_key_env
    if not name:
        return None
    value = (os.environ if env is None else env).get(name)
    return value or None


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


def admin_middleware(settings: Settings, env: Mapping[str, str] | None) -> Middleware:
    listens = admin_listens(settings)
    admin_port = listens[0][1] if listens else None
    key = admin_key(settings, env)
    key_required = bool(settings.hardening.admin_key_env)
    loopback_only = admin_port is None and not key_required
    # a named variable that is unset locks the endpoints (401) rather than leaving them open
    key_bytes = key.encode() if key is not None else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        on_admin = admin_port is not None and _local_port(request) == admin_port
        if request.path not in ADMIN_PATHS:
            if on_admin:
                return error_response(
                    404,
                    "the admin listener serves /metrics and the bundle only",
                    code="not_found",
                    type_="not_found_error",
                )
            return await handler(request)
        if admin_port is not None and not on_admin:
            return error_response(
                404,
                f"no route for {request.method} {request.path}",
                code="not_found",
                type_="not_found_error",
            )
        if loopback_only and not _is_loopback(request.remote):
            return error_response(
                403,
                "operator endpoints answer loopback clients only; set sidecar.hardening.admin_listen "
                "or admin_key_env to serve them to others",
                code="admin_only",
                type_="permission_error",
            )
        if key_required:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if (
                key_bytes is None
                or scheme.lower() != "bearer"
                or not hmac.compare_digest(token.strip().encode(), key_bytes)
            ):
                resp = error_response(
                    401,
                    "this endpoint needs the admin key",
                    code="invalid_api_key",
                    type_="authentication_error",
                )
                resp.headers["WWW-Authenticate"] = 'Bearer realm="hexarch-admin"'
                return resp
        return await handler(request)

    return guard
