"""A bound on requests in flight: past `max_inflight_requests`, new requests get 503 at once.

Connections are bounded by the HTTP front guard (sidecar/http_server.py); this bounds the work
they carry (each in-flight request holds an upstream connection, a reservation, buffers). A refused
request is answered with 503 `overloaded` and `Retry-After: 1` in the DESIGN.md error shape,
before OPA or Redis see it, and counted in `hexarch_overloaded_total`. `/healthz` and `/readyz`
are never refused, so probes keep telling the truth under load.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from sidecar.errors_http import error_response
from sidecar.metrics import Metrics

EXEMPT = frozenset({"/healthz", "/readyz"})


def inflight_middleware(limit: int, metrics: Metrics) -> Middleware:
    count = 0

    @web.middleware
    async def bound(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal count
        if request.path in EXEMPT:
            return await handler(request)
        if count >= limit:
            metrics.overloaded.inc()
            return error_response(
                503,
                f"the sidecar is at its bound of {limit} requests in flight; retry shortly",
                code="overloaded",
                type_="service_unavailable",
                headers={"Retry-After": "1"},
            )
        count += 1
        try:
            return await handler(request)
        finally:
            count -= 1

    return bound
