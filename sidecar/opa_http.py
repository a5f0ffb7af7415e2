"""A minimal HTTP/1.1 client for one fixed endpoint: POST a JSON body, read the reply, keep the line.

The decision call is the one request the sidecar makes on every request, always to the same URL.
aiohttp's client spends about 0.3 ms per call on loopback building a request and response object
model this call does not need; writing the request bytes and parsing the status line, the framing
headers and the body directly takes about half of that (docs/performance.md). It speaks just
enough HTTP/1.1: persistent connections kept in a small pool, bodies framed by Content-Length,
chunked transfer coding or the connection's end, `Connection: close` honoured.

A call that fails on a reused connection before any byte of the reply arrived (the server closed
it while idle, e.g. OPA restarted) is sent once more on a new connection: a decision query has no
side effects, so resending it is safe.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

# Idle connections kept open; a burst opens more (up to `max_connections`) and closes the surplus.
_IDLE_KEPT = 16
_MAX_HEADER_BYTES = 65536


class HttpError(Exception):
    """The call failed below HTTP: no connection, a broken or malformed reply, a timeout."""


class _Retry(Exception):
    """A reused connection turned out dead before the reply began: safe to resend."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class JsonPoster:
    """`await poster.post(body)` -> (status, body bytes) for one URL, over pooled connections."""

    def __init__(self, url: str, timeout_seconds: float, max_connections: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        default_port = 443 if self._tls else 80
        host = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: "
        ).encode("latin-1")
        self._timeout = timeout_seconds
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def post(self, body: bytes) -> tuple[int, bytes]:
        request = b"".join((self._head, str(len(body)).encode(), b"\r\n\r\n", body))
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    while self._idle:
                        conn = self._idle.pop()
                        try:
                            return await self._exchange(conn, request, reused=True)
                        except _Retry:
                            continue
                    conn = await self._connect()
                    return await self._exchange(conn, request, reused=False)
            except TimeoutError as exc:
                raise HttpError("timed out") from exc

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=_MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise HttpError(f"cannot connect: {exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes, *, reused: bool) -> tuple[int, bytes]:
        keep = False
        try:
            try:
                conn.writer.write(request)
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if reused and not partial:
                    raise _Retry from exc
                raise HttpError(f"connection lost: {exc!r}") from exc
            status, length, chunked, keep = _parse_head(head)
            if chunked:
                body = await _read_chunked(conn.reader)
            elif length is not None:
                body = await conn.reader.readexactly(length)
            else:
                body, keep = await conn.reader.read(), False
            return status, body
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            keep = False
            raise HttpError(f"broken reply: {exc!r}") from exc
        except BaseException:
            keep = False  # cancelled or timed out mid-reply: the line is in an unknown state
            raise
        finally:
            if keep and not self._closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
            else:
                conn.close()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content length, chunked, keep-alive) of a reply head; ValueError if malformed."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    keep = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep = False
            elif token == b"keep-alive":
                keep = True
    if chunked:
        length = None
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    return status, length, chunked, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # trailers, if any, end with an empty line
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ValueError("chunk not terminated by CRLF")
        parts.append(chunk[:-2])
