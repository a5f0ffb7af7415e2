"""The Grafana dashboard and the Prometheus alert rules parse, and query only metrics (and labels)
that sidecar/metrics.py defines. promtool is not installed here: this is the structural check."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.metrics_core import Metric

from sidecar.metrics import Metrics, status_class
from tests.support.servers import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "hexarch-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
_NAME = re.compile(r"\bhexarch_[a-zA-Z0-9_]+")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def series() -> dict[str, set[str]]:
    """Every series name the sidecar exports -> its label names."""
    out: dict[str, set[str]] = {}
    metrics = Metrics()
    family: Metric
    for family in metrics.registry.collect():
        collector = metrics.registry._names_to_collectors[family.name + _SUFFIXES[family.type][0]]
        labels = set(getattr(collector, "_labelnames", ()))
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def check_expr(expr: str, known: dict[str, set[str]]) -> None:
    names = set(_NAME.findall(expr))
    assert names, f"no hexarch metric in {expr!r}"
    unknown = names - set(known)
    assert not unknown, f"{expr!r} queries metrics sidecar/metrics.py does not define: {sorted(unknown)}"
    labels = set().union(*(known[n] for n in names))
    for group in _BY.findall(expr):
        used = {label.strip() for label in group.split(",") if label.strip()}
        assert used <= labels, f"{expr!r} groups by labels the metrics lack: {sorted(used - labels)}"


def test_dashboard_queries_only_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = series()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        check_expr(expr, known)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for word in ("model", "team", "route", "budget", "first byte"):
        assert word in titles


def test_alert_rules_parse_and_cover_the_operators_questions() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    known = series()
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        check_expr(rule["expr"], known)
    exprs = " ".join(rule["expr"] for rule in rules)
    for metric in (
        "hexarch_budget_warn_threshold_ratio",
        "hexarch_opa_errors_total",
        "hexarch_redis_errors_total",
        "hexarch_fail_open_total",
    ):
        assert metric in exprs


def test_a_made_up_metric_is_caught() -> None:
    known = series()
    try:
        check_expr("rate(hexarch_not_a_metric_total[5m])", known)
    except AssertionError as exc:
        assert "hexarch_not_a_metric_total" in str(exc)
    else:
        raise AssertionError("an unknown metric passed")


def test_label_values_are_bounded() -> None:
    metrics = Metrics(label_values_kept=2)
    for model in ("a", "b", "c", "d"):
        metrics.observe_request("/v1/chat/completions", model, "ml", 200)
    text = metrics.render().decode()
    assert 'model="a"' in text and 'model="b"' in text and 'model="other"' in text
    assert 'model="c"' not in text and 'model="d"' not in text
    assert status_class(429) == "4xx" and status_class(999) == "other"


def test_budget_gauges_in_usd() -> None:
    metrics = Metrics()
    metrics.set_budget_remaining("api_budget/0/month", "tinyllama", 25_000_000, 100_000_000, 0.75)
    text = metrics.render().decode()
    assert 'hexarch_budget_remaining_usd{limit="api_budget/0/month",subject="tinyllama"} 25.0' in text
    assert 'hexarch_budget_utilisation_ratio{limit="api_budget/0/month",subject="tinyllama"} 0.75' in text
    assert 'hexarch_budget_warn_threshold_ratio{limit="api_budget/0/month",subject="tinyllama"} 0.75' in text
