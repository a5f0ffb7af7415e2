"""Exceptions of the Hexarch SDK, with the names of the seed library (`hexarch_guardrails`).

GuardrailException            base of everything the SDK raises
├── PolicyViolation           a policy or limit refused the operation (policy, code, status, retry_after)
├── PolicyWarning             allowed but flagged; also the `warnings` category (enforce=False)
├── OPAConnectionError        the sidecar (or the policy engine behind it) cannot be reached
├── OPAPolicyError            the sidecar answered something that is not a decision
└── PolicyConfigError         the client is set up wrong: unknown policy id, bad key, bad argument
"""

from __future__ import annotations

from typing import Any


class GuardrailException(Exception):
    """Base exception for guardrails."""


class PolicyViolation(GuardrailException):
    """A policy refused the operation. `str(exc)` is the policy's own message."""

    def __init__(
        self,
        message: str,
        *,
        policy: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.policy = policy
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.decision = decision or {}


class PolicyWarning(GuardrailException, UserWarning):
    """Allowed but flagged (or refused while enforce=False): issued through `warnings.warn`."""


class OPAConnectionError(GuardrailException):
    """The sidecar, or the policy engine or counter store behind it, is unavailable."""


class OPAPolicyError(GuardrailException):
    """The sidecar's answer was not a decision (unexpected status or body)."""


class PolicyConfigError(GuardrailException, ValueError):
    """Wrong set-up: unknown policy id, rejected API key, unsupported argument."""
