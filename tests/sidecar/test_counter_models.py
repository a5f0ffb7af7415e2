"""Decision entries -> Limit, window geometry, and the in-process stand-in's memory bound."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.counters import Admission, Limit, LimitState, window_geometry
from sidecar.errors import PolicyEngineError
from sidecar.local_counters import LocalCounters
from tests.sidecar.counter_support import FakeClock, rate, subject

RPM = {
    "id": "rate_limit/0/rpm",
    "policy": "rate_limit",
    "unit": "requests",
    "scope": "global",
    "subject": "tinyllama",
    "window_seconds": 60,
    "limit": 30,
    "cost": 1,
    "action": "block",
}
BUDGET = {
    "id": "api_budget/0/month",
    "unit": "usd_micros",
    "period": "month",
    "limit": 100000000,
    "cost": 1234,
    "warn_at": 0.75,
    "action": "block",
    "subject": "tinyllama",
    "scope": "global",
    "policy": "api_budget",
}


def test_design_examples_parse() -> None:
    rpm = Limit.from_decision(RPM)
    assert (rpm.unit, rpm.window_seconds, rpm.limit, rpm.cost, rpm.warn_at) == ("requests", 60, 30, 1, None)
    money = Limit.from_decision(BUDGET)
    assert (money.period, money.warn_at, money.window_seconds) == ("month", 0.75, None)
    cap = Limit.from_decision({**RPM, "unit": "tokens", "window_seconds": 0, "cost": 128.0, "rule": 3})
    assert cap.is_request_cap and cap.cost == 128


@pytest.mark.parametrize(
    "change",
    [
        {"unit": "dollars"},
        {"action": "maybe"},
        {"limit": -1},
        {"limit": 1.5},
        {"cost": "1"},
        {"cost": True},
        {"id": ""},
        {"window_seconds": None},
        {"window_seconds": 0},  # requests need a window
        {"warn_at": 1.5},
        {"warn_at": "0.5"},
        {"subject": None},
    ],
)
def test_malformed_entries_are_policy_engine_errors(change: dict[str, Any]) -> None:
    with pytest.raises(PolicyEngineError):
        Limit.from_decision({**RPM, **change})


def test_budget_needs_a_calendar_period() -> None:
    with pytest.raises(PolicyEngineError):
        Limit.from_decision({**BUDGET, "period": "week"})
    with pytest.raises(PolicyEngineError):
        Limit.from_decision([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("window", "bucket_ms", "buckets"),
    [(60, 1000, 60), (3600, 60_000, 60), (86_400, 1_440_000, 60), (1, 20, 50), (7, 125, 56)],
)
def test_buckets_divide_the_window(window: int, bucket_ms: int, buckets: int) -> None:
    assert window_geometry(window) == (bucket_ms, buckets)
    assert bucket_ms * buckets == window * 1000


def test_warnings_property_lists_warning_states() -> None:
    lim = rate("x", 10)
    quiet = LimitState(lim, 1, 9, 60, None, False)
    loud = LimitState(lim, 9, 1, 60, None, True)
    assert Admission(True, "r", (quiet, loud), None).warnings == (loud,)


async def test_local_store_stays_bounded_and_expires_keys() -> None:
    clock = FakeClock()
    local = LocalCounters(clock=clock, max_keys=50)
    for i in range(200):
        assert (await local.admit(f"r{i}", [rate(subject(), 1)])).admitted
    assert len(local._values) <= 50 + 2  # swept on the next admit: at most one call's keys over
    clock.advance(901)  # past the window keys' and the reservation records' TTLs
    await local.admit("late", [])
    assert local._values == {}


async def test_limits_built_by_hand_without_a_window_or_period_are_refused() -> None:
    local = LocalCounters()
    with pytest.raises(PolicyEngineError):
        await local.admit("a", [Limit("r/0/rpm", "r", "requests", "global", "x", 1, 1, "block")])
    with pytest.raises(PolicyEngineError):
        await local.admit("b", [Limit("b/0/month", "b", "usd_micros", "global", "x", 1, 1, "block")])
    with pytest.raises(PolicyEngineError):
        await local.admit("c", [rate("x", 1), rate("x", 2)])  # the same limit twice for one subject
