"""One guarded request, read top to bottom in `Pipeline._handle`:

    read body -> principal -> normalise (Anthropic ingress, routing by model, upstream defaults)
    -> decision (the DecisionEngine) -> refusal? -> admission (Redis) -> limited? -> cap output
    -> forward (fallback chain) -> settle (usage statistics hooks, decision log)

A refusal or failure anywhere is raised as a typed exception (sidecar/errors.py) and becomes a
response once, in sidecar/boundary.py. A failing dependency is judged in one place,
`Pipeline.dependency_failed`: re-raised (503) in fail_closed, counted and tolerated in fail_open.
Whatever happens after admission, the reservation is settled with the real usage or refunded, once
(sidecar/settlement.py). Services come from the app's typed state (`request.app[SERVICES_KEY]`).

The steps `decide`, `refuse_if_denied`, `dependency_failed`, `admit` and `limited` are public:
`POST /hexarch/v1/check` (sidecar/api_v1.py) runs the same ones for a described operation.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from sidecar.body import decode_json, read_body
from sidecar.boundary import DECISION_HEADER, RECORD_KEY
from sidecar.counters import Admission, CounterStore, Limit, LimitState, limits_from_decision
from sidecar.decision_log import DecisionRecord
from sidecar.errors import (
    CounterStoreError,
    DependencyError,
    LimitExceeded,
    PolicyDenied,
    PolicyEngineError,
    UpstreamError,
    UpstreamUnavailable,
)
from sidecar.errors_http import JSON, header_value
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
from sidecar.principal import Principal
from sidecar.providers.anthropic import chat_of_messages
from sidecar.providers.base import Adapter, Wire
from sidecar.providers.replies import WRITERS
from sidecar.reservation import output_allowance, reserved_output
from sidecar.route_values import segment
from sidecar.routing import declares_models, model_for, route_by_model, served_models
from sidecar.services import SERVICES_KEY, Services
from sidecar.settings import PLAIN_PLACEHOLDER, UpstreamSettings
from sidecar.settlement import Settlement, Ticket
from sidecar.stats import StatsTags
from sidecar.stream_guard import StreamGuard
from sidecar.subject_bound import TooManySubjects
from sidecar.upstream import Build, Reply

logger = logging.getLogger("hexarch.sidecar")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WARNING_HEADER = "X-Hexarch-Warning"
UPSTREAM_HEADER = "X-Hexarch-Upstream"
_GENERATING_APIS = frozenset({"openai.chat", "openai.completions", "ollama.chat", "ollama.generate", "json"})
_UNIT_WORDS = {"requests": "requests", "tokens": "tokens", "usd_micros": "micro-USD"}


@dataclass(frozen=True)
class _Outbound:
    """What goes upstream: the client's API, the canonical body (None: no JSON body) and its bytes."""

    client_api: str
    body: dict[str, Any] | None
    raw: bytes
    wants_usage: bool  # the client asked for stream usage itself


def _translates(ep: Endpoint, out: _Outbound, adapter: Adapter) -> bool:
    """A chat request is translated unless the upstream speaks the client's API already; a route
    with its own upstream_path always relays the body as it came."""
    if out.client_api not in WRITERS or ep.upstream_path is not None:
        return False
    return adapter.translates or out.client_api != "openai.chat"


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


def note_decision(decision: Mapping[str, Any], rec: DecisionRecord) -> None:
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
    """The route handlers: each request runs its own Pipeline over the app's services."""

    def handler(self, endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            record = DecisionRecord(secrets.token_hex(12), request.method, request.path, route=endpoint.path)
            request[RECORD_KEY] = record  # sidecar/boundary.py answers refusals and records it
            return await Pipeline(request.app[SERVICES_KEY], request, record).run(endpoint)

        return handle


class Pipeline:
    """One guarded request (see the module docstring)."""

    def __init__(self, services: Services, request: web.Request, record: DecisionRecord) -> None:
        self.s = services
        self.request = request
        self.rec = record
        self._fail_open = services.settings.fail_mode == "fail_open"
        self.settlement = Settlement(services)

    async def run(self, endpoint: Endpoint) -> web.StreamResponse:
        return await self._handle(self.request, endpoint, self.rec)

    async def _read(self, request: web.Request) -> bytes:
        # size, Content-Encoding (sidecar/body.py): refused before anything is admitted
        return await read_body(request, self.s.settings.max_body_bytes)

    async def _handle(self, request: web.Request, ep: Endpoint, rec: DecisionRecord) -> web.StreamResponse:
        raw = await self._read(request)
        if not ep.guard:
            rec.outcome = "unguarded"
            return await self._unguarded(request, ep, raw, rec)

        principal = self.s.principals.resolve(request.headers)
        rec.principal, rec.team = principal.id, principal.team
        try:
            self.s.subjects.check(principal.id)
        except TooManySubjects:
            self.s.metrics.subjects_refused.inc()
            raise
        client_api = ep.api
        # JSON depth and key bounds (sidecar/body.py): a hostile body is a 400 before admission
        body = decode_json(raw, self.s.settings.hardening) if ep.has_body else None
        self._upstream_path(request, ep)  # a `..` placeholder is refused here, before admission
        if client_api == "anthropic.messages" and body is not None:
            # An Anthropic client: its request is read as the canonical OpenAI chat body.
            body = chat_of_messages(body)
            ep = replace(ep, api="openai.chat")
        if body is not None:
            ep = route_by_model(self.s.settings, ep, body.get("model"))
        # the upstream's default_model/_temperature/_max_tokens, before the policy judges the body
        filled = fill_defaults(ep, body) if body is not None else False
        norm = normalise(ep, body)
        doc = self._input(request, ep, principal, norm, rec.decision_id)
        doc["request"]["api"] = client_api
        rec.model, rec.resources = norm.model, doc["resources"]
        if self.s.decision_log.prompts and body is not None:
            rec.prompt = prompt_text(body)
        options = body.get("stream_options") if body is not None else None
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True

        decision = await self.decide(doc)
        extra: CIMultiDict[str] = CIMultiDict()
        if decision is not None:
            self.refuse_if_denied(decision, norm.params)
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
                self.dependency_failed(exc)

        admission, store = await self.admit(limits)
        if not admission.admitted:
            raise self.limited(admission, norm)
        try:
            ticket, forwarded = self._prepare(
                ep, raw, body, filled, client_api, principal, norm, limits, decision, admission, store, extra
            )
        except BaseException:
            # nothing was forwarded: whatever broke, the reservation goes back
            self.settlement.refund_later(Ticket(admission, store, None, 0, False))
            raise
        rec.outcome = "allowed" if rec.outcome == "unknown" else rec.outcome
        out = _Outbound(client_api, body, forwarded, wants_usage)
        return await self._forward(request, ep, out, norm, extra, ticket, rec)

    def _prepare(
        self,
        ep: Endpoint,
        raw: bytes,
        body: dict[str, Any] | None,
        filled: bool,
        client_api: str,
        principal: Principal,
        norm: Normalised,
        limits: Sequence[Limit],
        decision: Mapping[str, Any] | None,
        admission: Admission,
        store: CounterStore,
        extra: CIMultiDict[str],
    ) -> tuple[Ticket, bytes]:
        """The admitted request's ticket and the body to forward (with the sidecar's token cap)."""
        self._admission_headers(admission, extra, norm.max_output_tokens is not None)
        if filled and client_api == ep.api:
            raw = orjson.dumps(body)  # relayed as it came, with the defaults filled in
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
        ticket = Ticket(
            admission=admission,
            store=store,
            pricing=pricing,
            reservation=reserved_output(norm.max_output_tokens, limits, pricing, norm.prompt_tokens),
            hide_usage_chunk=hide_usage_chunk,
            tags=StatsTags(
                principal.id, principal.team, norm.model, tuple(sorted({lim.policy for lim in limits}))
            ),
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
        trusted = self.s.settings.trusted_headers
        if trusted.enabled and trusted.resource_owner is not None:
            return request.headers.get(trusted.resource_owner) or None
        return None

    async def decide(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """The decision engine's decision on `doc`; None when it failed and fail_open goes on."""
        rec = self.rec
        started = time.perf_counter()
        try:
            decision = await self.s.opa.decide(doc)
        except PolicyEngineError as exc:
            rec.decision_ms = round((time.perf_counter() - started) * 1000, 3)
            self.dependency_failed(exc)
            return None
        seconds = time.perf_counter() - started
        self.s.metrics.decision_seconds.observe(seconds)
        rec.decision_ms = round(seconds * 1000, 3)
        note_decision(decision, rec)
        return decision

    def dependency_failed(self, exc: DependencyError) -> None:
        """The one fail-open decision: re-raise (503, fail_closed) or count and go on (fail_open)."""
        if exc.dependency == "opa":
            self.s.metrics.opa_errors.inc()
        else:
            self.s.metrics.redis_errors.inc()
        # one log line per incident comes from the dependency's breaker (sidecar/dependency_guard.py)
        logger.debug("%s failed: %s", exc.dependency, exc)
        if not self._fail_open:
            raise exc
        self.s.metrics.fail_open.labels(exc.dependency).inc()
        self.rec.outcome = "fail_open"

    def refuse_if_denied(self, decision: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """Raise the decision's refusal (PolicyDenied) unless it allows the request."""
        if decision.get("allow") is True:
            return
        violations = [v for v in decision.get("violations") or () if isinstance(v, dict)]
        # A confirmation is worth asking for only when nothing else refuses the request.
        violations.sort(key=lambda v: v.get("status") == 428)
        if not violations:
            raise PolicyDenied(403, "the policy denied this request", code="policy_denied")
        first = violations[0]
        status = first.get("status")
        if not isinstance(status, int) or not 400 <= status < 600:
            status = 403
        code = str(first.get("code") or "policy_violation")
        policy = str(first.get("policy")) if first.get("policy") is not None else None
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
        raise PolicyDenied(
            status,
            str(first.get("message") or code),
            code=code,
            param=param if isinstance(param, str) else None,
            policy=policy,
            details=details,
        )

    async def admit(self, limits: Sequence[Limit]) -> tuple[Admission, CounterStore]:
        """Admission under the request's decision id: Redis, or the fail_open stand-in."""
        request_id = self.rec.decision_id
        try:
            return await self.settlement.admit(self.s.counters, request_id, limits), self.s.counters
        except CounterStoreError as exc:
            self.dependency_failed(exc)
        fallback = self.s.fallback_counters
        assert fallback is not None  # created whenever fail_open is on
        return await self.settlement.admit(fallback, request_id, limits), fallback

    def limited(self, admission: Admission, norm: Normalised) -> LimitExceeded:
        """The refusal of a limit the admission did not pass."""
        state = admission.blocking
        if state is None:  # refused without a named limit: treat as the store refusing
            return LimitExceeded(429, "a limit refused this request", code="rate_limit_exceeded")
        lim = state.limit
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
            asked = norm.max_output_tokens if norm.max_output_tokens is not None else lim.cost
            message = (
                f"max_tokens {asked} is above the limit of {lim.limit} tokens per request ({lim.policy})"
                if lim.is_request_cap
                else f"this request needs {lim.cost} tokens, more than the {lim.limit} tokens "
                f"{_window_text(lim)} allowed ({lim.policy})"
            )
            return LimitExceeded(
                400,
                message,
                code="max_tokens_exceeded",
                type_="invalid_request_error",
                param="max_tokens",
                policy=lim.policy,
                details=details,
            )
        retry = state.retry_after if state.retry_after is not None else max(1, state.reset_seconds)
        details["retry_after"] = retry
        headers = ratelimit_headers(state)
        headers["Retry-After"] = str(retry)
        if lim.unit == "usd_micros":
            code = "budget_exceeded"
            message = (
                f"budget of ${lim.limit / 1e6:,.2f} {_window_text(lim)} is spent "
                f"({lim.policy}); it resets in {state.reset_seconds} s"
            )
        else:
            code = "rate_limit_exceeded"
            message = (
                f"rate limit of {lim.limit} {_UNIT_WORDS[lim.unit]} {_window_text(lim)} reached "
                f"({lim.policy}); retry in {retry} s"
            )
        return LimitExceeded(429, message, code=code, policy=lim.policy, details=details, headers=headers)

    def _admission_headers(self, admission: Admission, extra: CIMultiDict[str], named_max: bool) -> None:
        for state in admission.states:
            lim = state.limit
            if lim.unit == "usd_micros":
                metrics = self.s.metrics
                metrics.set_budget_remaining(lim.id, lim.subject, state.remaining, lim.limit, lim.warn_at)
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
        # one encoded segment per value, never `.`/`..` (sidecar/route_values.py)
        return PLAIN_PLACEHOLDER.sub(
            lambda m: segment(m.group(1), info.get(m.group(1), "")), ep.upstream_path
        )

    def _build(self, request: web.Request, ep: Endpoint, out: _Outbound, norm: Normalised) -> Build:
        """What each upstream of the chain is sent: the client's request as it came (pass-through),
        or the canonical chat body in the upstream's wire API (sidecar/providers/)."""
        path = self._upstream_path(request, ep)
        first = ep.upstream
        requested = norm.model or ""
        payload = out.raw if ep.has_body or out.raw else None
        chat = out.body

        def build(target: UpstreamSettings, adapter: Adapter) -> Wire:
            model = model_for(target, requested, target is first)
            if chat is not None and _translates(ep, out, adapter):
                return adapter.request(chat, model, norm.stream)
            body = payload
            if chat is not None and out.client_api in WRITERS and model != requested:
                body = orjson.dumps({**chat, "model": model})  # a fallback serving another model
            return Wire(request.method, path, {}, body, request.query_string, passthrough=True)

        return build

    async def _forward(
        self,
        request: web.Request,
        ep: Endpoint,
        out: _Outbound,
        norm: Normalised,
        extra: CIMultiDict[str],
        ticket: Ticket,
        rec: DecisionRecord,
    ) -> web.StreamResponse:
        rec.warnings = len(extra.getall(WARNING_HEADER, []))
        extra[DECISION_HEADER] = rec.decision_id
        # counts, caps and honestly ends a relayed stream (sidecar/stream_guard.py)
        guard = StreamGuard(True, ticket.reservation, norm.model) if norm.stream and norm.body else None
        upstream = ep.upstream
        try:
            if ep.api == "openai.models" and declares_models(self.s.settings):
                listing = orjson.dumps({"object": "list", "data": served_models(self.s.settings)})
                reply = Reply(
                    web.Response(body=listing, content_type=JSON, headers=extra), 200, "", None, True, 0.0
                )
            else:
                if upstream is None:
                    raise UpstreamUnavailable("no upstream is configured for this route")
                opened = await self.s.upstream.open(
                    upstream, self._build(request, ep, out, norm), request.headers, norm.stream
                )
                rec.upstream = opened.target.name
                extra[UPSTREAM_HEADER] = opened.target.name
                if out.body is not None and _translates(ep, out, opened.adapter):
                    writer = WRITERS[out.client_api](norm.model or opened.target.model or "", out.wants_usage)
                    reply = await self.s.upstream.relay_translated(
                        request, opened, extra, norm.stream, writer, guard
                    )
                else:
                    reply = await self.s.upstream.relay(
                        request, opened, extra, norm.stream, ticket.hide_usage_chunk, guard
                    )
        except UpstreamError as exc:
            await self.settlement.refund_now(ticket)
            raise exc.with_headers(extra) from None
        except BaseException:
            # cancelled (shutdown) or anything unforeseen: give the reservation back
            self.settlement.refund_later(ticket)
            raise
        rec.upstream_ms = round(reply.seconds * 1000, 3)
        try:
            if not reply.response.prepared:
                await reply.response.prepare(request)
                await reply.response.write_eof()
        except ConnectionError:
            pass  # the client left; the upstream's work was done all the same and is charged
        finally:
            await self.settlement.close(reply, norm, ticket, rec, guard)
        return reply.response

    # ---------------------------------------------------------------------------------------
    async def _unguarded(
        self, request: web.Request, ep: Endpoint, raw: bytes, rec: DecisionRecord
    ) -> web.StreamResponse:
        if ep.upstream is None:
            return web.Response(body=b'{"status":"ok"}', content_type=JSON)
        path = self._upstream_path(request, ep)

        def build(target: UpstreamSettings, adapter: Adapter) -> Wire:
            return Wire(request.method, path, {}, raw or None, request.query_string, passthrough=True)

        opened = await self.s.upstream.open(ep.upstream, build, request.headers, False)
        rec.upstream = opened.target.name
        reply = await self.s.upstream.relay(request, opened, {UPSTREAM_HEADER: opened.target.name}, False)
        return reply.response
