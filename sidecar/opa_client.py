"""The decision call: `POST {opa}/v1/data/hexarch/decision` over pooled keep-alive connections.

Both the decision and the probes go through aiohttp's client (no hand-written HTTP): decisions on
their own session, whose connector holds at most `DECISIONS_IN_FLIGHT` kept-alive connections, with
the request's framing fixed up front (the body pre-serialised by orjson, no automatic headers) so
each call does no more than it needs.

An undefined result (no `result` key), a non-200, a timeout or a refused connection are all a
PolicyEngineError: the caller applies the fail mode. A decision is never guessed.

Admission queue: at most `DECISIONS_IN_FLIGHT` decision calls are on the wire to OPA at once; the
others wait their turn in arrival order (an asyncio semaphore in the client), and the decision
timeout (`opa.timeout_ms`) counts only the call itself, not the wait. OPA evaluates with few
threads (GOMAXPROCS, sidecar/stack.py): sending it hundreds of queries at once only makes every one
of them slow, and a burst of 400 requests on a fresh stack then missed the timeout (503s); queued
here, each call is answered in about the time of one. At most `DECISION_QUEUE_LIMIT` requests wait;
beyond that a request is refused at once like an unreachable OPA (`503 policy_engine_unavailable`
in fail_closed), so a flood cannot grow the queue, and memory, without bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from sidecar.errors import PolicyEngineError

DECISIONS_IN_FLIGHT = 4
DECISION_QUEUE_LIMIT = 4096
_JSON = {"Content-Type": "application/json"}


class OpaClient:
    def __init__(self, base_url: str, timeout_ms: int, decision_path: str = "hexarch/decision") -> None:
        self._url = f"{base_url.rstrip('/')}/v1/data/{decision_path.strip('/')}"
        self._health = f"{base_url.rstrip('/')}/health?bundles"
        self._bundles = f"{base_url.rstrip('/')}/v1/data/system/bundles"
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._session: aiohttp.ClientSession | None = None  # probes
        self._decisions: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(DECISIONS_IN_FLIGHT)
        self._pending = 0  # decisions in flight or waiting for a slot

    async def start(self) -> None:
        # One connection pool reused by every request; OPA on loopback answers in well under 1 ms.
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._decisions = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=DECISIONS_IN_FLIGHT, keepalive_timeout=30, ttl_dns_cache=300
            ),
            timeout=self._timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # OPA sets none: no cookie filtering per call
        )

    async def close(self) -> None:
        for session in (self._decisions, self._session):
            if session is not None:
                await session.close()
        self._decisions = self._session = None

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]:
        if self._pending >= DECISIONS_IN_FLIGHT + DECISION_QUEUE_LIMIT:
            raise PolicyEngineError(f"decision queue full ({DECISION_QUEUE_LIMIT} requests waiting for OPA)")
        self._pending += 1
        try:
            async with self._slots:  # the wait for a slot is not part of the decision timeout
                status, raw = await self._post(orjson.dumps({"input": input_doc}))
        finally:
            self._pending -= 1
        if status != 200:
            raise PolicyEngineError(f"OPA answered HTTP {status}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyEngineError("OPA answered with invalid JSON") from exc
        result = doc.get("result") if isinstance(doc, dict) else None
        if not isinstance(result, dict):
            raise PolicyEngineError("OPA has no decision (undefined result): is the bundle loaded?")
        opa_id = doc.get("decision_id")
        if isinstance(opa_id, str):
            # OPA names each decision when its decision logging is on: the decision log links it.
            result["opa_decision_id"] = opa_id
        return result

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        session = self._decisions
        assert session is not None, "OpaClient.start() was not awaited"
        for attempt in (1, 2):
            try:
                async with session.post(self._url, data=body, headers=_JSON) as resp:
                    return resp.status, await resp.read()
            except aiohttp.ServerDisconnectedError as exc:
                # A kept-alive connection OPA closed while it was idle (OPA restarted): a decision
                # query has no side effects, so it is sent once more, on a new connection.
                if attempt == 2:
                    raise PolicyEngineError(f"OPA unreachable: {exc!r}") from exc
            except TimeoutError as exc:
                raise PolicyEngineError(f"OPA timed out after {self._timeout.total} s") from exc
            except aiohttp.ClientError as exc:
                raise PolicyEngineError(f"OPA unreachable: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def ready(self) -> bool:
        """OPA is up, has activated its bundles, and the decision document is defined."""
        if self._session is None:
            return False
        try:
            async with self._session.get(self._health) as resp:
                if resp.status != 200:
                    return False
            async with self._session.get(self._url) as resp:
                if resp.status != 200:
                    return False
                doc = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return False
        return isinstance(doc, dict) and isinstance(doc.get("result"), dict)

    async def bundle_revisions(self) -> dict[str, str]:
        """The revision of each bundle OPA has activated, by bundle name ({} when OPA does not say)."""
        if self._session is None:
            return {}
        try:
            async with self._session.get(self._bundles) as resp:
                if resp.status != 200:
                    return {}
                doc = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return {}
        bundles = doc.get("result") if isinstance(doc, dict) else None
        if not isinstance(bundles, dict):
            return {}
        out: dict[str, str] = {}
        for name, info in bundles.items():
            manifest = info.get("manifest") if isinstance(info, dict) else None
            if isinstance(manifest, dict) and isinstance(manifest.get("revision"), str):
                out[str(name)] = manifest["revision"]
        return out
