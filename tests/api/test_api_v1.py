"""`/hexarch/v1/`: check/settle semantics, roles, release of expired reservations, error shapes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.stack_support import ALICE_KEY, OPS_KEY, Stack


def client(stack: Stack, key: str | None = OPS_KEY, which: int = 0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.sidecars[which].url, headers=headers, timeout=10)


def tokens_used(http: httpx.Client) -> int:
    usage = http.get("/hexarch/v1/usage", params={"resource": "tinyllama"}).json()
    return next(lim["used"] for lim in usage["limits"] if lim["id"] == "token_management/0/tph")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error and "details" in error
    return dict(error)


def test_check_then_settle_replaces_the_reservation_with_real_usage(stack: Stack) -> None:
    stack.flush()
    with client(stack, which=0) as a, client(stack, which=1) as b:
        body = {
            "policy_id": "token_management",
            "resource": "tinyllama",
            "tokens": 50,
            "max_output_tokens": 100,
        }
        reply = a.post("/hexarch/v1/check", json=body).json()
        assert reply["allow"] is True and reply["reservation_id"]
        assert tokens_used(b) == 150  # the estimate is reserved, seen from the other process
        settled = b.post(
            "/hexarch/v1/settle",
            json={"reservation_id": reply["reservation_id"], "prompt_tokens": 40, "completion_tokens": 20},
        )
        assert settled.status_code == 200 and settled.json()["already_settled"] is False
        assert tokens_used(a) == 60
        again = a.post(
            "/hexarch/v1/settle",
            json={"reservation_id": reply["reservation_id"], "prompt_tokens": 999, "completion_tokens": 999},
        )
        assert again.status_code == 200 and again.json()["already_settled"] is True
        assert tokens_used(a) == 60


def test_an_unsettled_reservation_is_released_when_it_expires(stack: Stack) -> None:
    stack.flush()
    with client(stack) as http:
        body = {
            "policy_id": "token_management",
            "resource": "tinyllama",
            "tokens": 30,
            "max_output_tokens": 70,
        }
        reply = http.post("/hexarch/v1/check", json={**body, "ttl_seconds": 1}).json()
        assert reply["allow"] is True
        assert tokens_used(http) == 100
        deadline = time.monotonic() + 15
        while tokens_used(http) != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tokens_used(http) == 0
        late = http.post("/hexarch/v1/settle", json={"reservation_id": reply["reservation_id"]})
        assert_error(late, 410, "reservation_expired")
        stats = http.get("/hexarch/v1/stats").json()["today"]
        assert stats["requests"] == 1 and stats["tokens"] == 0  # the request stays counted


def test_rate_limit_refusal_in_check_reply(stack: Stack) -> None:
    stack.flush()
    with client(stack) as http:
        replies = [http.post("/hexarch/v1/check", json={"policy_id": "rate_limit"}).json() for _ in range(8)]
    allowed = [r for r in replies if r["allow"]]
    refused = [r for r in replies if not r["allow"]]
    assert len(allowed) == 6 and len(refused) == 2
    for r in refused:
        assert r["status"] == 429 and r["code"] == "rate_limit_exceeded" and r["policy"] == "rate_limit"
        assert r["retry_after"] >= 1 and r["reservation_id"] is None
        assert r["error"]["details"]["limit"] == 6


def test_violations_and_unknown_policy(stack: Stack) -> None:
    stack.flush()
    with client(stack) as http:
        denied = http.post(
            "/hexarch/v1/check", json={"policy_id": "quality_control", "params": {"temperature": 1.5}}
        ).json()
        assert denied["allow"] is False and denied["status"] == 400
        assert denied["message"] == "temperature 1.5 is above the maximum 1.0"
        assert denied["violations"][0]["policy"] == "quality_control"
        # other policies' violations do not refuse a check of this one
        other = http.post(
            "/hexarch/v1/check", json={"policy_id": "rate_limit", "params": {"temperature": 1.5}}
        )
        assert other.json()["allow"] is True
        assert_error(http.post("/hexarch/v1/check", json={"policy_id": "nope"}), 404, "unknown_policy")


def test_reading_others_needs_admin(stack: Stack) -> None:
    stack.flush()
    with client(stack, ALICE_KEY) as alice, client(stack) as ops:
        assert alice.get("/hexarch/v1/usage").status_code == 200  # her own
        assert_error(alice.get("/hexarch/v1/usage", params={"principal": "ops-bot"}), 403, "forbidden")
        assert_error(alice.get("/hexarch/v1/stats", params={"principal": "ops-bot"}), 403, "forbidden")
        assert_error(
            alice.post("/hexarch/v1/check", json={"policy_id": "rate_limit", "user": "bob"}), 403, "forbidden"
        )
        # an admin reads anyone's; alice's stats show her own figures only
        assert ops.get("/hexarch/v1/usage", params={"principal": "alice", "team": "ml"}).status_code == 200
        mine = alice.post("/hexarch/v1/check", json={"policy_id": "rate_limit"}).json()
        ops.post("/hexarch/v1/check", json={"policy_id": "rate_limit"})
        stolen = ops.post("/hexarch/v1/settle", json={"reservation_id": mine["reservation_id"]})
        assert stolen.status_code == 200  # admins may settle for others
        own = alice.get("/hexarch/v1/stats").json()
        assert own["principal"] == "alice" and own["today"]["requests"] == 1
        assert set(own["today"]["by_principal"]) == {"alice"} and "by_team" not in own["today"]
    with client(stack, None) as anonymous:
        assert_error(anonymous.get("/hexarch/v1/stats"), 401, "invalid_api_key")
    with client(stack, "wrong-key") as wrong:
        assert_error(wrong.post("/hexarch/v1/check", json={}), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[]", None),
        (b'{"tokens": -1}', "tokens"),
        (b'{"tokens": true}', "tokens"),
        (b'{"params": []}', "params"),
        (b'{"policy_id": 7}', "policy_id"),
        (b'{"ttl_seconds": 100000}', "ttl_seconds"),
    ],
)
def test_bad_check_bodies_are_400_naming_the_field(stack: Stack, body: bytes, param: str | None) -> None:
    with client(stack) as http:
        error = assert_error(
            http.post("/hexarch/v1/check", content=body, headers={"Content-Type": "application/json"}),
            400,
            "invalid_request",
        )
        assert error["param"] == param


def test_settle_errors(stack: Stack) -> None:
    with client(stack) as http:
        assert_error(http.post("/hexarch/v1/settle", json={}), 400, "invalid_request")
        assert_error(
            http.post("/hexarch/v1/settle", json={"reservation_id": "x", "outcome": "maybe"}),
            400,
            "invalid_request",
        )
        assert_error(
            http.post("/hexarch/v1/settle", json={"reservation_id": "x"}), 404, "reservation_not_found"
        )
        assert_error(http.get("/hexarch/v1/settle"), 405, "method_not_allowed")


def test_policies_and_openapi(stack: Stack) -> None:
    with client(stack) as http:
        policies = http.get("/hexarch/v1/policies").json()
        assert len(policies["revision"]) >= 12 and policies["loaded_at"]
        assert "rate_limit" in [p["id"] for p in policies["policies"]]
        assert policies["opa"]["in_sync"] is True
        assert policies["revision"] in policies["opa"]["bundles"].values()
        doc = httpx.get(f"{stack.url}/hexarch/v1/openapi.json").json()
        assert doc["openapi"].startswith("3.1")
        assert set(doc["paths"]) == {
            f"/hexarch/v1/{name}"
            for name in ("check", "settle", "usage", "stats", "policies", "openapi.json")
        }


def test_every_api_key_has_a_ttl_and_its_name_from_redis_keys(stack: Stack) -> None:
    import redis

    from sidecar import redis_keys

    stack.flush()
    with client(stack) as http:
        settled = http.post("/hexarch/v1/check", json={"policy_id": "rate_limit"}).json()["reservation_id"]
        http.post("/hexarch/v1/settle", json={"reservation_id": settled})
        open_one = http.post("/hexarch/v1/check", json={"policy_id": "rate_limit"}).json()["reservation_id"]
    db = redis.Redis.from_url(stack.redis_url)
    keys = {k.decode() for k in db.scan_iter(match="hexarch:{~api}:*")}
    assert redis_keys.api_ticket_key(open_one) in keys and redis_keys.api_ticket_index() in keys
    assert redis_keys.stats_marker_key(settled) in keys
    assert redis_keys.api_ticket_key(settled) not in keys  # dropped when settled
    for key in keys:
        assert db.ttl(key) > 0, key
