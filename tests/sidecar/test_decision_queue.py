"""The decision admission queue (sidecar/opa_client.py) against a real OPA: a bounded number of calls
on the wire, the rest waiting in order, and a refusal at once when the queue is full."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar import opa_client
from sidecar.errors import PolicyEngineError
from sidecar.opa_client import OpaClient
from tests.support.servers import start_opa

REGO = """package hexarch

decision := {"allow": true, "limits": [], "warnings": [], "echo": object.get(input, "n", null)}
"""


async def test_a_full_queue_refuses_at_once_and_the_rest_are_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policy.rego").write_text(REGO)
    server = start_opa([str(tmp_path / "policy.rego")], tmp_path)
    monkeypatch.setattr(opa_client, "DECISION_QUEUE_LIMIT", 10)  # small, to fill it in a test
    client = OpaClient(server.url, 5000)
    await client.start()
    try:
        answers = await asyncio.gather(*(client.decide({"n": n}) for n in range(100)), return_exceptions=True)
        # the first in-flight + queued calls are admitted, the rest refused without waiting
        admitted = opa_client.DECISIONS_IN_FLIGHT + 10
        assert [a["echo"] for a in answers[:admitted] if isinstance(a, dict)] == list(range(admitted))
        refused = answers[admitted:]
        assert all(isinstance(a, PolicyEngineError) and "queue full" in str(a) for a in refused)
        assert (await client.decide({"n": 7}))["echo"] == 7  # the queue drained
    finally:
        await client.close()
        server.stop()
