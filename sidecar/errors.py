"""Errors of the sidecar package, and how each one reaches a client.

    SidecarError                      base; never raised itself
    ├── SettingsError                 bad sidecar/upstream settings; carries located Diagnostics
    ├── RequestError                  the client's request is wrong -> 4xx in the DESIGN.md error shape
    │   ├── BadRequest                400 malformed JSON, wrong field types
    │   ├── Unauthenticated           401 missing or unknown API key
    │   ├── NotFound                  404 no route for this path/method
    │   └── PayloadTooLarge           413 body over the configured limit
    ├── DependencyError               a part we rely on failed -> 503 when fail_closed
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

from collections.abc import Sequence

from compiler.diagnostics import Diagnostic, format_all


class SidecarError(Exception):
    """Base of every error the sidecar raises."""


class SettingsError(SidecarError):
    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(format_all(self.diagnostics))


class RequestError(SidecarError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

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


class NotFound(RequestError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class DependencyError(SidecarError):
    """A dependency failed; the fail mode decides whether the request is refused (503)."""


class PolicyEngineError(DependencyError):
    """OPA could not give a decision."""


class CounterStoreError(DependencyError):
    """Redis could not run a counter script."""


class UpstreamError(SidecarError):
    status = 502
    code = "upstream_error"
    type = "upstream_error"

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
