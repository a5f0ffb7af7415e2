"""The sidecar application: `create_app(settings)`.

Routes: the configured ones, then the OpenAI/Ollama-compatible built-ins, plus `/metrics`,
`/healthz` (the process is alive), `/readyz` (OPA has its bundle and Redis answers) and, when a
policy file is configured, `/bundles/hexarch.tar.gz`. Every client (Redis, the OPA session, the
upstream session) is opened and closed by the cleanup context, so tests can run several apps in one
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from sidecar import api_v1
from sidecar.admin import admin_middleware
from sidecar.background import BackgroundJobs
from sidecar.body import close_after_broken_body
from sidecar.boundary import boundary
from sidecar.breaker import BreakerState
from sidecar.bundle_server import BundleServer
from sidecar.counters import Counters, CounterStore
from sidecar.decision_engine import create_engine
from sidecar.decision_log import DecisionLog
from sidecar.dependency_guard import DependencyBreaker, GuardedCounters, GuardedEngine
from sidecar.errors import CounterStoreError
from sidecar.errors_http import JSON, error_response
from sidecar.inflight import inflight_middleware
from sidecar.ingress import resolve_endpoints
from sidecar.local_counters import LocalCounters
from sidecar.metrics import CONTENT_TYPE, Metrics
from sidecar.principal import PrincipalResolver
from sidecar.proxy import Handler, Proxy
from sidecar.reconcile import JournaledCounters
from sidecar.redis_client import create_redis, redact
from sidecar.services import SERVICES_KEY, Services
from sidecar.settings import Settings
from sidecar.subject_bound import SubjectWindow
from sidecar.upstream import UpstreamClient

logger = logging.getLogger("hexarch.sidecar")

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
BUNDLE_PATH = "/bundles/hexarch.tar.gz"


@web.middleware
async def _error_shape(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405 in the DESIGN.md error shape (everything else is answered by handlers)."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(
            404, f"no route for {request.method} {request.path}", code="not_found", type_="not_found_error"
        )
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            405,
            f"{request.method} is not allowed on {request.path}",
            code="method_not_allowed",
            type_="invalid_request_error",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )


def create_app(settings: Settings, env: Mapping[str, str] | None = None) -> web.Application:
    """The sidecar app for `settings`; `env` supplies upstream secrets (default: os.environ)."""
    # client_max_size makes aiohttp stop reading an oversized body: the handler turns it into 413.
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            inflight_middleware(settings.hardening.max_inflight_requests, metrics),
            close_after_broken_body,
            _error_shape,
            admin_middleware(settings, env),
            boundary,
        ],
    )
    proxy = Proxy()
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics

    bundle: BundleServer | None = None
    if settings.serve_bundle and settings.policy_file:
        bundle = BundleServer(settings.policy_file, metrics, settings.bundle_check_seconds)
        app.router.add_get(BUNDLE_PATH, bundle.handle)
        app.cleanup_ctx.append(_bundle_ctx(bundle))
    elif settings.decision_engine == "wasm" and settings.policy_file:
        # not served (OPA gets the bundle elsewhere), but compiled here for the in-process engine
        bundle = BundleServer(settings.policy_file, metrics, settings.bundle_check_seconds)
        app.cleanup_ctx.append(_bundle_ctx(bundle))
    decision_log = DecisionLog(settings)
    app.cleanup_ctx.append(_decision_log_ctx(decision_log))
    app.cleanup_ctx.append(_services_ctx(settings, metrics, decision_log, env, bundle))
    api_v1.add_routes(app, settings)  # /hexarch/v1/: check, settle, usage, stats, policies

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    opa_ready = ReadinessCache(settings.opa_health_check_seconds)

    async def readyz(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES_KEY]
        opa_ok = await opa_ready.check(services.opa.ready)
        redis_ok = await services.counters.ping()
        checks = {"opa": opa_ok, "redis": redis_ok}
        if bundle is not None:
            checks["bundle"] = bundle.revision is not None
        ready = all(checks.values())
        body = orjson.dumps({"status": "ready" if ready else "not_ready", "checks": checks})
        return web.Response(status=200 if ready else 503, body=body, content_type=JSON)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)

    for endpoint in resolve_endpoints(settings):
        handler = proxy.handler(endpoint)
        for method in endpoint.methods:
            app.router.add_route(method, endpoint.path, handler)
    return app


class ReadinessCache:
    """`opa.health_check_interval`: a healthy OPA is re-checked at most once per interval.

    A failed check is never cached: /readyz asks again on the next probe, so start-up and recovery
    are seen at once. With interval 0 every probe asks OPA.
    """

    def __init__(self, interval_seconds: float) -> None:
        self.interval = interval_seconds
        self._ok_until = 0.0

    async def check(self, probe: Callable[[], Awaitable[bool]]) -> bool:
        now = time.monotonic()
        if self.interval > 0 and now < self._ok_until:
            return True
        ok = await probe()
        self._ok_until = now + self.interval if ok else 0.0
        return ok


def _decision_log_ctx(log: DecisionLog) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        log.open()
        loop = asyncio.get_running_loop()
        hooked = False
        if log.path is not None:
            # SIGHUP reopens the file (logrotate); only the main thread's loop can take signals.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, log.reopen)
                hooked = True
        try:
            yield
        finally:
            if hooked:
                loop.remove_signal_handler(signal.SIGHUP)
            log.close()

    return ctx


def _reconciling_fallback(
    settings: Settings,
    metrics: Metrics,
    redis: CounterStore,
    guard: DependencyBreaker,
    background: BackgroundJobs,
) -> JournaledCounters:
    """The fail_open local limiter, journaled and replayed into Redis when it answers again."""
    journal = JournaledCounters(LocalCounters(timezone=settings.timezone), metrics)

    async def replay() -> None:
        await journal.flush(redis)

    def flush() -> None:
        if len(journal) and guard.breaker.state is BreakerState.CLOSED:
            background.spawn(replay())

    journal.on_journal = flush
    guard.on_recovered.append(flush)
    return journal


def _bundle_ctx(bundle: BundleServer) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # A broken policy at start-up stops the sidecar with the compiler's diagnostics.
        bundle.build()
        yield

    return ctx


def _services_ctx(
    settings: Settings,
    metrics: Metrics,
    decision_log: DecisionLog,
    env: Mapping[str, str] | None,
    bundle: BundleServer | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # the `decision_engine` setting picks who decides; the OPA breaker guards either engine
        opa = GuardedEngine(
            create_engine(settings, bundle), DependencyBreaker("opa", settings.hardening, metrics)
        )
        upstream = UpstreamClient(settings, metrics, env)
        redis_guard = DependencyBreaker("redis", settings.hardening, metrics)
        store = Counters(create_redis(settings.redis_url), timezone=settings.timezone)
        scripts = store.batcher  # the usage statistics join the settlements' pipelines
        counters: CounterStore = GuardedCounters(store, redis_guard)
        background = BackgroundJobs()
        fallback: CounterStore | None = None
        if settings.fail_mode == "fail_open":
            fallback = _reconciling_fallback(settings, metrics, counters, redis_guard, background)
        await opa.start()
        await upstream.start()
        try:
            await counters.load_scripts()
        except CounterStoreError as exc:
            # Not fatal: EVALSHA reloads scripts on NOSCRIPT once Redis is back; /readyz reports it.
            metrics.redis_errors.inc()
            logger.warning("Redis at %s is not answering yet: %s", redact(settings.redis_url), exc)
        services = Services(
            settings,
            metrics,
            PrincipalResolver(settings),
            opa,
            counters,
            fallback,
            upstream,
            background,
            decision_log,
            SubjectWindow(settings.hardening.max_subjects_per_window),
            scripts=scripts,
        )
        app[SERVICES_KEY] = services
        try:
            yield
        finally:
            # the server has stopped taking requests: let pending settlements reach Redis first
            await background.drain()
            await upstream.close()
            await opa.close()
            await counters.close()
            if fallback is not None:
                await fallback.close()

    return ctx
