"""A minimal RESP2 client for the counter scripts on one Redis server (TCP or unix socket).

Admission is one EVALSHA on the hot path of every request. Through redis.asyncio a loopback call
costs about 0.26 ms where the exchange itself takes under 0.1 ms: its blocking pool takes a
condition and a timeout per command, `send_packed_command` wraps every write in `asyncio.wait_for`
(a task), and every argument goes through the encoder (docs/performance.md). This client writes
the command bytes and reads the reply directly over a small pool of persistent connections, with
redis-py's failure semantics: connect and socket timeouts, a bounded pool whose waiters give up
after `pool_timeout`, one immediate retry on a broken connection (never on a timeout), and the
exceptions of `redis.exceptions`, so the caller's error handling is the same for both clients.
TLS, credential providers and Cluster stay with redis-py (`Counters` falls back to it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_IDLE_KEPT = 16


def pack(*parts: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


class _Link:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class RespClient:
    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = 0.5,
        connect_timeout: float | None = 0.5,
        max_connections: int = 16,
        pool_timeout: float | None = 1.0,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._setup: list[bytes] = []
        if password is not None:
            auth = (
                (b"AUTH", as_bytes(username), as_bytes(password))
                if username
                else (b"AUTH", as_bytes(password))
            )
            self._setup.append(pack(*auth))
        if db:
            self._setup.append(pack(b"SELECT", as_bytes(db)))
        self._timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Link] = []

    @classmethod
    def for_client(cls, redis: Redis) -> RespClient | None:
        """A client for the server `redis` talks to, or None when redis-py must keep the job (TLS,
        credential providers, other connection classes)."""
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        if kw.get("credential_provider") is not None:
            return None
        common: dict[str, Any] = {
            "db": int(kw.get("db") or 0),
            "username": kw.get("username"),
            "password": kw.get("password"),
            "socket_timeout": kw.get("socket_timeout"),
            "connect_timeout": kw.get("socket_connect_timeout"),
            "max_connections": pool.max_connections,
            "pool_timeout": getattr(pool, "timeout", None),
        }
        if pool.connection_class is Connection:
            return cls(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)), **common)
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], **common)
        return None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            link.close()

    async def execute(self, commands: Sequence[bytes]) -> list[Any]:
        """Send packed `commands` in one write and read their replies; error replies come back as
        exception values (like a pipeline with raise_on_error=False)."""
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise RedisConnectionError("No connection available.") from exc
        try:
            for attempt in (1, 2):
                link = self._idle.pop() if self._idle else await self._connect()
                try:
                    return await self._exchange(link, commands)
                except RedisConnectionError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    reader, writer = await asyncio.open_unix_connection(self._path)
                else:
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                link = _Link(reader, writer)
                if self._setup:
                    writer.write(b"".join(self._setup))
                    for _ in self._setup:
                        reply = await _read_reply(reader)
                        if isinstance(reply, ResponseError):
                            link.close()  # wrong password or database: not worth a retry
                            raise reply
        except TimeoutError as exc:
            raise RedisTimeoutError("Timeout connecting to server") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        return link

    async def _exchange(self, link: _Link, commands: Sequence[bytes]) -> list[Any]:
        keep = False
        try:
            async with asyncio.timeout(self._timeout):
                link.writer.write(commands[0] if len(commands) == 1 else b"".join(commands))
                replies = [await _read_reply(link.reader) for _ in commands]
            keep = True
            return replies
        except TimeoutError as exc:
            raise RedisTimeoutError("Timeout reading from Redis") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise RedisConnectionError(f"Connection to Redis lost: {exc!r}") from exc
        except ValueError as exc:
            raise RedisConnectionError(f"Malformed reply from Redis: {exc}") from exc
        finally:
            if keep and len(self._idle) < _IDLE_KEPT:
                self._idle.append(link)
            else:
                link.close()


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    if kind == b"-":
        text = rest.decode("utf-8", "replace")
        if text.startswith("NOSCRIPT"):
            return NoScriptError(text)
        return ResponseError(text)
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [await _read_reply(reader) for _ in range(count)]
    raise ValueError(f"unknown RESP type {line[:16]!r}")
