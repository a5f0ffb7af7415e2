"""Which request headers the sidecar must not pass on to an upstream, beyond hop-by-hop ones.

- `Content-Encoding`: aiohttp decoded the body while reading it; the forwarded bytes are plain.
- The sidecar's own identity headers (`X-Hexarch-*`, and the configured trusted header names):
  with trusted headers off they are whatever a client typed, and an upstream (or an app behind it)
  that trusts them would take a client's `X-Hexarch-User: admin` at its word. With trusted headers
  on they were set by the app next door and pass through.
"""

from __future__ import annotations

from sidecar.settings import Settings

IDENTITY_PREFIX = "x-hexarch-"


def request_drop(settings: Settings) -> frozenset[str]:
    """Lower-case header names to drop (prefix matches are tested by `dropped`)."""
    names = {"content-encoding"}
    if not settings.trusted_headers.enabled:
        t = settings.trusted_headers
        names.update(n.lower() for n in (t.user, t.team, t.roles, t.tier, t.resource_owner))
    return frozenset(names)


def strips_identity(settings: Settings) -> bool:
    return not settings.trusted_headers.enabled


def dropped(name: str, drop: frozenset[str], strip_identity: bool) -> bool:
    lower = name.lower()
    return lower in drop or (strip_identity and lower.startswith(IDENTITY_PREFIX))
