"""Error responses in the one shape every client gets (DESIGN.md), OpenAI-compatible.

`{"error": {"message", "type", "code", "param", "policy", "details", "decision_id"}}`; SDKs built
for OpenAI surface `message`. Header values are kept to printable ASCII.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from sidecar.errors import DependencyError, Refused, RequestError, SidecarError, UpstreamError

JSON = "application/json"


def error_body(
    message: str,
    *,
    code: str,
    type_: str | None = None,
    param: str | None = None,
    policy: str | None = None,
    details: Mapping[str, Any] | None = None,
    decision_id: str | None = None,
) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or code,
                "code": code,
                "param": param,
                "policy": policy,
                "details": dict(details) if details else {},
                "decision_id": decision_id,
            }
        }
    )


def error_response(
    status: int,
    message: str,
    *,
    code: str,
    type_: str | None = None,
    param: str | None = None,
    policy: str | None = None,
    details: Mapping[str, Any] | None = None,
    decision_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = error_body(
        message,
        code=code,
        type_=type_,
        param=param,
        policy=policy,
        details=details,
        decision_id=decision_id,
    )
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def request_error_response(exc: RequestError, decision_id: str | None = None) -> web.Response:
    return error_response(
        exc.status,
        exc.message,
        code=exc.code,
        type_=exc.type,
        param=exc.param,
        decision_id=decision_id,
        headers=exc.response_headers(),
    )


def _refused(exc: Refused, decision_id: str | None) -> web.Response:
    return error_response(
        exc.status,
        exc.message,
        code=exc.code,
        type_=exc.type,
        param=exc.param,
        policy=exc.policy,
        details=exc.details,
        decision_id=decision_id,
        headers=exc.response_headers(),
    )


def _dependency(exc: DependencyError, decision_id: str | None) -> web.Response:
    return error_response(
        exc.status,
        exc.public_message,
        code=exc.code,
        type_=exc.type,
        decision_id=decision_id,
        headers=exc.response_headers(),
    )


def _upstream(exc: UpstreamError, decision_id: str | None) -> web.Response:
    return upstream_error_response(exc, decision_id, exc.response_headers())


def _other(exc: SidecarError, decision_id: str | None) -> web.Response:
    return error_response(500, "internal error", code=exc.code, type_=exc.type, decision_id=decision_id)


# One responder per branch of the tree in sidecar/errors.py; the nearest class of an error wins.
_RESPONDERS: dict[type[SidecarError], Callable[[Any, str | None], web.Response]] = {
    Refused: _refused,
    RequestError: request_error_response,
    DependencyError: _dependency,
    UpstreamError: _upstream,
    SidecarError: _other,
}


def respond(exc: SidecarError, decision_id: str | None) -> web.Response:
    """The one place a refusal or failure becomes a response (the DESIGN.md error shape)."""
    for cls in type(exc).__mro__:
        responder = _RESPONDERS.get(cls)
        if responder is not None:
            return responder(exc, decision_id)
    return _other(exc, decision_id)


def upstream_error_response(
    exc: UpstreamError, decision_id: str | None, headers: Mapping[str, str] | None = None
) -> web.Response:
    details = (
        {"tried": [{"upstream": name, "error": what} for name, what in exc.tried]} if exc.tried else None
    )
    return error_response(
        exc.status,
        str(exc) or "the model upstream failed",
        code=exc.code,
        type_=exc.type,
        details=details,
        decision_id=decision_id,
        headers=headers,
    )


def header_value(text: str, limit: int = 400) -> str:
    """A header-safe rendering of a message: printable ASCII, bounded length."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:limit]
