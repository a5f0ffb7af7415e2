"""schemathesis against the OpenAPI document the sidecar serves: no 500, no reply that violates it.

Every operation gets a bounded number of generated cases, valid and invalid, sent as the admin
principal to the first of two running sidecars (real OPA, real Redis)."""

from __future__ import annotations

import itertools

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.stack_support import OPS_KEY, Stack

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 30  # per operation and mode (valid / invalid data): ~20 s in all


def test_api_conforms_to_its_openapi_document(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.url}/hexarch/v1/openapi.json")
    schema.config.base_url = stack.url
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/hexarch/v1/check", "/hexarch/v1/settle", "/hexarch/v1/stats"}
    calls = 0
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(headers={"Authorization": f"Bearer {OPS_KEY}"}, checks=CHECKS)

        run()
    assert calls >= len(operations) + 4  # check, settle, usage and stats also got invalid data
