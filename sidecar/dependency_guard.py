"""Circuit breakers in front of OPA and Redis: a hung or dead dependency is cut after N failures.

While a breaker is open, `decide` / `admit` / `settle` / `refund` raise at once (PolicyEngineError or
CounterStoreError) without touching the dependency, so the fail mode answers in microseconds instead
of after the full timeout: 503 in fail_closed, the local limiter in fail_open. After the cool-down one
probe goes through; its success closes the breaker (recovery without a restart).

Logging is per incident, not per request: one WARNING when a breaker opens (with the failure that
opened it) and one WARNING when it closes again, carrying the number of calls answered without the
dependency and the incident's length. Probes failing in between log nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sidecar.breaker import BreakerState, CircuitBreaker
from sidecar.counters import Admission, CounterStore, Limit, LimitState, Usage
from sidecar.decision_engine import DecisionEngine
from sidecar.errors import CounterStoreError, DependencyError, PolicyEngineError
from sidecar.hardening import HardeningSettings
from sidecar.metrics import Metrics

logger = logging.getLogger("hexarch.sidecar")
_T = TypeVar("_T")


class DependencyBreaker:
    """One dependency's breaker plus its incident log and metrics."""

    def __init__(
        self,
        dependency: str,
        hardening: HardeningSettings,
        metrics: Metrics,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.dependency = dependency
        self._metrics = metrics
        self._last_error = ""
        kw: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.breaker = CircuitBreaker(
            dependency,
            failure_threshold=hardening.breaker_failures,
            reset_timeout=hardening.breaker_seconds,
            on_change=self._changed,
            **kw,
        )
        self._clock = self.breaker._clock
        self._incident_started: float | None = None
        self.on_recovered: list[Callable[[], None]] = []

    def _changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        self._metrics.child(self._metrics.breaker_open, self.dependency).set(
            0 if new is BreakerState.CLOSED else 1
        )
        if old is BreakerState.CLOSED and new is BreakerState.OPEN:
            self._incident_started = self._clock()
            logger.warning(
                "%s unavailable: circuit breaker open after %d consecutive failures (last: %s); "
                "requests are answered by the fail mode until a probe succeeds",
                self.dependency,
                breaker.failure_threshold,
                self._last_error,
            )
        elif new is BreakerState.CLOSED and self._incident_started is not None:
            took = self._clock() - self._incident_started
            self._incident_started = None
            logger.warning(
                "%s is back after %.1f s: %d calls were answered without it, %d calls failed",
                self.dependency,
                took,
                breaker.refused_in_incident,
                breaker.failures_in_incident,
            )
            for callback in self.on_recovered:
                callback()

    async def call(self, make: Callable[[], Awaitable[_T]], error: type[DependencyError]) -> _T:
        """Run `make()` under the breaker; an open breaker raises `error` without calling."""
        if not self.breaker.allow():
            self._metrics.child(self._metrics.breaker_refused, self.dependency).inc()
            raise error(f"{self.dependency} circuit breaker is open (last failure: {self._last_error})")
        try:
            result = await make()
        except DependencyError as exc:
            self._last_error = str(exc)
            self.breaker.record_failure()
            raise
        except BaseException:  # cancelled, or a bug: says nothing about the dependency
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result


class GuardedEngine:
    """A decision engine (sidecar/decision_engine.py) whose `decide` goes through the OPA breaker."""

    def __init__(self, engine: DecisionEngine, guard: DependencyBreaker) -> None:
        self.engine = engine
        self.guard = guard

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def ready(self) -> bool:
        return await self.engine.ready()

    async def bundle_revisions(self) -> dict[str, str]:
        return await self.engine.bundle_revisions()

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]:
        return await self.guard.call(lambda: self.engine.decide(input_doc), PolicyEngineError)


class GuardedCounters:
    """A CounterStore whose admissions, settlements and refunds go through the Redis breaker."""

    def __init__(self, store: CounterStore, guard: DependencyBreaker) -> None:
        self.store = store
        self.guard = guard

    async def load_scripts(self) -> None:
        await self.store.load_scripts()

    async def admit(self, request_id: str, limits: Sequence[Limit]) -> Admission:
        if all(lim.is_request_cap for lim in limits):
            return await self.store.admit(request_id, limits)  # answered without Redis
        return await self.guard.call(lambda: self.store.admit(request_id, limits), CounterStoreError)

    async def settle(self, admission: Admission, usage: Usage) -> None:
        if not (admission.admitted and admission.groups):
            return
        await self.guard.call(lambda: self.store.settle(admission, usage), CounterStoreError)

    async def refund(self, admission: Admission) -> None:
        if not (admission.admitted and admission.groups):
            return
        await self.guard.call(lambda: self.store.refund(admission), CounterStoreError)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        return await self.guard.call(lambda: self.store.peek(limits), CounterStoreError)

    async def ping(self) -> bool:
        ok = await self.store.ping()
        return ok

    async def close(self) -> None:
        await self.store.close()
