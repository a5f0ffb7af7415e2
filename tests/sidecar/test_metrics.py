"""The budget gauge keeps a bounded number of subjects: the ones admitted most recently."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import BUDGET_SERIES_KEPT, Metrics


def budget_series(metrics: Metrics) -> dict[str, float]:
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == "hexarch_budget_remaining_usd_micros":
            return {s.labels["subject"]: s.value for s in family.samples}
    return {}


def test_budget_gauge_keeps_the_most_recently_admitted_subjects() -> None:
    metrics = Metrics(budget_series_kept=3)
    for i in range(5):
        metrics.set_budget_remaining("budget/0/day", f"user-{i}", 100 - i)
    assert budget_series(metrics) == {"user-2": 98, "user-3": 97, "user-4": 96}
    metrics.set_budget_remaining("budget/0/day", "user-2", 50)  # admitted again: now the newest
    metrics.set_budget_remaining("budget/0/day", "user-5", 95)
    assert budget_series(metrics) == {"user-2": 50, "user-4": 96, "user-5": 95}


def test_the_default_bound_holds_under_many_subjects() -> None:
    metrics = Metrics()
    for i in range(BUDGET_SERIES_KEPT + 250):
        metrics.set_budget_remaining("budget/0/day", f"user-{i}", i)
    series = budget_series(metrics)
    assert len(series) == BUDGET_SERIES_KEPT
    assert f"user-{BUDGET_SERIES_KEPT + 249}" in series and "user-0" not in series
