"""Forwarding to model upstreams: retries with backoff, the fallback chain, timeouts, pass-through.

Retries and fallbacks happen only before the first byte reaches the client: a connection error, a
timeout or a 5xx moves to the next attempt, and `breaker_failures` failures in a row open the
upstream's circuit for `breaker_seconds` (its requests go straight to the fallbacks). Any other
status is the upstream's answer and is passed on unchanged. When every attempt failed the caller
gets UpstreamTimeout (504) if the last failure was a timeout, else UpstreamUnavailable (502).
Replies that stream (SSE, NDJSON, or a request with `stream: true`) are relayed chunk by chunk as
they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sidecar.forward_headers import dropped, request_drop, strips_identity
from sidecar.metrics import Metrics
from sidecar.reply_usage import StreamScanner, TokenCounts, UsageChunkFilter, counts_of_body
from sidecar.settings import Settings, UpstreamSettings, upstream_secret
from sidecar.stream_guard import StreamGuard

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
# Never forwarded upstream: the caller's sidecar credentials, and encodings we would have to undo.
_REQUEST_DROP = _HOP_BY_HOP | {"authorization", "x-api-key", "accept-encoding", "cookie"}
_RESPONSE_DROP = _HOP_BY_HOP | {"content-encoding"}
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl")


@dataclass
class Reply:
    response: web.StreamResponse
    status: int
    upstream: str
    counts: TokenCounts | None
    complete: bool  # False when the client went away or the upstream broke mid-stream
    seconds: float


@dataclass
class _Breaker:
    """Consecutive failures of one upstream; open (skipped) until `open_until` once too many."""

    failures: int = 0
    open_until: float = 0.0

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def failed(self, upstream: UpstreamSettings, now: float) -> None:
        self.failures += 1
        if upstream.breaker_failures and self.failures >= upstream.breaker_failures:
            self.open_until = now + upstream.breaker_seconds
            self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = 0.0


def _timeout(upstream: UpstreamSettings, stream: bool) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None if stream else upstream.timeout_seconds,
        connect=upstream.connect_timeout_seconds,
        sock_read=upstream.timeout_seconds,
    )


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics, env: Mapping[str, str] | None = None) -> None:
        self._upstreams = settings.upstreams
        self._metrics = metrics
        self._secrets = {name: s for name, u in settings.upstreams.items() if (s := upstream_secret(u, env))}
        self._session: aiohttp.ClientSession | None = None
        self._breakers = {name: _Breaker() for name in settings.upstreams}
        self._drop = request_drop(settings)
        self._strip_identity = strips_identity(settings)
        # built once per upstream and mode instead of once per request
        self._timeouts = {
            (u.name, stream): _timeout(u, stream)
            for u in settings.upstreams.values()
            for stream in (False, True)
        }

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        # auto_decompress: usage is read from the bytes we relay, so they must be plain.
        # DummyCookieJar: one session serves every client; a cookie an upstream sets for one caller
        # must never ride along on another caller's request.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, upstream: UpstreamSettings, path: str, query: str) -> str:
        base = upstream.base_url
        # Accept base URLs written with the API prefix (https://api.example.com/v1).
        if base.endswith("/v1") and (path.startswith("/v1/") or path == "/v1"):
            base = base[:-3]
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    def _headers(self, upstream: UpstreamSettings, incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in incoming.items()
            if k.lower() not in _REQUEST_DROP and not dropped(k, self._drop, self._strip_identity)
        )
        headers["Accept-Encoding"] = "identity"
        secret = self._secrets.get(upstream.name)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    async def open(
        self,
        upstream: UpstreamSettings,
        method: str,
        path: str,
        query: str,
        incoming: CIMultiDictProxy[str],
        body: bytes | None,
        stream: bool,
    ) -> tuple[aiohttp.ClientResponse, UpstreamSettings, float]:
        """Send the request through the retry/fallback chain; the response is open, headers read."""
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        chain = [upstream, *(self._upstreams[n] for n in upstream.fallback if n in self._upstreams)]
        last: UpstreamError | None = None
        for target in chain:
            breaker = self._breakers.setdefault(target.name, _Breaker())
            if breaker.is_open(time.monotonic()):
                # A circuit opened by repeated failures: go straight to the next fallback.
                self._metrics.upstream_errors.labels(target.name, "circuit_open").inc()
                last = last or UpstreamUnavailable(
                    f"upstream '{target.name}' is failing; its circuit is open"
                )
                continue
            headers = self._headers(target, incoming)
            timeout = self._timeouts.get((target.name, stream)) or _timeout(target, stream)
            for attempt in range(target.retries + 1):
                if attempt:
                    # retry_delay_seconds, doubling per retry (capped at 1 s or the delay itself)
                    delay = target.retry_delay_seconds
                    await asyncio.sleep(min(max(1.0, delay), delay * 2 ** (attempt - 1)))
                started = time.perf_counter()
                outcome = await self._attempt(
                    target, method, self._url(target, path, query), body, headers, timeout
                )
                if isinstance(outcome, aiohttp.ClientResponse):
                    breaker.succeeded()
                    return outcome, target, started
                last = outcome
                breaker.failed(target, time.monotonic())
                if breaker.is_open(time.monotonic()):
                    break
        assert last is not None
        raise last

    async def _attempt(
        self,
        target: UpstreamSettings,
        method: str,
        url: str,
        body: bytes | None,
        headers: CIMultiDict[str],
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse | UpstreamError:
        """One call: the open response, or the error it counts as (a 5xx is an error here)."""
        assert self._session is not None
        error: UpstreamError
        try:
            resp = await self._session.request(
                method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except TimeoutError as exc:
            self._metrics.upstream_errors.labels(target.name, "timeout").inc()
            error = UpstreamTimeout(f"upstream '{target.name}' timed out")
            error.__cause__ = exc
            return error
        except aiohttp.ClientError as exc:
            self._metrics.upstream_errors.labels(target.name, "connection").inc()
            error = UpstreamUnavailable(f"upstream '{target.name}' is unreachable ({type(exc).__name__})")
            error.__cause__ = exc
            return error
        if resp.status in _RETRY_STATUSES:
            self._metrics.upstream_errors.labels(target.name, f"http_{resp.status}").inc()
            resp.release()
            return UpstreamUnavailable(f"upstream '{target.name}' answered HTTP {resp.status}")
        return resp

    async def relay(
        self,
        request: web.Request,
        resp: aiohttp.ClientResponse,
        upstream: UpstreamSettings,
        started: float,
        extra_headers: Mapping[str, str] | CIMultiDict[str],
        stream_requested: bool,
        hide_usage_chunk: bool = False,
        guard: StreamGuard | None = None,
    ) -> Reply:
        """Pass the reply to the client (streamed or whole) and read its token counts on the way.

        `hide_usage_chunk`: the sidecar added `stream_options.include_usage`; the usage-only event it
        caused is read for settling but not passed on.
        """
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in resp.headers.items() if k.lower() not in _RESPONSE_DROP
        )
        headers.extend(extra_headers)
        content_type = resp.headers.get("Content-Type", "")
        streaming = stream_requested or content_type.startswith(_STREAM_TYPES)
        try:
            if not streaming:
                try:
                    raw = await resp.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self._metrics.upstream_errors.labels(upstream.name, "read").inc()
                    error: UpstreamError = (
                        UpstreamTimeout if isinstance(exc, asyncio.TimeoutError) else UpstreamUnavailable
                    )(f"upstream '{upstream.name}' broke off its reply")
                    raise error from exc
                seconds = time.perf_counter() - started
                self._metrics.child(self._metrics.upstream_seconds, upstream.name).observe(seconds)
                counts = counts_of_body(raw) if resp.status < 400 else None
                out = web.Response(status=resp.status, body=raw, headers=headers)
                return Reply(out, resp.status, upstream.name, counts, True, seconds)
            hide = hide_usage_chunk and content_type.startswith("text/event-stream")
            if guard is not None:
                guard.sse = content_type.startswith("text/event-stream")
            return await self._stream(request, resp, upstream, started, headers, hide, guard)
        finally:
            resp.release()

    async def _stream(
        self,
        request: web.Request,
        resp: aiohttp.ClientResponse,
        upstream: UpstreamSettings,
        started: float,
        headers: CIMultiDict[str],
        hide_usage_chunk: bool,
        guard: StreamGuard | None = None,
    ) -> Reply:
        out = web.StreamResponse(status=resp.status, headers=headers)
        scanner = StreamScanner()
        usage_filter = UsageChunkFilter() if hide_usage_chunk else None
        complete = False
        try:
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                scanner.feed(chunk)
                if usage_filter is not None:
                    chunk = usage_filter.feed(chunk)
                    if not chunk:
                        continue
                if guard is not None:  # counts and caps the output (sidecar/stream_guard.py)
                    chunk = guard.feed(chunk)
                    if chunk:
                        await out.write(chunk)
                    if guard.capped:
                        break
                    continue
                await out.write(chunk)
            scanner.finish()
            if usage_filter is not None and (rest := usage_filter.finish()):
                await out.write(guard.feed(rest) if guard is not None else rest)
            if guard is not None and (rest := guard.finish()):
                await out.write(rest)
            await out.write_eof()
            complete = True
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: settle with what we saw
        except (TimeoutError, aiohttp.ClientError):
            self._metrics.upstream_errors.labels(upstream.name, "stream").inc()
            if guard is not None and out.prepared:
                # tell the client the reply is cut short, instead of ending the stream cleanly
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await out.write(guard.error_bytes(f"upstream '{upstream.name}' broke off the stream"))
                    await out.write_eof()
        seconds = time.perf_counter() - started
        self._metrics.child(self._metrics.upstream_seconds, upstream.name).observe(seconds)
        return Reply(out, resp.status, upstream.name, scanner.counts, complete, seconds)
