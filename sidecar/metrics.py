"""Prometheus metrics of one sidecar app, `hexarch_<thing>_<unit>`.

Each app owns a CollectorRegistry, so two apps in one process (tests, benchmarks) never clash.
Labels carry outcomes, policy ids, limit ids and upstream names: never keys, prompts or headers.
"""

from __future__ import annotations

import contextlib
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
_FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Model and team labels come from requests and keys: the first LABEL_VALUES_KEPT distinct values of
# each are used as they are, every later one is reported as "other" (docs/operations.md). Routes are
# the configured endpoint paths (bounded by the config), status classes are 1xx..5xx.
LABEL_VALUES_KEPT = 50
OTHER = "other"


class BoundedLabel:
    """The first `kept` distinct values of a label pass; the rest become "other"."""

    def __init__(self, kept: int = LABEL_VALUES_KEPT) -> None:
        self._kept = kept
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) < self._kept:
            self._seen.add(value)
            return value
        return OTHER


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics:
    def __init__(
        self, budget_series_kept: int = BUDGET_SERIES_KEPT, label_values_kept: int = LABEL_VALUES_KEPT
    ) -> None:
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
        # Operator slices: model, route, status class, team (bounded, see BoundedLabel).
        self.model_label = BoundedLabel(label_values_kept)
        self.team_label = BoundedLabel(label_values_kept)
        self.http_requests = Counter(
            "hexarch_http_requests_total",
            "Answered requests by route, model, team and status class",
            ["route", "model", "team", "status_class"],
            registry=r,
        )
        self.cost_usd = Counter(
            "hexarch_cost_usd_total", "Settled cost in USD, by model and team", ["model", "team"], registry=r
        )
        self.settled_tokens = Counter(
            "hexarch_settled_tokens_total",
            "Tokens settled, by model, team and kind (prompt|completion)",
            ["model", "team", "kind"],
            registry=r,
        )
        self.budget_remaining_usd = Gauge(
            "hexarch_budget_remaining_usd",
            "Remaining budget after the last admission, USD",
            ["limit", "subject"],
            registry=r,
        )
        self.budget_utilisation = Gauge(
            "hexarch_budget_utilisation_ratio",
            "Share of the budget spent (0..1) after the last admission",
            ["limit", "subject"],
            registry=r,
        )
        self.budget_warn_threshold = Gauge(
            "hexarch_budget_warn_threshold_ratio",
            "The budget's warning threshold (alert_at_percentage / 100)",
            ["limit", "subject"],
            registry=r,
        )
        self.stream_first_byte_seconds = Histogram(
            "hexarch_stream_first_byte_seconds",
            "Streams: time from the upstream call to the first byte passed to the client",
            ["upstream"],
            buckets=_FIRST_BYTE_BUCKETS,
            registry=r,
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

    def observe_request(self, route: str, model: str | None, team: str | None, status: int) -> None:
        self.child(
            self.http_requests, route, self.model_label(model), self.team_label(team), status_class(status)
        ).inc()

    def observe_settled(
        self, model: str | None, team: str | None, prompt: int, completion: int, micros: int
    ) -> None:
        model_value, team_value = self.model_label(model), self.team_label(team)
        self.child(self.settled_tokens, model_value, team_value, "prompt").inc(prompt)
        self.child(self.settled_tokens, model_value, team_value, "completion").inc(completion)
        self.child(self.cost_usd, model_value, team_value).inc(micros / 1_000_000)

    def observe_first_byte(self, upstream: str, seconds: float) -> None:
        self.child(self.stream_first_byte_seconds, upstream).observe(seconds)

    def set_budget_remaining(
        self,
        limit_id: str,
        subject: str,
        remaining: int,
        limit: int | None = None,
        warn_at: float | None = None,
    ) -> None:
        """The budget gauge of one subject; past `budget_series_kept` subjects the one admitted
        least recently is dropped (`hexarch usage` reads any subject from Redis)."""
        key = (limit_id, subject)
        self._budget_series[key] = None
        self._budget_series.move_to_end(key)
        self.child(self.budget_remaining, limit_id, subject).set(remaining)
        self.child(self.budget_remaining_usd, limit_id, subject).set(remaining / 1_000_000)
        if limit:
            self.child(self.budget_utilisation, limit_id, subject).set(max(0, limit - remaining) / limit)
        if warn_at is not None:
            self.child(self.budget_warn_threshold, limit_id, subject).set(warn_at)
        while len(self._budget_series) > self._budget_series_kept:
            old, _ = self._budget_series.popitem(last=False)
            for gauge in (
                self.budget_remaining,
                self.budget_remaining_usd,
                self.budget_utilisation,
                self.budget_warn_threshold,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*old)
                self._children.pop((id(gauge), old), None)

    def render(self) -> bytes:
        return generate_latest(self.registry)
