"""Errors of the injector package.

    InjectorError                 base; never raised itself
    ├── ConfigError               bad injector config file; `hexarch injector` exits 1 with the message
    └── Refusal                   the webhook refuses; carries the HTTP/admission status and a code
        ├── BadReview             400 the body is not an AdmissionReview v1 (HTTP error, DESIGN shape)
        └── MalformedPod          400 the pod cannot be injected (AdmissionResponse allowed=false)

Each refusal is mapped to a response once, in sidecar/injector/server.py.
"""

from __future__ import annotations


class InjectorError(Exception):
    """Base of every error the injector raises."""


class ConfigError(InjectorError):
    """The injector's config file is missing, unreadable or has a bad key."""


class Refusal(InjectorError):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadReview(Refusal):
    status = 400
    code = "invalid_admission_review"


class MalformedPod(Refusal):
    status = 400
    code = "malformed_pod"
