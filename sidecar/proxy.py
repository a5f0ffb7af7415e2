"""One guarded request: principal -> input document -> OPA -> admission -> forward -> settle.

Every outcome leaves through one of three doors: a policy or limit refusal in the DESIGN.md error
shape, a dependency failure decided by the fail mode (503 in fail_closed), or the upstream's reply
relayed as it came. Whatever happens after admission, the reservation is settled with the real usage
or refunded, once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from sidecar.background import BackgroundJobs
from sidecar.body import decode_json, read_body
from sidecar.counters import Admission, CounterStore, Limit, LimitState, Usage, limits_from_decision
from sidecar.decision_log import DecisionLog, DecisionRecord
from sidecar.errors import (
    CounterStoreError,
    PolicyEngineError,
    RequestError,
    Unauthenticated,
    UpstreamError,
    UpstreamUnavailable,
)
from sidecar.errors_http import (
    JSON,
    error_response,
    header_value,
    request_error_response,
    upstream_error_response,
)
from sidecar.ingress import (
    Endpoint,
    Normalised,
    apply_token_cap,
    fill_defaults,
    normalise,
    prompt_text,
    request_stream_usage,
    resources_of,
)
from sidecar.metrics import Metrics
from sidecar.opa_client import OpaClient
from sidecar.principal import Principal, PrincipalResolver
from sidecar.reply_usage import TokenCounts
from sidecar.reservation import cost_micros, output_allowance, reserved_output
from sidecar.route_values import segment
from sidecar.settings import PLAIN_PLACEHOLDER, Settings
from sidecar.stream_guard import StreamGuard
from sidecar.subject_bound import SubjectWindow, TooManySubjects
from sidecar.upstream import Reply, UpstreamClient

logger = logging.getLogger("hexarch.sidecar")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WARNING_HEADER = "X-Hexarch-Warning"
DECISION_HEADER = "X-Hexarch-Decision-Id"
_GENERATING_APIS = frozenset({"openai.chat", "openai.completions", "ollama.chat", "ollama.generate", "json"})
_UNIT_WORDS = {"requests": "requests", "tokens": "tokens", "usd_micros": "micro-USD"}


@dataclass
class Services:
    """Everything a request needs, opened by the app's cleanup context."""

    settings: Settings
    metrics: Metrics
    principals: PrincipalResolver
    opa: OpaClient
    counters: CounterStore
    fallback_counters: CounterStore | None  # fail_open stand-in when Redis fails
    upstream: UpstreamClient
    background: BackgroundJobs  # settlements and refunds, run after the reply is sent


@dataclass(frozen=True)
class _Ticket:
    """What an admitted request carries to settlement."""

    admission: Admission
    store: CounterStore
    pricing: Mapping[str, Any] | None
    reservation: int  # output tokens reserved: charged when the upstream reports no usage
    hide_usage_chunk: bool  # the sidecar asked for the stream's usage event; the client did not


def _window_text(lim: Limit) -> str:
    if lim.period:
        return f"per {lim.period}"
    seconds = lim.window_seconds or 0
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds == size:
            return f"per {name}"
    return f"per {seconds} s"


def ratelimit_headers(state: LimitState) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(state.limit.limit),
        "X-RateLimit-Remaining": str(state.remaining),
        "X-RateLimit-Reset": str(state.reset_seconds),
    }


def _tightest(states: Sequence[LimitState]) -> LimitState | None:
    """The state a client should pace itself by: request limits first, then the least left."""
    stored = [s for s in states if not s.limit.is_request_cap]
    if not stored:
        return None
    requests = [s for s in stored if s.limit.unit == "requests"]
    pool = requests or stored
    return min(pool, key=lambda s: s.remaining / s.limit.limit if s.limit.limit else 0.0)


def _note_decision(decision: Mapping[str, Any], rec: DecisionRecord) -> None:
    """The decision's policies and OPA's own decision id, for the decision log."""
    opa_id = decision.get("opa_decision_id")
    rec.opa_decision_id = opa_id if isinstance(opa_id, str) else None
    policies: dict[str, None] = {}
    for key in ("violations", "warnings", "limits"):
        for item in decision.get(key) or ():
            if isinstance(item, dict) and isinstance(item.get("policy"), str):
                policies[item["policy"]] = None
    rec.policies = list(policies)


class Proxy:
    """The request pipeline; its services are attached by the app's cleanup context."""

    def __init__(self, settings: Settings) -> None:
        self._services: Services | None = None
        self._fail_open = settings.fail_mode == "fail_open"
        self._log = settings.log_decisions
        self._subjects = SubjectWindow(settings.hardening.max_subjects_per_window)
        self.decision_log = DecisionLog(settings)  # opened and closed by the app's cleanup context
        trusted = settings.trusted_headers
        self._owner_header = trusted.resource_owner if trusted.enabled else None

    def attach(self, services: Services | None) -> None:
        self._services = services

    @property
    def s(self) -> Services:
        assert self._services is not None, "the app's services are not started"
        return self._services

    # ---------------------------------------------------------------------------------------
    def handler(self, endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, endpoint)

        return handle

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        record = DecisionRecord(secrets.token_hex(12), request.method, request.path, route=endpoint.path)
        try:
            response = await self._handle(request, endpoint, record)
        except RequestError as exc:
            record.outcome = "unauthenticated" if isinstance(exc, Unauthenticated) else "bad_request"
            record.code = exc.code
            response = request_error_response(exc, record.decision_id)
            if isinstance(exc, Unauthenticated):
                response.headers["WWW-Authenticate"] = 'Bearer realm="hexarch"'
        if not response.prepared:
            response.headers[DECISION_HEADER] = record.decision_id
        record.status = response.status
        record.finished = time.perf_counter()
        metrics = self.s.metrics
        metrics.child(metrics.requests, record.outcome, record.policy or "").inc()
        if self._log and not record.settling:
            self.decision_log.write(record)  # otherwise the settlement job logs it with the usage
        return response

    async def _read(self, request: web.Request) -> bytes:
        return await read_body(request, self.s.settings.max_body_bytes)

    async def _handle(self, request: web.Request, ep: Endpoint, rec: DecisionRecord) -> web.StreamResponse:
        raw = await self._read(request)
        if not ep.guard:
            rec.outcome = "unguarded"
            return await self._unguarded(request, ep, raw, rec)

        principal = self.s.principals.resolve(request.headers)
        rec.principal, rec.team = principal.id, principal.team
        try:
            self._subjects.check(principal.id)
        except TooManySubjects:
            self.s.metrics.subjects_refused.inc()
            raise
        body = decode_json(raw, self.s.settings.hardening) if ep.has_body else None
        filled = fill_defaults(ep, body) if body is not None else False
        norm = normalise(ep, body)
        doc = self._input(request, ep, principal, norm, rec.decision_id)
        rec.model, rec.resources = norm.model, doc["resources"]
        if self.decision_log.prompts and body is not None:
            rec.prompt = prompt_text(body)

        decision = await self._decide(doc, rec)
        if isinstance(decision, web.StreamResponse):
            return decision
        if decision is not None:
            _note_decision(decision, rec)
        extra: CIMultiDict[str] = CIMultiDict()
        if decision is not None:
            denied = self._denied(decision, rec, norm.params)
            if denied is not None:
                return denied
            for warning in decision.get("warnings") or ():
                if isinstance(warning, dict):
                    text = f"{warning.get('policy', '')}: {warning.get('message', '')}"
                    extra.add(WARNING_HEADER, header_value(text))
                    metrics = self.s.metrics
                    metrics.child(metrics.warnings, str(warning.get("policy", ""))).inc()

        limits: list[Limit] = []
        if decision is not None:
            try:
                limits = limits_from_decision(decision.get("limits") or ())
            except PolicyEngineError as exc:
                failed = self._dependency_failed("opa", exc, rec)
                if failed is not None:
                    return failed

        admitted = await self._admit(rec.decision_id, limits, rec)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        admission, store = admitted
        if not admission.admitted:
            return self._limited(admission, norm, rec)
        try:
            # fill_defaults changed the body: forward the filled one
            base = orjson.dumps(body) if filled else raw
            ticket, forwarded = self._prepare(ep, base, body, norm, limits, decision, admission, store, extra)
        except BaseException:
            # nothing was forwarded: whatever broke, the reservation goes back
            self.s.background.spawn(self._refund(admission, store))
            raise
        rec.outcome = "allowed" if rec.outcome == "unknown" else rec.outcome
        return await self._forward(request, ep, forwarded, norm, extra, ticket, rec)

    def _prepare(
        self,
        ep: Endpoint,
        raw: bytes,
        body: dict[str, Any] | None,
        norm: Normalised,
        limits: Sequence[Limit],
        decision: Mapping[str, Any] | None,
        admission: Admission,
        store: CounterStore,
        extra: CIMultiDict[str],
    ) -> tuple[_Ticket, bytes]:
        """The admitted request's ticket and the body to forward (with the sidecar's token cap)."""
        self._admission_headers(admission, extra, norm.max_output_tokens is not None)
        forwarded = raw
        hide_usage_chunk = False
        pricing = decision.get("pricing") if decision is not None else None
        if body is not None and ep.api in _GENERATING_APIS:
            changed = False
            if norm.max_output_tokens is None:
                # No maximum named: ask for no more output than the blocking reservations cover, so
                # the reply cannot settle past what was admitted (sidecar/reservation.py).
                allowance = output_allowance(limits, pricing, norm.prompt_tokens)
                if allowance is not None:
                    apply_token_cap(ep, body, max(1, allowance))
                    changed = True
            if norm.stream and request_stream_usage(ep, body):
                changed = hide_usage_chunk = True
            if changed:
                forwarded = orjson.dumps(body)
        ticket = _Ticket(
            admission=admission,
            store=store,
            pricing=pricing,
            reservation=reserved_output(norm.max_output_tokens, limits, pricing, norm.prompt_tokens),
            hide_usage_chunk=hide_usage_chunk,
        )
        return ticket, forwarded

    # ---------------------------------------------------------------------------------------
    def _input(
        self, request: web.Request, ep: Endpoint, principal: Principal, norm: Normalised, request_id: str
    ) -> dict[str, Any]:
        estimate: dict[str, Any] = {"prompt_tokens": norm.prompt_tokens}
        if norm.max_output_tokens is not None:
            estimate["max_output_tokens"] = norm.max_output_tokens
        confirm = request.headers.get("X-Hexarch-Confirm", "")
        return {
            "resource_owner": self._resource_owner(request),
            "request": {"id": request_id, "method": request.method, "path": request.path, "api": ep.api},
            "principal": principal.document(),
            "resources": resources_of(ep, norm.model),
            "operation": ep.operation,
            "resource_type": ep.resource_type,
            "feature": ep.feature,
            "confirmed": confirm.strip().lower() == "true",
            "model": norm.model,
            "params": norm.params,
            "estimate": estimate,
        }

    def _resource_owner(self, request: web.Request) -> str | None:
        """Who owns the resource the request names (`@self` / `@owner` in allowed_users).

        The route's `{owner}` path placeholder, else the trusted resource-owner header (only when
        trusted headers are on: the app next door vouches for it); never the body (docs/sidecar.md).
        """
        owner = request.match_info.get("owner")
        if owner:
            return owner
        if self._owner_header is not None:
            return request.headers.get(self._owner_header) or None
        return None

    async def _decide(
        self, doc: dict[str, Any], rec: DecisionRecord
    ) -> dict[str, Any] | web.StreamResponse | None:
        started = time.perf_counter()
        try:
            decision = await self.s.opa.decide(doc)
        except PolicyEngineError as exc:
            rec.decision_ms = round((time.perf_counter() - started) * 1000, 3)
            return self._dependency_failed("opa", exc, rec)
        seconds = time.perf_counter() - started
        self.s.metrics.decision_seconds.observe(seconds)
        rec.decision_ms = round(seconds * 1000, 3)
        return decision

    def _dependency_failed(self, dependency: str, exc: Exception, rec: DecisionRecord) -> web.Response | None:
        """503 in fail_closed; None in fail_open (the caller goes on, counted)."""
        if dependency == "opa":
            self.s.metrics.opa_errors.inc()
        else:
            self.s.metrics.redis_errors.inc()
        # one log line per incident comes from the dependency's breaker (sidecar/dependency_guard.py)
        logger.debug("%s failed: %s", dependency, exc)
        if self._fail_open:
            self.s.metrics.fail_open.labels(dependency).inc()
            rec.outcome = "fail_open"
            return None
        rec.outcome = "unavailable"
        if dependency == "opa":
            rec.code = "policy_engine_unavailable"
            message = "the policy engine is unavailable; the request was refused (fail_closed)"
        else:
            rec.code = "counter_store_unavailable"
            message = "the counter store is unavailable; the request was refused (fail_closed)"
        return error_response(
            503,
            message,
            code=rec.code,
            type_="service_unavailable",
            decision_id=rec.decision_id,
            headers={"Retry-After": "1"},
        )

    def _denied(
        self, decision: Mapping[str, Any], rec: DecisionRecord, params: Mapping[str, Any]
    ) -> web.Response | None:
        if decision.get("allow") is True:
            return None
        violations = [v for v in decision.get("violations") or () if isinstance(v, dict)]
        # A confirmation is worth asking for only when nothing else refuses the request.
        violations.sort(key=lambda v: v.get("status") == 428)
        rec.outcome = "denied"
        if not violations:
            rec.code = "policy_denied"
            return error_response(
                403, "the policy denied this request", code="policy_denied", decision_id=rec.decision_id
            )
        first = violations[0]
        status = first.get("status")
        if not isinstance(status, int) or not 400 <= status < 600:
            status = 403
        code = str(first.get("code") or "policy_violation")
        policy = str(first.get("policy")) if first.get("policy") is not None else None
        rec.policy, rec.code = policy, code
        param = first.get("param") or first.get("parameter")
        if param is None and code == "invalid_parameter":
            # Parameter messages start with the parameter's name ("temperature 1.5 is above ...").
            word = str(first.get("message") or "").split(" ", 1)[0]
            param = word if word in params else None
        details: dict[str, Any] = {"rule": first.get("rule"), "action": first.get("action")}
        if len(violations) > 1:
            details["violations"] = [
                {
                    "policy": v.get("policy"),
                    "rule": v.get("rule"),
                    "code": v.get("code"),
                    "message": v.get("message"),
                }
                for v in violations
            ]
        return error_response(
            status,
            str(first.get("message") or code),
            code=code,
            param=param if isinstance(param, str) else None,
            policy=policy,
            details=details,
            decision_id=rec.decision_id,
        )

    async def _admit(
        self, request_id: str, limits: Sequence[Limit], rec: DecisionRecord
    ) -> tuple[Admission, CounterStore] | web.StreamResponse:
        try:
            return await self.s.counters.admit(request_id, limits), self.s.counters
        except CounterStoreError as exc:
            failed = self._dependency_failed("redis", exc, rec)
            if failed is not None:
                return failed
        fallback = self.s.fallback_counters
        assert fallback is not None  # created whenever fail_open is on
        return await fallback.admit(request_id, limits), fallback

    def _limited(self, admission: Admission, norm: Normalised, rec: DecisionRecord) -> web.Response:
        state = admission.blocking
        rec.outcome = "limited"
        if state is None:  # refused without a named limit: treat as the store refusing
            rec.code = "rate_limit_exceeded"
            return error_response(
                429, "a limit refused this request", code="rate_limit_exceeded", decision_id=rec.decision_id
            )
        lim = state.limit
        rec.policy = lim.policy
        details: dict[str, Any] = {
            "limit_id": lim.id,
            "unit": lim.unit,
            "subject": lim.subject,
            "limit": lim.limit,
            "used": state.used,
            "remaining": state.remaining,
            "cost": lim.cost,
            "retry_after": state.retry_after,
            "reset": state.reset_seconds,
        }
        if lim.is_request_cap or (lim.unit == "tokens" and state.retry_after is None):
            rec.code = "max_tokens_exceeded"
            asked = norm.max_output_tokens if norm.max_output_tokens is not None else lim.cost
            message = (
                f"max_tokens {asked} is above the limit of {lim.limit} tokens per request ({lim.policy})"
                if lim.is_request_cap
                else f"this request needs {lim.cost} tokens, more than the {lim.limit} tokens "
                f"{_window_text(lim)} allowed ({lim.policy})"
            )
            return error_response(
                400,
                message,
                code=rec.code,
                type_="invalid_request_error",
                param="max_tokens",
                policy=lim.policy,
                details=details,
                decision_id=rec.decision_id,
            )
        retry = state.retry_after if state.retry_after is not None else max(1, state.reset_seconds)
        details["retry_after"] = retry
        headers = ratelimit_headers(state)
        headers["Retry-After"] = str(retry)
        if lim.unit == "usd_micros":
            rec.code = "budget_exceeded"
            message = (
                f"budget of ${lim.limit / 1e6:,.2f} {_window_text(lim)} is spent "
                f"({lim.policy}); it resets in {state.reset_seconds} s"
            )
        else:
            rec.code = "rate_limit_exceeded"
            message = (
                f"rate limit of {lim.limit} {_UNIT_WORDS[lim.unit]} {_window_text(lim)} reached "
                f"({lim.policy}); retry in {retry} s"
            )
        return error_response(
            429,
            message,
            code=rec.code,
            policy=lim.policy,
            details=details,
            decision_id=rec.decision_id,
            headers=headers,
        )

    def _admission_headers(self, admission: Admission, extra: CIMultiDict[str], named_max: bool) -> None:
        for state in admission.states:
            lim = state.limit
            if lim.unit == "usd_micros":
                metrics = self.s.metrics
                metrics.set_budget_remaining(lim.id, lim.subject, state.remaining)
            # A request that named no maximum is capped by the sidecar itself: nothing to warn about.
            if state.warn and not (lim.is_request_cap and not named_max):
                unit = _UNIT_WORDS[lim.unit]
                text = f"{lim.policy}: {state.used} of {lim.limit} {unit} {_window_text(lim)} used"
                if lim.is_request_cap:
                    text = f"{lim.policy}: {lim.cost} of {lim.limit} tokens per request"
                extra.add(WARNING_HEADER, header_value(text))
                self.s.metrics.child(self.s.metrics.warnings, lim.policy).inc()
        tight = _tightest(admission.states)
        if tight is not None:
            extra.update(ratelimit_headers(tight))

    # ---------------------------------------------------------------------------------------
    def _upstream_path(self, request: web.Request, ep: Endpoint) -> str:
        if ep.upstream_path is None:
            return request.path
        if "{" not in ep.upstream_path:
            return ep.upstream_path
        # Placeholders were checked against the route path when the settings were loaded.
        info = request.match_info
        return PLAIN_PLACEHOLDER.sub(
            lambda m: segment(m.group(1), info.get(m.group(1), "")), ep.upstream_path
        )

    async def _forward(
        self,
        request: web.Request,
        ep: Endpoint,
        body: bytes,
        norm: Normalised,
        extra: CIMultiDict[str],
        ticket: _Ticket,
        rec: DecisionRecord,
    ) -> web.StreamResponse:
        rec.warnings = len(extra.getall(WARNING_HEADER, []))
        extra[DECISION_HEADER] = rec.decision_id
        guard = StreamGuard(True, ticket.reservation, norm.model) if norm.stream and norm.body else None
        upstream = ep.upstream
        try:
            if upstream is None:
                raise UpstreamUnavailable("no upstream is configured for this route")
            resp, target, started = await self.s.upstream.open(
                upstream,
                request.method,
                self._upstream_path(request, ep),
                request.query_string,
                request.headers,
                body if ep.has_body or body else None,
                norm.stream,
            )
            rec.upstream = target.name
            reply = await self.s.upstream.relay(
                request, resp, target, started, extra, norm.stream, ticket.hide_usage_chunk, guard
            )
        except UpstreamError as exc:
            rec.outcome, rec.code = "upstream_error", exc.code
            await self.s.background.run(self._refund(ticket.admission, ticket.store))
            return upstream_error_response(exc, rec.decision_id, headers=extra)
        except BaseException:
            # cancelled (shutdown) or anything unforeseen: give the reservation back (the app drains
            # background jobs before it stops)
            self.s.background.spawn(self._refund(ticket.admission, ticket.store))
            raise
        rec.upstream_ms = round(reply.seconds * 1000, 3)
        try:
            if not reply.response.prepared:
                await reply.response.prepare(request)
                await reply.response.write_eof()
        except ConnectionError:
            pass  # the client left; the upstream's work was done all the same and is charged
        finally:
            # Settling is bookkeeping the client need not wait for: it runs after the handler returns.
            usage = self._usage(reply, norm, ticket, rec, guard)
            rec.settling = True
            await self.s.background.run(self._settle(ticket, usage, rec))
        return reply.response

    def _usage(
        self, reply: Reply, norm: Normalised, ticket: _Ticket, rec: DecisionRecord, guard: StreamGuard | None
    ) -> Usage:
        if reply.status >= 400 and reply.counts is None:
            counts = TokenCounts(0, 0)  # refused by the upstream: nothing was generated
        elif reply.counts is not None:
            counts = reply.counts
        elif not norm.body:
            counts = TokenCounts(0, 0)
        elif guard is not None and (guard.capped or not reply.complete):
            # a stream cut at its reservation, broken off, or left by the client: charge what was
            # relayed (counted by the guard), not the whole reservation
            counts = TokenCounts(norm.prompt_tokens, guard.produced)
        else:
            # No usage reported (or the stream broke before it): the reservation stands.
            counts = TokenCounts(norm.prompt_tokens, ticket.reservation)
        cost = cost_micros(ticket.pricing, counts)
        rec.prompt_tokens, rec.completion_tokens, rec.cost_usd_micros = (
            counts.prompt_tokens,
            counts.completion_tokens,
            cost,
        )
        metrics = self.s.metrics
        metrics.child(metrics.tokens, "prompt").inc(counts.prompt_tokens)
        metrics.child(metrics.tokens, "completion").inc(counts.completion_tokens)
        metrics.cost.inc(cost)
        return Usage(counts.prompt_tokens, counts.completion_tokens, cost)

    async def _settle(self, ticket: _Ticket, usage: Usage, rec: DecisionRecord) -> None:
        try:
            await ticket.store.settle(ticket.admission, usage)
        except CounterStoreError as exc:
            self.s.metrics.redis_errors.inc()
            logger.warning("settling %s failed (its reservation expires by TTL): %s", rec.decision_id, exc)
        finally:
            rec.settling = False
            # status 0: the handler has not finished (the job ran inline) or never will (cancelled)
            if self._log and rec.status:
                self.decision_log.write(rec)

    async def _refund(self, admission: Admission, store: CounterStore) -> None:
        try:
            await store.refund(admission)
        except CounterStoreError as exc:
            self.s.metrics.redis_errors.inc()
            logger.warning("refund failed (the reservation expires by TTL): %s", exc)

    # ---------------------------------------------------------------------------------------
    async def _unguarded(
        self, request: web.Request, ep: Endpoint, raw: bytes, rec: DecisionRecord
    ) -> web.StreamResponse:
        if ep.upstream is None:
            return web.Response(body=b'{"status":"ok"}', content_type=JSON)
        try:
            resp, target, started = await self.s.upstream.open(
                ep.upstream,
                request.method,
                self._upstream_path(request, ep),
                request.query_string,
                request.headers,
                raw or None,
                False,
            )
            rec.upstream = target.name
            reply = await self.s.upstream.relay(request, resp, target, started, {}, False)
        except UpstreamError as exc:
            rec.outcome, rec.code = "upstream_error", exc.code
            return upstream_error_response(exc, rec.decision_id)
        return reply.response
