"""Bounded request bodies: size, Content-Encoding, JSON depth and key count, checked before admission.

aiohttp decodes `Content-Encoding: gzip|deflate` bodies while reading and stops at
`client_max_size`; this module turns what can go wrong there into RequestErrors (400/413/415 in the
DESIGN.md error shape) and bounds the decoded JSON: a document nested deeper than `max_json_depth`
or holding more than `max_json_keys` keys and items is refused with 400 before OPA or Redis see it
(a deep document used to reach `orjson.dumps`' recursion limit after admission: a 500 and a lost
reservation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from sidecar.errors import BadRequest, PayloadTooLarge, RequestError
from sidecar.hardening import HardeningSettings
from sidecar.ingress import decode_body

# aiohttp's server decodes these; anything else would reach the handler still encoded
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})


BROKEN_BODY: web.RequestKey[bool] = web.RequestKey("hexarch_broken_body", bool)


@web.middleware
async def close_after_broken_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body that failed to decode leaves the connection mid-stream: answer, then close it."""
    response = await handler(request)
    if request.get(BROKEN_BODY) and not response.prepared:
        response.force_close()
    return response


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_content_encoding"


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The decoded body; 413 past `max_body_bytes`, 400 for a body its Content-Encoding cannot decode."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in DECODED_ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding '{encoding[:40]}' is not supported; send identity, gzip or deflate"
        )
    if not request.body_exists:
        return b""
    refuse_declared_oversize(request, max_body_bytes)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body is larger than {max_body_bytes} bytes") from exc
    except ConnectionError as exc:
        # the client left before its body was complete: nobody will read the answer
        raise BadRequest("the connection closed before the body was complete", code="invalid_body") from exc
    except RequestPayloadError as exc:
        request[BROKEN_BODY] = True  # the connection's stream is unusable now: close it after replying
        if encoding not in ("", "identity"):
            raise BadRequest(
                f"request body is not valid {encoding} data", code="invalid_content_encoding"
            ) from exc
        raise BadRequest("request body could not be read completely", code="invalid_body") from exc


def refuse_declared_oversize(request: web.Request, max_body_bytes: int) -> None:
    """413 at once for an identity body whose Content-Length is over the limit: the client learns
    before it sends the rest (or while it waits for a 100-continue), not after a body timeout."""
    declared = request.content_length
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if declared is not None and declared > max_body_bytes and encoding in ("", "identity"):
        request[BROKEN_BODY] = True  # its unread body is still on the connection: close after replying
        raise PayloadTooLarge(f"request body is larger than {max_body_bytes} bytes")


def check_json_bounds(doc: Any, max_depth: int, max_keys: int) -> None:
    """400 when `doc` nests deeper than `max_depth` or holds more than `max_keys` keys + items."""
    count = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, list):
            items = value
        else:
            continue
        if depth > max_depth:
            raise BadRequest(f"JSON body is nested deeper than {max_depth} levels", code="json_too_deep")
        count += len(value)
        if count > max_keys:
            raise BadRequest(
                f"JSON body has more than {max_keys} keys and array items", code="json_too_large"
            )
        stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list))


def decode_json(raw: bytes, hardening: HardeningSettings) -> dict[str, Any]:
    """A JSON object body within the hardening bounds (400 otherwise)."""
    body = decode_body(raw)
    check_json_bounds(body, hardening.max_json_depth, hardening.max_json_keys)
    return body
