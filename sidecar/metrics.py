"""Prometheus metrics of one sidecar app, `hexarch_<thing>_<unit>`.

Each app owns a CollectorRegistry, so two apps in one process (tests, benchmarks) never clash.
Labels carry outcomes, policy ids, limit ids and upstream names: never keys, prompts or headers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Decisions take ~0.5 ms on loopback; the buckets resolve that range and the OPA timeout.
_DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_M = TypeVar("_M", bound=MetricWrapperBase)
# Budget series are per subject (principal or team): keep the most recently admitted ones only, so
# a million users cannot grow the sidecar's memory or the scrape without bound.
BUDGET_SERIES_KEPT = 1000
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, budget_series_kept: int = BUDGET_SERIES_KEPT) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._budget_series: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._budget_series_kept = budget_series_kept
        r = self.registry
        self.requests = Counter(
            "hexarch_requests_total",
            "Requests by outcome and the policy that decided them",
            ["outcome", "policy"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "hexarch_decision_duration_seconds",
            "Time to get a decision from OPA",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "hexarch_upstream_duration_seconds",
            "Time of the upstream call, to the last byte",
            ["upstream"],
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "hexarch_tokens_total", "Tokens settled, by kind (prompt|completion)", ["kind"], registry=r
        )
        self.cost = Counter("hexarch_cost_usd_micros_total", "Settled cost in micro-USD", registry=r)
        self.budget_remaining = Gauge(
            "hexarch_budget_remaining_usd_micros",
            "Remaining budget after the last admission",
            ["limit", "subject"],
            registry=r,
        )
        self.opa_errors = Counter("hexarch_opa_errors_total", "Failed decision calls", registry=r)
        self.redis_errors = Counter("hexarch_redis_errors_total", "Failed counter store calls", registry=r)
        self.fail_open = Counter(
            "hexarch_fail_open_total",
            "Requests let through by fail_open, by dependency",
            ["dependency"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "hexarch_upstream_errors_total", "Failed upstream attempts", ["upstream", "reason"], registry=r
        )
        self.content_filter = Counter(
            "hexarch_content_filter_total",
            "Replies a provider stopped for safety (sent as finish_reason content_filter)",
            ["upstream"],
            registry=r,
        )
        self.upstream_breaker_state = Gauge(
            "hexarch_upstream_breaker_state",
            "Circuit of each upstream: 0 closed, 1 open, 2 half-open",
            ["upstream"],
            registry=r,
        )
        self.upstream_breaker_transitions = Counter(
            "hexarch_upstream_breaker_transitions_total",
            "Circuit transitions of each upstream, by the state entered",
            ["upstream", "state"],
            registry=r,
        )
        self.warnings = Counter(
            "hexarch_warnings_total", "Warnings sent with allowed requests", ["policy"], registry=r
        )
        self.breaker_open = Gauge(
            "hexarch_breaker_open",
            "1 while the circuit breaker of a dependency (opa|redis) is open or half-open",
            ["dependency"],
            registry=r,
        )
        self.breaker_refused = Counter(
            "hexarch_breaker_refused_total",
            "Calls answered without trying the dependency because its breaker was open",
            ["dependency"],
            registry=r,
        )
        self.subjects_refused = Counter(
            "hexarch_subjects_refused_total",
            "Requests refused because too many distinct principals arrived in one window",
            registry=r,
        )
        self.reconciled = Counter(
            "hexarch_reconciled_total",
            "fail_open admissions replayed into Redis after an outage (written|dropped)",
            ["result"],
            registry=r,
        )
        self.overloaded = Counter(
            "hexarch_overloaded_total",
            "Requests refused because max_inflight_requests were in flight",
            registry=r,
        )
        self.bundle_reloads = Counter(
            "hexarch_bundle_reloads_total", "Bundle rebuilds by result", ["result"], registry=r
        )

    def child(self, metric: _M, *values: str) -> _M:
        """`metric.labels(*values)`, remembered: `labels` validates and locks on every call, and the
        hot path asks for the same few children on every request. Holds no more children than the
        metric itself keeps."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def set_budget_remaining(self, limit_id: str, subject: str, remaining: int) -> None:
        """The budget gauge of one subject; past `budget_series_kept` subjects the one admitted
        least recently is dropped (`hexarch usage` reads any subject from Redis)."""
        key = (limit_id, subject)
        self._budget_series[key] = None
        self._budget_series.move_to_end(key)
        self.child(self.budget_remaining, limit_id, subject).set(remaining)
        while len(self._budget_series) > self._budget_series_kept:
            old, _ = self._budget_series.popitem(last=False)
            self.budget_remaining.remove(*old)
            self._children.pop((id(self.budget_remaining), old), None)

    def render(self) -> bytes:
        return generate_latest(self.registry)
