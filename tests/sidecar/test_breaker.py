"""The generic circuit breaker: closed -> open -> half-open probes -> closed, on an injected clock."""

from __future__ import annotations

import pytest

from sidecar.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, changes: list[tuple[str, str]] | None = None, **kw: int | float) -> CircuitBreaker:
    def on_change(b: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if changes is not None:
            changes.append((old.value, new.value))

    return CircuitBreaker("dep", clock=clock, on_change=on_change, **kw)  # type: ignore[arg-type]


def test_opens_after_n_consecutive_failures_and_refuses_at_once() -> None:
    clock = Clock()
    b = _breaker(clock, failure_threshold=3, reset_timeout=5)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert [b.allow() for _ in range(10)] == [False] * 10
    assert b.snapshot().refused_in_incident == 10


def test_a_success_resets_the_consecutive_count() -> None:
    b = _breaker(Clock(), failure_threshold=2)
    b.allow()
    b.record_failure()
    b.allow()
    b.record_success()
    b.allow()
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_at_a_time_and_closes_on_success() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = _breaker(clock, changes, failure_threshold=1, reset_timeout=2)
    b.allow()
    b.record_failure()
    clock.now += 1.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # a second caller while the probe is out
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow() and b.allow()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.snapshot().refused_in_incident == 0


def test_a_failed_probe_reopens_and_restarts_the_cool_down() -> None:
    clock = Clock()
    b = _breaker(clock, failure_threshold=1, reset_timeout=2)
    b.allow()
    b.record_failure()
    clock.now += 2
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.now += 1.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()


def test_release_frees_the_probe_slot() -> None:
    clock = Clock()
    b = _breaker(clock, failure_threshold=1, reset_timeout=0)
    b.allow()
    b.record_failure()
    assert b.allow()
    assert not b.allow()
    b.release()
    assert b.allow()


@pytest.mark.parametrize("kw", [{"failure_threshold": 0}, {"reset_timeout": -1}, {"half_open_max_calls": 0}])
def test_rejects_nonsense_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", **kw)  # type: ignore[arg-type]


def test_docs_carry_the_hardening_table() -> None:
    from sidecar.hardening import docs_table
    from tests.support.servers import ROOT

    text = (ROOT / "docs" / "hardening.md").read_text()
    start = text.index("<!-- hardening-table:start -->\n") + len("<!-- hardening-table:start -->\n")
    end = text.index("<!-- hardening-table:end -->")
    assert text[start:end].strip() == docs_table()
