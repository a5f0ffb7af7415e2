"""The decision call: `POST {opa}/v1/data/hexarch/decision` over pooled keep-alive connections.

The decision goes through `sidecar.opa_http` (a minimal HTTP/1.1 client for this one URL, about
0.15 ms cheaper per call than aiohttp's); the readiness probe, off the hot path, through aiohttp.

An undefined result (no `result` key), a non-200, a timeout or a refused connection are all a
PolicyEngineError: the caller applies the fail mode. A decision is never guessed.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from sidecar.errors import PolicyEngineError
from sidecar.opa_http import HttpError, JsonPoster


class OpaClient:
    def __init__(self, base_url: str, timeout_ms: int, decision_path: str = "hexarch/decision") -> None:
        self._url = f"{base_url.rstrip('/')}/v1/data/{decision_path.strip('/')}"
        self._health = f"{base_url.rstrip('/')}/health?bundles"
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._session: aiohttp.ClientSession | None = None
        self._timeout_s = timeout_ms / 1000
        self._poster: JsonPoster | None = None

    async def start(self) -> None:
        # One connection pool reused by every request; OPA on loopback answers in well under 1 ms.
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode()
        )
        self._poster = JsonPoster(self._url, self._timeout_s)

    async def close(self) -> None:
        if self._poster is not None:
            await self._poster.close()
            self._poster = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]:
        assert self._poster is not None, "OpaClient.start() was not awaited"
        try:
            status, raw = await self._poster.post(orjson.dumps({"input": input_doc}))
        except HttpError as exc:
            raise PolicyEngineError(f"OPA unreachable: {exc}") from exc
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
