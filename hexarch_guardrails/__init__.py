"""Hexarch Guardrails SDK: guard Python functions with the policies a Hexarch sidecar enforces.

    from hexarch_guardrails import Guardian, PolicyViolation

    guardian = Guardian()                # HEXARCH_URL, HEXARCH_API_KEY

    @guardian.check("rate_limit")
    def ask(question): ...

Import-compatible with the seed library of the same name; decisions and counters live in the sidecar
(`POST /hexarch/v1/check` and `/settle`), so limits hold across every process of an app.
"""

from hexarch_guardrails.exceptions import (
    GuardrailException,
    OPAConnectionError,
    OPAPolicyError,
    PolicyConfigError,
    PolicyViolation,
    PolicyWarning,
)
from hexarch_guardrails.guardian import Guardian, Reservation

__version__ = "0.1.0"

__all__ = [
    "Guardian",
    "GuardrailException",
    "OPAConnectionError",
    "OPAPolicyError",
    "PolicyConfigError",
    "PolicyViolation",
    "PolicyWarning",
    "Reservation",
    "__version__",
]
