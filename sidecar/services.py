"""What a request needs, opened by the app's cleanup context and kept in the app's typed state:
handlers read `request.app[SERVICES_KEY]`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.background import BackgroundJobs
from sidecar.counters import CounterStore, Usage
from sidecar.decision_engine import DecisionEngine
from sidecar.decision_log import DecisionLog
from sidecar.metrics import Metrics
from sidecar.principal import PrincipalResolver
from sidecar.script_batch import ScriptBatcher
from sidecar.settings import Settings
from sidecar.stats import StatsTags
from sidecar.subject_bound import SubjectWindow
from sidecar.upstream import UpstreamClient

# Called once per settled request with its reservation id, who/what it was and the real usage
# (sidecar/api_v1.py counts it in the usage statistics). Registered at start-up, before any request.
SettledHook = Callable[[str, StatsTags, Usage], Awaitable[None]]


@dataclass
class Services:
    """Everything a request needs, opened by the app's cleanup context."""

    settings: Settings
    metrics: Metrics
    principals: PrincipalResolver
    opa: DecisionEngine  # the `decision_engine` setting picks it (sidecar/decision_engine.py)
    counters: CounterStore
    fallback_counters: CounterStore | None  # fail_open stand-in when Redis fails
    upstream: UpstreamClient
    background: BackgroundJobs  # settlements and refunds, run after the reply is sent
    decision_log: DecisionLog  # opened and closed by the app's cleanup context
    subjects: SubjectWindow  # distinct principals per window (sidecar/subject_bound.py)
    settled_hooks: list[SettledHook] = field(default_factory=list)
    # the counters' Redis client, batching the script calls made after a reply (settle.lua,
    # stats.lua) per event-loop tick; None on Redis Cluster (sidecar/script_batch.py)
    scripts: ScriptBatcher | None = None


SERVICES_KEY: web.AppKey[Services] = web.AppKey("services", Services)
