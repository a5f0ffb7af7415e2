"""A generic circuit breaker: cut a hung or dead dependency fast instead of waiting out its timeout.

States and transitions::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN   --(reset_timeout seconds have passed)-------> HALF_OPEN
    HALF_OPEN: lets at most `half_open_max_calls` probes through at a time; others are refused
    HALF_OPEN --(a probe succeeds)--> CLOSED
    HALF_OPEN --(a probe fails)-----> OPEN (the cool-down starts again)

Use::

    breaker = CircuitBreaker("redis", failure_threshold=3, reset_timeout=2.0)
    if not breaker.allow():          # refused at once while open: no wait on the dependency
        raise ...                    # caller decides (503 / fail_open / next upstream)
    try:
        result = await call()
    except DependencyFailure:
        breaker.record_failure()
        raise
    else:
        breaker.record_success()

A caller that is allowed through MUST report exactly one outcome (`record_success` or
`record_failure`), or call `release()` when the call ended in a way that says nothing about the
dependency (e.g. the caller was cancelled); otherwise a half-open probe slot stays taken.

The clock is a callable returning monotonic seconds (default `time.monotonic`), injectable for tests.
`on_change(breaker, old, new)` is called on every transition (used for one log line per incident and
for metrics); `failures_while_open` counts the calls refused during the current incident.
The breaker is made for one asyncio event loop (no locks: every method runs without awaiting).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BreakerSnapshot", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a breaker looks like at one instant (for logs, metrics and tests)."""

    name: str
    state: BreakerState
    consecutive_failures: int
    refused_in_incident: int
    failures_in_incident: int
    opened_at: float | None


ChangeHook = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures; half-open probes after a cool-down."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: ChangeHook | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        if half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0
        # per incident (reset when the breaker closes again)
        self.refused_in_incident = 0
        self.failures_in_incident = 0

    # -- reading ---------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    @property
    def is_open(self) -> bool:
        """True while calls are being refused without trying (open, cool-down not yet over)."""
        return self.state is BreakerState.OPEN

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=self.name,
            state=self.state,
            consecutive_failures=self._failures,
            refused_in_incident=self.refused_in_incident,
            failures_in_incident=self.failures_in_incident,
            opened_at=self._opened_at,
        )

    # -- the protocol ----------------------------------------------------------------------------
    def allow(self) -> bool:
        """May a call go to the dependency now? False means: answer at once without trying."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.half_open_max_calls:
            self._probes += 1
            return True
        self.refused_in_incident += 1
        return False

    def record_success(self) -> None:
        """The allowed call succeeded: a half-open breaker closes; a closed one forgets its failures."""
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._transition(BreakerState.CLOSED)
        elif self._state is BreakerState.OPEN:
            # a call allowed before the breaker opened has come back fine: the dependency is back
            self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """The allowed call failed or timed out."""
        self._failures += 1
        self.failures_in_incident += 1
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open()
        elif self._state is BreakerState.OPEN:
            # a late failure of a call allowed before opening: the cool-down restarts from now
            self._opened_at = self._clock()

    def release(self) -> None:
        """The allowed call ended without telling anything about the dependency (e.g. cancelled)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def reset(self) -> None:
        """Force the breaker closed (tests, admin)."""
        self._failures = 0
        self._probes = 0
        if self._state is not BreakerState.CLOSED:
            self._transition(BreakerState.CLOSED)

    # -- internals -------------------------------------------------------------------------------
    def _cooled_down(self) -> bool:
        return self._opened_at is not None and self._clock() - self._opened_at >= self.reset_timeout

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probes = 0
        if self._state is not BreakerState.OPEN:
            self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if new is BreakerState.HALF_OPEN:
            self._probes = 0
        if self._on_change is not None:
            self._on_change(self, old, new)
        if new is BreakerState.CLOSED:
            self._opened_at = None
            self._failures = 0
            self.refused_in_incident = 0
            self.failures_in_incident = 0
