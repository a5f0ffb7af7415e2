"""The decision call: `POST {opa}/v1/data/hexarch/decision` over one pooled keep-alive session.

An undefined result (no `result` key), a non-200, a timeout or a refused connection are all a
PolicyEngineError: the caller applies the fail mode. A decision is never guessed.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from sidecar.errors import PolicyEngineError

_JSON_HEADERS = {"Content-Type": "application/json"}


class OpaClient:
    def __init__(self, base_url: str, timeout_ms: int, decision_path: str = "hexarch/decision") -> None:
        self._url = f"{base_url.rstrip('/')}/v1/data/{decision_path.strip('/')}"
        self._health = f"{base_url.rstrip('/')}/health?bundles"
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # One connection pool reused by every request; OPA on loopback answers in well under 1 ms.
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None, "OpaClient.start() was not awaited"
        payload = orjson.dumps({"input": input_doc})
        try:
            async with self._session.post(self._url, data=payload, headers=_JSON_HEADERS) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PolicyEngineError(f"OPA unreachable: {type(exc).__name__}") from exc
        if status != 200:
            raise PolicyEngineError(f"OPA answered HTTP {status}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyEngineError("OPA answered with invalid JSON") from exc
        result = doc.get("result") if isinstance(doc, dict) else None
        if not isinstance(result, dict):
            raise PolicyEngineError("OPA has no decision (undefined result): is the bundle loaded?")
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
