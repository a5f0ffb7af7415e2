"""Which upstream serves a request, and which model name each upstream of its chain is asked for.

An upstream section lists the models it serves as globs (`models: ["claude-*"]`, matched without
regard to case). A request whose
route does not pin an upstream goes to the first section (in file order) whose globs match its
`model`, else to the default upstream; the chosen section's `fallback` list follows. Along the
chain, an upstream is asked for the request's model when its globs match it (or it lists none and
is the first); otherwise for its own `model` (a fallback to another provider asks for that
provider's model: "Gemini, then Groq, then OpenRouter").
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

from sidecar.ingress import Endpoint
from sidecar.settings import Settings, UpstreamSettings


def serves(upstream: UpstreamSettings, model: str) -> bool:
    """Globs match without regard to case: users write `gigachat` for `GigaChat`."""
    lowered = model.lower()
    return any(fnmatchcase(lowered, glob.lower()) for glob in upstream.models)


def route_by_model(settings: Settings, endpoint: Endpoint, model: Any) -> Endpoint:
    """The endpoint with the upstream chosen by `model` (unchanged when the route pins one)."""
    if endpoint.pinned or not isinstance(model, str) or not model:
        return endpoint
    if endpoint.upstream is not None and serves(endpoint.upstream, model):
        return endpoint
    for upstream in settings.upstreams.values():
        if serves(upstream, model):
            return replace(endpoint, upstream=upstream)
    return endpoint


def model_for(target: UpstreamSettings, requested: str, first: bool) -> str:
    if requested and (serves(target, requested) or (first and not target.models)):
        return requested
    return target.model or requested


def served_models(settings: Settings) -> list[dict[str, Any]]:
    """`/v1/models` entries: every model name and glob the upstream sections declare."""
    seen: dict[str, str] = {}
    for upstream in settings.upstreams.values():
        for name in (*((upstream.model,) if upstream.model else ()), *upstream.models):
            seen.setdefault(name, upstream.name)
    return [{"id": name, "object": "model", "created": 0, "owned_by": owner} for name, owner in seen.items()]


def declares_models(settings: Settings) -> bool:
    return any(u.models for u in settings.upstreams.values())
