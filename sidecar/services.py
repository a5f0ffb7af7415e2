"""What a request needs, opened by the app's cleanup context and kept in the app's typed state:
handlers read `request.app[SERVICES_KEY]`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from sidecar.background import BackgroundJobs
from sidecar.counters import CounterStore
from sidecar.decision_log import DecisionLog
from sidecar.metrics import Metrics
from sidecar.opa_client import OpaClient
from sidecar.principal import PrincipalResolver
from sidecar.settings import Settings
from sidecar.subject_bound import SubjectWindow
from sidecar.upstream import UpstreamClient


@dataclass
class Services:
    """Everything a request needs, opened by the app's cleanup context."""

    settings: Settings
    metrics: Metrics
    principals: PrincipalResolver
    opa: OpaClient
    counters: CounterStore
    fallback_counters: CounterStore | None  # fail_open stand-in when Redis fails
    upstream: UpstreamClient
    background: BackgroundJobs  # settlements and refunds, run after the reply is sent
    decision_log: DecisionLog  # opened and closed by the app's cleanup context
    subjects: SubjectWindow  # distinct principals per window (sidecar/subject_bound.py)


SERVICES_KEY: web.AppKey[Services] = web.AppKey("services", Services)
