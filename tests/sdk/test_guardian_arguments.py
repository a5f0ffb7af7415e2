"""Every Guardian argument does what its name says (or is refused clearly); failures map to the
seed's exception names."""

from __future__ import annotations

import pytest

from hexarch_guardrails import (
    Guardian,
    GuardrailException,
    OPAConnectionError,
    PolicyConfigError,
)
from tests.stack_support import Stack
from tests.support.servers import ROOT, free_port


def test_unsupported_runtime_mode_and_bad_arguments_are_refused() -> None:
    with pytest.raises(PolicyConfigError, match="runtime_mode"):
        Guardian(runtime_mode="rego-bundle")
    with pytest.raises(PolicyConfigError, match="url must start with http"):
        Guardian(url="ftp://example")
    with pytest.raises(PolicyConfigError, match="timeout"):
        Guardian(timeout=0)
    with pytest.raises(PolicyConfigError, match="cannot read policy file"):
        Guardian(policy_file="/nonexistent/hexarch.yaml")


def test_policy_file_checks_ids_before_any_call() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    guardian = Guardian(url=closed, policy_file=str(ROOT / "examples" / "hexarch.yaml"))
    with pytest.raises(PolicyConfigError, match="Unknown policy: nope"):
        guardian.evaluate_policy("nope", {})
    # a known id goes to the sidecar, which is not there
    with pytest.raises(OPAConnectionError) as caught:
        guardian.evaluate_policy("rate_limit", {})
    assert isinstance(caught.value, GuardrailException)
    assert guardian.health_check()["status"] == "unreachable"


def test_url_key_and_opa_url(stack: Stack) -> None:
    stack.flush()
    with pytest.raises(PolicyConfigError, match="invalid API key"):
        Guardian(url=stack.url, api_key="not-a-key").evaluate_policy("rate_limit", {})
    guardian = Guardian(url=stack.sidecars[1].url, api_key="hexarch-demo-alice", opa_url=stack.opa_url)
    decision = guardian.evaluate_policy("rate_limit", {})
    assert decision["allowed"] is True and decision["reservation_id"]
    assert guardian.get_stats()["principal"] == "alice"
    health = guardian.health_check()
    assert health["status"] == "ok" and health["opa"] == "ok" and health["url"] == stack.sidecars[1].url
    assert "hexarch-demo-alice" not in repr(guardian)
