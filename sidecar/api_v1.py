"""The sidecar's own API under `/hexarch/v1/`, described by `sidecar/openapi.json` (OpenAPI 3.1).

    POST check        decision + admission for a described operation -> allow/deny, reservation id
    POST settle       actual usage of a reservation (idempotent)
    GET  usage        each limit's used/limit/remaining/reset and each budget in USD
    GET  stats        requests, tokens and spend today and this month by model/principal/team/policy
    GET  policies     the loaded policies, the bundle revision and when it was loaded
    GET  openapi.json this API's description

`check` runs the proxy's own steps (the public `decide`, `refuse_if_denied`, `dependency_failed`,
`admit` and `limited` of sidecar/proxy.py's Pipeline): a check and a proxied request are decided,
refused and admitted by the same code, and recorded by the same boundary (sidecar/boundary.py:
metrics, decision log). `settle` prices usage with the proxy's Settlement. What `check` admitted is kept in
Redis as a ticket until `settle`; a ticket not settled by its deadline is released by the sweeper
that every sidecar runs (its token and budget reservations go back; the request stays counted).
Reading someone else's usage or statistics needs the `admin` role. Errors use the DESIGN.md shape.
The API's own state (its Redis client, the statistics store) is opened by its cleanup context and
kept in the app's typed state (`API_KEY`); the shared services come from `request.app[SERVICES_KEY]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from sidecar import redis_keys
from sidecar.body import refuse_declared_oversize
from sidecar.boundary import RECORD_KEY
from sidecar.counters import (
    REDIS_FAILURES,
    Admission,
    Limit,
    LimitState,
    ReservedGroup,
    Usage,
    limits_from_decision,
)
from sidecar.decision_log import DecisionRecord
from sidecar.errors import (
    BadRequest,
    CounterStoreError,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    PolicyEngineError,
    Refused,
    SidecarError,
)
from sidecar.errors_http import JSON, respond
from sidecar.ingress import Normalised
from sidecar.periodic import Periodic
from sidecar.principal import Principal
from sidecar.proxy import Pipeline, note_decision
from sidecar.redis_client import create_redis
from sidecar.reply_usage import TokenCounts
from sidecar.services import SERVICES_KEY, Services
from sidecar.settings import Settings
from sidecar.settlement import Settlement, price
from sidecar.stats import StatsStore, StatsTags
from sidecar.usage import limits_of

logger = logging.getLogger("hexarch.sidecar")

PREFIX = "/hexarch/v1"
ADMIN_ROLE = "admin"
DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 600  # below the admission record's own TTL (900 s), so a release always finds it
SWEEP_SECONDS = 1.0
_SWEEP_BATCH = 100
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
_MAX_TEXT = 256


# --------------------------------------------------------------------------------------------
# Request body reading: every field checked, a wrong one is a 400 naming it.


def _text(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise BadRequest(f"{name} must be a non-empty string of at most {_MAX_TEXT} characters", param=name)
    return value


def _count(
    body: Mapping[str, Any], name: str, default: int | None = None, maximum: int = 10**9
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise BadRequest(f"{name} must be a whole number from 0 to {maximum}", param=name)
    return value


async def _json_object(request: web.Request, max_body_bytes: int) -> dict[str, Any]:
    refuse_declared_oversize(request, max_body_bytes)
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _reply(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=JSON)


# --------------------------------------------------------------------------------------------
# The compiled policy (for resources, `usage` and `policies`), recompiled when the file changes.


@dataclass(frozen=True)
class LoadedPolicy:
    revision: str
    loaded_at: str
    source: str
    config: Mapping[str, Any]
    policies: tuple[dict[str, Any], ...]


class PolicyView:
    def __init__(self, settings: Settings) -> None:
        self._path = settings.policy_file or settings.source
        self._stamp: tuple[int, int] | None = None
        self._loaded: LoadedPolicy | None = None

    async def get(self) -> LoadedPolicy | None:
        """The compiled policy; recompiled (off the event loop) when the file has changed."""
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return self._loaded
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._loaded is None:
            from compiler.api import compile_policy
            from compiler.errors import CompilerError

            try:
                bundle = await asyncio.to_thread(compile_policy, self._path)
            except CompilerError as exc:  # a broken edit: keep serving what was loaded before
                logger.warning("policy file %s does not compile: %s", self._path, exc)
                return self._loaded
            policies = tuple(
                {
                    "id": p.id,
                    "description": p.description,
                    "enabled": p.enabled,
                    "rules": orjson.loads(orjson.dumps([asdict(r) for r in p.rules], default=str)),
                }
                for p in bundle.model.policies
            )
            self._loaded = LoadedPolicy(
                bundle.revision,
                datetime.now(UTC).isoformat(timespec="seconds"),
                str(self._path),
                bundle.config,
                policies,
            )
            self._stamp = stamp
        return self._loaded


def _policy_resources(config: Mapping[str, Any], policy_id: str) -> list[str]:
    found: list[str] = []
    for section in ("rate_limits", "token_limits", "budgets", "access_rules"):
        for entry in config.get(section, ()):
            resource = entry.get("resource")
            if entry.get("policy") == policy_id and isinstance(resource, str) and resource not in found:
                found.append(resource)
    return found


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """What `settle` needs of an admission, kept in Redis between check and settle."""

    reservation_id: str
    principal: str
    groups: tuple[ReservedGroup, ...]
    pricing: Mapping[str, Any] | None
    tags: StatsTags
    deadline_ms: int

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "principal": self.principal,
                "groups": [[g.subject, g.reservation_key, g.keys, g.units] for g in self.groups],
                "pricing": self.pricing,
                "tags": self.tags.document(),
                "deadline_ms": self.deadline_ms,
            }
        )

    @classmethod
    def loads(cls, reservation_id: str, raw: bytes) -> Ticket:
        doc = orjson.loads(raw)
        return cls(
            reservation_id,
            doc["principal"],
            tuple(ReservedGroup(s, r, tuple(k), tuple(u)) for s, r, k, u in doc["groups"]),
            doc.get("pricing"),
            StatsTags.from_document(doc.get("tags") or {}),
            int(doc["deadline_ms"]),
        )

    def admission(self) -> Admission:
        return Admission(True, self.reservation_id, (), None, self.groups)


def _limit_row(state: LimitState) -> dict[str, Any]:
    lim = state.limit
    row: dict[str, Any] = {
        "id": lim.id,
        "policy": lim.policy,
        "unit": lim.unit,
        "scope": lim.scope,
        "subject": lim.subject,
        "window": lim.period or f"{lim.window_seconds}s",
        "limit": lim.limit,
        "cost": lim.cost,
        "used": state.used,
        "remaining": state.remaining,
        "reset_seconds": state.reset_seconds,
        "retry_after": state.retry_after,
        "warn": state.warn,
    }
    if lim.unit == "usd_micros":
        row.update(_usd(state))
    return row


def _usd(state: LimitState) -> dict[str, Any]:
    lim = state.limit
    return {
        "limit_usd": lim.limit / 1e6,
        "spent_usd": state.used / 1e6,
        "remaining_usd": state.remaining / 1e6,
        "utilisation": (state.used / lim.limit) if lim.limit else 1.0,
    }


ApiHandler = Callable[["ApiV1", web.Request, Principal], Awaitable[web.StreamResponse]]


class ApiV1:
    """Handlers of `/hexarch/v1/` over the app's services; made by the API's cleanup context."""

    def __init__(self, settings: Settings, services: Services, redis: Any) -> None:
        self._settings = settings
        self.s = services
        self._policy = PolicyView(settings)
        self._redis = redis
        # recorded in the settlement's own per-tick pipeline (sidecar/script_batch.py)
        self.stats = StatsStore(redis, settings.timezone, batcher=services.scripts)
        self.settlement = Settlement(services)
        self._sweep_delay = SWEEP_SECONDS

    async def guarded(self, request: web.Request, handler: ApiHandler) -> web.StreamResponse:
        """The principal, then the handler; a failure is answered in the DESIGN.md shape (by the
        boundary middleware when the request is a recorded decision, i.e. `check`)."""
        try:
            try:
                principal = self.s.principals.resolve(request.headers)
                return await handler(self, request, principal)
            except web.HTTPRequestEntityTooLarge as exc:
                raise PayloadTooLarge(
                    f"request body is larger than {self._settings.max_body_bytes} bytes"
                ) from exc
        except SidecarError as exc:
            if RECORD_KEY in request:
                raise  # sidecar/boundary.py answers and records it
            if isinstance(exc, CounterStoreError):
                self.s.metrics.redis_errors.inc()
                logger.warning("counter store failed: %s", exc)
            return respond(exc, None)

    # ----------------------------------------------------------------------------------------
    async def check(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        body = await _json_object(request, self._settings.max_body_bytes)
        policy_id = _text(body, "policy_id")
        resource = _text(body, "resource")
        operation = _text(body, "operation") or "request"
        model = _text(body, "model")
        user = _text(body, "user")
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise BadRequest("params must be an object", param="params")
        tokens = _count(body, "tokens", 0)
        max_output = _count(body, "max_output_tokens")
        ttl = _count(body, "ttl_seconds", DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS)
        assert tokens is not None and ttl is not None
        if max_output is None:
            for name in ("max_tokens", "num_predict", "max_completion_tokens"):
                value = params.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    max_output = value
                    break
        if user is not None and user != principal.id:
            self._require_admin(principal, "checking on behalf of another user")
            principal = Principal(user, principal.team, principal.roles, principal.tier, True, principal.via)

        loaded = await self._policy.get()
        config = loaded.config if loaded else {}
        if (
            policy_id is not None
            and loaded is not None
            and all(p["id"] != policy_id for p in loaded.policies)
        ):
            raise NotFound(f"unknown policy {policy_id!r}", param="policy_id", code="unknown_policy")
        resources: list[str] = [resource] if resource else []
        if not resources and policy_id is not None:
            resources = _policy_resources(config, policy_id)
        if model and model not in resources:
            resources.append(model)
        resources.append("*")

        rec = DecisionRecord(secrets.token_hex(12), request.method, request.path, route=f"{PREFIX}/check")
        rec.principal, rec.team, rec.model, rec.resources = principal.id, principal.team, model, resources
        request[RECORD_KEY] = rec  # from here the boundary answers failures and records the decision
        estimate: dict[str, Any] = {"prompt_tokens": tokens}
        if max_output is not None:
            estimate["max_output_tokens"] = max_output
        doc = {
            "request": {
                "id": rec.decision_id,
                "method": "POST",
                "path": request.path,
                "api": "hexarch.check",
            },
            "principal": principal.document(),
            "resources": resources,
            "operation": operation,
            "resource_type": _text(body, "resource_type"),
            "feature": _text(body, "feature"),
            "confirmed": body.get("confirmed") is True,
            "model": model,
            "params": params,
            "estimate": estimate,
        }
        pipeline = Pipeline(self.s, request, rec)
        return await self._check(pipeline, doc, principal, policy_id, model, tokens, max_output, ttl)

    async def _check(
        self,
        pipeline: Pipeline,
        doc: dict[str, Any],
        principal: Principal,
        policy_id: str | None,
        model: str | None,
        tokens: int,
        max_output: int | None,
        ttl: int,
    ) -> web.StreamResponse:
        rec = pipeline.rec
        reply: dict[str, Any] = {
            "allow": False,
            "decision_id": rec.decision_id,
            "policy_id": policy_id,
            "reservation_id": None,
            "expires_in": None,
            "status": 200,
            "code": None,
            "message": None,
            "policy": None,
            "retry_after": None,
            "violations": [],
            "warnings": [],
            "limits": [],
            "error": None,
        }
        decision = await pipeline.decide(doc)  # fail_closed: its failure is raised (503)
        pricing = None
        limits: list[Limit] = []
        if decision is not None:
            if policy_id is not None:
                decision = _only_policy(decision, policy_id)
                note_decision(decision, pipeline.rec)  # the log names the checked policy only
            pricing = decision.get("pricing")
            reply["violations"] = list(decision.get("violations") or ())
            reply["warnings"] = list(decision.get("warnings") or ())
            try:
                pipeline.refuse_if_denied(decision, doc["params"])
            except Refused as exc:
                return self._refusal(reply, exc, rec)
            try:
                limits = limits_from_decision(decision.get("limits") or ())
            except PolicyEngineError as exc:
                pipeline.dependency_failed(exc)
        admission, store = await pipeline.admit(limits)
        reply["limits"] = [_limit_row(s) for s in admission.states]
        for state in admission.states:
            lim = state.limit
            if lim.unit == "usd_micros" and admission.admitted:
                self.s.metrics.set_budget_remaining(
                    lim.id, lim.subject, state.remaining, lim.limit, lim.warn_at
                )
        if not admission.admitted:
            norm = Normalised(None, model, doc["params"], tokens, max_output, False)
            return self._refusal(reply, pipeline.limited(admission, norm), rec)
        rec.outcome = "allowed" if rec.outcome == "unknown" else rec.outcome
        tags = StatsTags(principal.id, principal.team, model, tuple(sorted({lim.policy for lim in limits})))
        reply.update(allow=True, reservation_id=admission.reservation_id, expires_in=ttl)
        if store is self.s.counters:  # the shared store (not the fail_open stand-in)
            ticket = Ticket(
                admission.reservation_id,
                principal.id,
                admission.groups,
                pricing,
                tags,
                int((time.time() + ttl) * 1000),
            )
            try:
                await self._save(ticket, ttl)
            except CounterStoreError as exc:
                self.s.metrics.redis_errors.inc()
                logger.warning("counter store failed: %s", exc)
                await store.refund(admission)
                raise  # 503 from the boundary
        else:
            reply["reservation_id"] = None  # fail_open stand-in: nothing to settle across processes
        return _reply(reply)

    def _refusal(self, reply: dict[str, Any], exc: Refused, rec: DecisionRecord) -> web.Response:
        """A refusal is check's answer (200, allow false), in the proxy's own error shape."""
        rec.outcome, rec.code = exc.outcome, exc.code
        rec.policy = exc.policy or rec.policy
        response = respond(exc, rec.decision_id)
        assert isinstance(response.body, bytes)
        error = orjson.loads(response.body)["error"]
        details = error.get("details") or {}
        reply.update(
            status=response.status,
            code=error.get("code"),
            message=error.get("message"),
            policy=error.get("policy"),
            retry_after=details.get("retry_after") if response.status == 429 else None,
            error=error,
        )
        headers = {
            k: v for k, v in response.headers.items() if k.startswith("X-RateLimit") or k == "Retry-After"
        }
        return web.Response(body=orjson.dumps(reply), content_type=JSON, headers=headers)

    async def _save(self, ticket: Ticket, ttl: int) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(redis_keys.api_ticket_key(ticket.reservation_id), ticket.dumps(), ex=ttl + 60)
            pipe.zadd(redis_keys.api_ticket_index(), {ticket.reservation_id: ticket.deadline_ms})
            # outlives every open ticket's deadline; expires once no check has come for a while
            pipe.expire(redis_keys.api_ticket_index(), MAX_TTL_SECONDS + 120)
            await pipe.execute()
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"saving the reservation failed: {exc}") from exc

    async def _load(self, reservation_id: str) -> Ticket | None:
        try:
            raw = await self._redis.get(redis_keys.api_ticket_key(reservation_id))
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"reading the reservation failed: {exc}") from exc
        if not raw:
            return None
        try:
            return Ticket.loads(reservation_id, raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring unreadable reservation ticket %r: %s", reservation_id, exc)
            return None

    # ----------------------------------------------------------------------------------------
    async def settle(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        body = await _json_object(request, self._settings.max_body_bytes)
        rid = _text(body, "reservation_id", required=True)
        assert rid is not None
        prompt = _count(body, "prompt_tokens", 0)
        completion = _count(body, "completion_tokens", 0)
        outcome = body.get("outcome", "success")
        if outcome not in ("success", "failed"):
            raise BadRequest("outcome must be 'success' or 'failed'", param="outcome")
        assert prompt is not None and completion is not None
        ticket = await self._load(rid)
        if ticket is None:
            counted = await self.stats.counted(rid)
            if counted == "expired":
                raise Gone(
                    f"reservation {rid!r} was released when its settle deadline passed",
                    param="reservation_id",
                    code="reservation_expired",
                )
            if counted:
                return _reply(
                    {"reservation_id": rid, "settled": True, "already_settled": True, "usage": None}
                )
            raise NotFound(
                f"no open reservation {rid!r} (never admitted, or released when it expired)",
                param="reservation_id",
                code="reservation_not_found",
            )
        if ticket.principal != principal.id and ADMIN_ROLE not in principal.roles:
            raise Forbidden("this reservation belongs to another principal")
        counts = TokenCounts(prompt, completion) if outcome == "success" else TokenCounts(0, 0)
        usage = price(counts, ticket.pricing)
        counters = self.s.counters
        if outcome == "failed":
            await counters.refund(ticket.admission())
        else:
            await counters.settle(ticket.admission(), usage)
        fresh = await self.stats.record(rid, ticket.tags, usage, drop_ticket=True)
        if fresh:
            self.settlement.charge(usage)
            self._observe(ticket.tags, usage)
        return _reply(
            {
                "reservation_id": rid,
                "settled": True,
                "already_settled": not fresh,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cost_usd_micros": usage.cost_usd_micros,
                    "cost_usd": usage.cost_usd_micros / 1e6,
                },
            }
        )

    async def proxied(self, reservation_id: str, tags: StatsTags, usage: Usage) -> None:
        self._observe(tags, usage)
        await self.stats.record(reservation_id, tags, usage)

    def _observe(self, tags: StatsTags, usage: Usage) -> None:
        self.s.metrics.observe_settled(
            tags.model, tags.team, usage.prompt_tokens, usage.completion_tokens, usage.cost_usd_micros
        )

    async def close(self) -> None:
        await self._redis.aclose()

    async def sweep_round(self) -> float:
        """One round of the sweeper (sidecar/periodic.py); the delay before the next one."""
        try:
            await self.sweep()
            self._sweep_delay = SWEEP_SECONDS
        except CounterStoreError as exc:
            # Redis is down: back off (and log) up to every 30 s; expired tickets wait for it.
            self._sweep_delay = min(30.0, self._sweep_delay * 2)
            logger.warning(
                "releasing expired reservations failed (next try in %.0f s): %s", self._sweep_delay, exc
            )
        return self._sweep_delay

    async def sweep(self) -> int:
        """Release the tickets whose settle deadline has passed; the number released here."""
        try:
            due = await self._redis.zrangebyscore(
                redis_keys.api_ticket_index(), "-inf", int(time.time() * 1000), start=0, num=_SWEEP_BATCH
            )
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"reading the reservation index failed: {exc}") from exc
        released = 0
        for member in due:
            rid = member.decode() if isinstance(member, bytes) else str(member)
            ticket = await self._load(rid)
            if ticket is None:
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._redis.zrem(redis_keys.api_ticket_index(), rid)
                continue
            # The request stays counted; what it reserved of tokens and budgets goes back.
            usage = Usage(0, 0, 0)
            await self.s.counters.settle(ticket.admission(), usage)
            if await self.stats.record(rid, ticket.tags, usage, drop_ticket=True, expired=True):
                released += 1
        return released

    # ----------------------------------------------------------------------------------------
    def _require_admin(self, principal: Principal, what: str) -> None:
        if ADMIN_ROLE not in principal.roles:
            raise Forbidden(f"{what} needs the {ADMIN_ROLE!r} role")

    async def usage(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        query = request.query
        who = query.get("principal") or principal.id
        team = query.get("team") or principal.team
        resource = query.get("resource")
        for name, value in (("principal", who), ("team", team), ("resource", resource)):
            if value is not None and (not value or len(value) > _MAX_TEXT):
                raise BadRequest(f"{name} must be 1 to {_MAX_TEXT} characters", param=name)
        if who != principal.id or team != principal.team:
            self._require_admin(principal, "reading another principal's or team's usage")
        loaded = await self._policy.get()
        limits = limits_of(loaded.config, who, team) if loaded else []
        if resource is not None:
            limits = [lim for lim in limits if lim.scope != "global" or lim.subject == resource]
        states = await self.s.counters.peek(limits) if limits else ()
        rows = [_limit_row(s) for s in states]
        for row in rows:
            row.pop("cost", None)
            row.pop("retry_after", None)
            row.pop("warn", None)
        budgets = [
            {
                "id": s.limit.id,
                "policy": s.limit.policy,
                "scope": s.limit.scope,
                "subject": s.limit.subject,
                "period": s.limit.period,
                "reset_seconds": s.reset_seconds,
                **_usd(s),
            }
            for s in states
            if s.limit.unit == "usd_micros"
        ]
        return _reply(
            {
                "principal": who,
                "team": team,
                "resource": resource,
                "limits": [r for r in rows if r["unit"] != "usd_micros"],
                "budgets": budgets,
            }
        )

    async def get_stats(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        who = request.query.get("principal")
        if who is not None and (not who or len(who) > _MAX_TEXT):
            raise BadRequest(f"principal must be 1 to {_MAX_TEXT} characters", param="principal")
        if ADMIN_ROLE not in principal.roles:
            if who is not None and who != principal.id:
                self._require_admin(principal, "reading another principal's statistics")
            who = principal.id
        figures = await self.stats.read(who)
        return _reply({"principal": who, "timezone": self._settings.timezone, **figures})

    async def policies(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        loaded = await self._policy.get()
        opa_bundles = await self.s.opa.bundle_revisions()
        opa = {
            "bundles": opa_bundles,
            # OPA decides with the policy this sidecar reads (None: OPA does not say which bundle it has)
            "in_sync": (loaded is not None and loaded.revision in opa_bundles.values())
            if opa_bundles
            else None,
        }
        if loaded is None:
            return _reply({"revision": None, "loaded_at": None, "source": None, "policies": [], "opa": opa})
        return _reply(
            {
                "opa": opa,
                "revision": loaded.revision,
                "loaded_at": loaded.loaded_at,
                "source": Path(loaded.source).name,
                "enforcement": loaded.config.get("enforcement"),
                "policies": list(loaded.policies),
            }
        )


def _only_policy(decision: Mapping[str, Any], policy_id: str) -> dict[str, Any]:
    """The decision as far as one policy is concerned: its violations, warnings and limits."""
    out = dict(decision)
    for name in ("violations", "warnings", "limits"):
        out[name] = [
            e for e in decision.get(name) or () if isinstance(e, dict) and e.get("policy") == policy_id
        ]
    # Refused by other policies only: as far as this one goes, the operation may run.
    out["allow"] = decision.get("allow") is True or (
        bool(decision.get("violations")) and not out["violations"]
    )
    return out


API_KEY: web.AppKey[ApiV1] = web.AppKey("hexarch_api_v1", ApiV1)


def _route(handler: ApiHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        return await request.app[API_KEY].guarded(request, handler)

    return run


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI_FILE.read_bytes(), content_type=JSON)


def _api_ctx(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Opens the API's Redis client over the app's services (started before it), hooks the usage
    statistics into every proxied settlement, and runs the sweeper of expired reservations."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES_KEY]
        api = ApiV1(settings, services, create_redis(settings.redis_url))
        app[API_KEY] = api
        services.settled_hooks.append(api.proxied)
        sweeper = Periodic("the reservation sweeper", api.sweep_round, SWEEP_SECONDS)
        sweeper.start()
        try:
            yield
        finally:
            # bounded: shutdown never waits long on the sweeper (it holds nothing that needs finishing)
            await sweeper.stop()
            services.settled_hooks.remove(api.proxied)
            await api.close()

    return ctx


def add_routes(app: web.Application, settings: Settings) -> None:
    """The one hook `create_app` calls (after the services' cleanup context)."""
    app.router.add_post(f"{PREFIX}/check", _route(ApiV1.check))
    app.router.add_post(f"{PREFIX}/settle", _route(ApiV1.settle))
    app.router.add_get(f"{PREFIX}/usage", _route(ApiV1.usage))
    app.router.add_get(f"{PREFIX}/stats", _route(ApiV1.get_stats))
    app.router.add_get(f"{PREFIX}/policies", _route(ApiV1.policies))
    app.router.add_get(f"{PREFIX}/openapi.json", _openapi)
    app.cleanup_ctx.append(_api_ctx(settings))
