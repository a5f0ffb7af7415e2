"""The boundary of every guarded request: refusals and failures, raised anywhere in the pipeline as
the typed exceptions of sidecar/errors.py, become responses here, once (`respond`); then the
request is recorded: the decision id header, `hexarch_requests_total` by outcome and policy,
`hexarch_http_requests_total` by route, model, team and status class, and the decision log line
(written by the settlement job instead when one is pending)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.decision_log import DecisionRecord
from sidecar.errors import SidecarError
from sidecar.errors_http import respond
from sidecar.services import SERVICES_KEY

# request-scoped: the DecisionRecord of a guarded request
RECORD_KEY: web.RequestKey[DecisionRecord] = web.RequestKey("hexarch.record", DecisionRecord)
DECISION_HEADER = "X-Hexarch-Decision-Id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except SidecarError as exc:
        rec = request.get(RECORD_KEY)
        if rec is None:
            raise
        rec.outcome, rec.code = exc.outcome, exc.code
        rec.policy = exc.policy or rec.policy
        response = respond(exc, rec.decision_id)
    rec = request.get(RECORD_KEY)
    if rec is not None:
        _record(request, rec, response)
    return response


def _record(request: web.Request, rec: DecisionRecord, response: web.StreamResponse) -> None:
    if not response.prepared:
        response.headers[DECISION_HEADER] = rec.decision_id
    rec.status = response.status
    rec.finished = time.perf_counter()
    services = request.app[SERVICES_KEY]
    metrics = services.metrics
    metrics.child(metrics.requests, rec.outcome, rec.policy or "").inc()
    metrics.observe_request(rec.route or request.path, rec.model, rec.team, response.status)
    if services.settings.log_decisions and not rec.settling:
        services.decision_log.write(rec)  # otherwise the settlement job logs the record once it has the usage
