"""Errors of the sidecar package, and how each one reaches a client.

Every refusal and failure of a request is one of these exceptions, carrying its status, code and
outcome; sidecar/boundary.py turns it into the DESIGN.md error shape once, at the boundary
(sidecar/errors_http.py `respond`, dispatched by a registry over the classes below).

    SidecarError                      base; never raised itself
    ├── SettingsError                 bad sidecar/upstream settings; carries located Diagnostics
    ├── Refused                       the policy or a limit refused the request (status from it)
    │   ├── PolicyDenied              403/400/428... a violation of the decision
    │   └── LimitExceeded             429 rate or budget, 400 max_tokens above a per-request cap
    ├── RequestError                  the client's request is wrong -> 4xx in the DESIGN.md error shape
    │   ├── BadRequest                400 malformed JSON, wrong field types
    │   ├── Unauthenticated           401 missing or unknown API key
    │   ├── NotFound                  404 no route for this path/method
    │   └── PayloadTooLarge           413 body over the configured limit
    ├── DependencyError               a part we rely on failed -> 503 when fail_closed (the
    │   │                             pipeline's one fail-open decision swallows it otherwise)
    │   ├── PolicyEngineError         OPA unreachable, timed out, non-200, or undefined result
    │   └── CounterStoreError         Redis unreachable, timed out, script error
    └── UpstreamError                 the model upstream failed after retries/fallbacks
        ├── UpstreamUnavailable       502 connection refused/reset, 5xx, 429, open circuit
        ├── UpstreamTimeout           504
        └── ProviderRefused           the provider refused the request (its 4xx): status mapped,
                                      the provider's own message kept

Library exceptions (aiohttp.ClientError, redis.RedisError, asyncio.TimeoutError, json errors) are
converted at the module that calls the library, with `raise X(...) from exc`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compiler.diagnostics import Diagnostic, format_all


class SidecarError(Exception):
    """Base of every error the sidecar raises."""

    status = 500
    code = "internal_error"
    type = "internal_error"
    outcome = "error"  # the decision log's and hexarch_requests_total's outcome
    policy: str | None = None
    extra_headers: Mapping[str, str] | None = None  # sent with the error response

    def with_headers(self, headers: Mapping[str, str]) -> SidecarError:
        self.extra_headers = headers
        return self

    def response_headers(self) -> dict[str, str]:
        return dict(self.extra_headers or {})


class Refused(SidecarError):
    """The policy or a limit refused the request; the message and details come from the decision."""

    outcome = "denied"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type_: str | None = None,
        param: str | None = None,
        policy: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_ or code
        self.param = param
        self.policy = policy
        self.details = dict(details or {})
        self.extra_headers = headers


class PolicyDenied(Refused):
    outcome = "denied"


class LimitExceeded(Refused):
    outcome = "limited"


class SettingsError(SidecarError):
    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(format_all(self.diagnostics))


class RequestError(SidecarError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    outcome = "bad_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(RequestError):
    status = 400


class Unauthenticated(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    outcome = "unauthenticated"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "WWW-Authenticate": 'Bearer realm="hexarch"'}


class NotFound(RequestError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class DependencyError(SidecarError):
    """A dependency failed; the fail mode decides whether the request is refused (503).

    The client sees `public_message`, never the exception's own text (addresses, library errors).
    """

    status = 503
    type = "service_unavailable"
    outcome = "unavailable"
    dependency = ""
    public_message = "a dependency is unavailable; the request was refused (fail_closed)"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "Retry-After": "1"}


class PolicyEngineError(DependencyError):
    """OPA could not give a decision."""

    code = "policy_engine_unavailable"
    dependency = "opa"
    public_message = "the policy engine is unavailable; the request was refused (fail_closed)"


class CounterStoreError(DependencyError):
    """Redis could not run a counter script."""

    code = "counter_store_unavailable"
    dependency = "redis"
    public_message = "the counter store is unavailable; the request was refused (fail_closed)"


class UpstreamError(SidecarError):
    status = 502
    code = "upstream_error"
    type = "upstream_error"
    outcome = "upstream_error"

    def __init__(self, message: str = "", *, tried: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried  # (upstream, what went wrong) of every attempt, in order


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ProviderRefused(UpstreamError):
    """A provider answered the translated request with a 4xx: the client learns why, in its words.

    400/404/413/422 reach the client as they are (its request was wrong); the provider refusing
    our own credentials (401/403) is a 502, since the client cannot fix it.
    """

    def __init__(self, provider_status: int, message: str) -> None:
        super().__init__(message)
        self.provider_status = provider_status
        if provider_status in (400, 404, 413):
            self.status = provider_status
        elif provider_status == 422:
            self.status = 400
        else:
            self.status = 502
        self.code = f"upstream_http_{provider_status}"
        self.type = "invalid_request_error" if self.status < 500 else "upstream_error"
