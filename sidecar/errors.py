"""Errors of the sidecar package, and how each one reaches a client.

    SidecarError                      base; never raised itself
    ├── SettingsError                 bad sidecar/upstream settings; carries located Diagnostics
    ├── RequestError                  the client's request is wrong -> 4xx in the DESIGN.md error shape
    │   ├── BadRequest                400 malformed JSON, wrong field types
    │   ├── Unauthenticated           401 missing or unknown API key
    │   ├── Forbidden                 403 the principal lacks the role (e.g. admin for others' usage)
    │   ├── NotFound                  404 no route for this path/method, unknown policy/reservation
    │   ├── Gone                      410 a reservation released when its settle deadline passed
    │   └── PayloadTooLarge           413 body over the configured limit
    ├── DependencyError               a part we rely on failed -> 503 when fail_closed
    │   ├── PolicyEngineError         OPA unreachable, timed out, non-200, or undefined result
    │   └── CounterStoreError         Redis unreachable, timed out, script error
    └── UpstreamError                 the model upstream failed after retries/fallbacks
        ├── UpstreamUnavailable       502 connection refused/reset, 5xx
        └── UpstreamTimeout           504

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


class Forbidden(RequestError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RequestError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Gone(RequestError):
    status = 410
    type = "invalid_request_error"
    code = "gone"


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


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
