"""Who is calling: an API key, trusted headers from the app next door, or the configured anonymous.

Keys are held only as sha256 digests. A presented key is hashed once and compared against every
configured digest with `hmac.compare_digest`, without stopping at the first match, so the time taken
does not depend on which key (or how much of one) matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.errors import BadRequest, Unauthenticated
from sidecar.settings import ApiKey, Settings


@dataclass(frozen=True)
class Principal:
    id: str
    team: str | None
    roles: tuple[str, ...]
    tier: str | None
    authenticated: bool
    via: str  # "api_key" | "trusted_headers" | "anonymous"

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "roles": list(self.roles),
            "tier": self.tier,
            "authenticated": self.authenticated,
        }


class PrincipalResolver:
    def __init__(self, settings: Settings) -> None:
        self._keys: tuple[ApiKey, ...] = settings.api_keys
        self._principals = {
            k.digest: Principal(k.id, k.team, k.roles, k.tier, True, "api_key") for k in self._keys
        }
        self._trusted = settings.trusted_headers
        self._max_id = settings.hardening.max_principal_id_bytes
        anon = settings.anonymous
        self._anonymous = (
            Principal(anon.id, anon.team, anon.roles, anon.tier, False, "anonymous") if anon.enabled else None
        )

    def _match(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: bytes | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.digest
        return self._principals[found] if found is not None else None

    def resolve(self, headers: Mapping[str, str]) -> Principal:
        """The principal of a request, or Unauthenticated (401). Never reveals which part failed."""
        # With no keys configured, keys are not in use: a placeholder some SDKs insist on sending
        # (`api_key="unused"`) must not turn an anonymous or trusted-header setup into a 401.
        presented = _presented_key(headers) if self._keys else None
        if presented is not None:
            principal = self._match(presented)
            if principal is None:
                raise Unauthenticated("invalid API key")
            return principal
        if self._trusted.enabled:
            user = headers.get(self._trusted.user)
            if user:
                for name in (self._trusted.user, self._trusted.team):
                    value = headers.get(name) or ""
                    if len(value.encode("utf-8", "surrogateescape")) > self._max_id:
                        # every distinct id is a set of Redis keys: a bound keeps memory bounded
                        raise BadRequest(
                            f"header {name} is longer than {self._max_id} bytes", code="principal_too_long"
                        )
                roles = headers.get(self._trusted.roles, "")
                return Principal(
                    id=user,
                    team=headers.get(self._trusted.team) or None,
                    roles=tuple(r.strip() for r in roles.split(",") if r.strip()),
                    tier=headers.get(self._trusted.tier) or None,
                    authenticated=True,
                    via="trusted_headers",
                )
        if self._anonymous is not None:
            return self._anonymous
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


def _presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("X-API-Key")
    if key and key.strip():
        return key.strip()
    return None
