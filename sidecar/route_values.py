"""Route placeholder values as they go into an upstream path: one encoded segment, never `..`.

A route `/conv/{cid}` -> `/v2/conversations/{cid}` must keep the value inside its segment. `/` is
percent-encoded, and `.`/`..` (sent as `%2e%2e`, which aiohttp decodes) are refused with 400: an
HTTP client normalises `/v2/conversations/..` to `/v2/`, outside the route's prefix.
"""

from __future__ import annotations

from urllib.parse import quote

from sidecar.errors import BadRequest

_DOT_SEGMENTS = frozenset({".", ".."})


def segment(name: str, value: str) -> str:
    """`value` encoded as one path segment; BadRequest for a dot segment."""
    if value in _DOT_SEGMENTS:
        raise BadRequest(f"path parameter '{name}' may not be '{value}'", param=name, code="invalid_path")
    return quote(value, safe="")
