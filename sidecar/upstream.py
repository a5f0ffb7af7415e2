"""Forwarding to model upstreams: the fallback chain, retries with backoff, breakers, timeouts, relay.

`open` walks the chain (the chosen upstream, then its `fallback` list) before the first byte reaches
the client. A connection error, a timeout, a 5xx or a 429 moves on: a 5xx or timeout is retried on
the same upstream `retries` times after an exponential backoff with jitter (`backoff_seconds`,
seed spelling `retry_delay_seconds`, doubling per retry, capped at 1 s or the first delay, plus up
to 50 % jitter on top), a 429 goes straight to the next upstream. Everything, backoff included,
is bounded by the first upstream's `deadline_seconds`. Each upstream has a circuit breaker
(sidecar/breaker.py): `breaker_failures` failures in a row open it for `breaker_seconds`, then one
probe is let through (half-open) and its outcome closes or re-opens it. Any other status is the
provider's answer. When every attempt failed the caller gets UpstreamTimeout (504) if the last
failure was a timeout, else UpstreamUnavailable (502), listing what was tried.

What goes on the wire comes from the upstream's adapter (sidecar/providers/): `relay` passes a reply
through as it came, `relay_translated` reads it with the adapter and writes it in the client's API.
Hook points: `forwarded_headers` (what of the client's headers goes upstream) and `_pump` (every
relayed stream chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.breaker import BreakerState, CircuitBreaker
from sidecar.errors import ProviderRefused, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sidecar.forward_headers import dropped, request_drop, strips_identity
from sidecar.metrics import Metrics
from sidecar.providers.base import CONTENT_FILTER, Adapter, Wire, adapter_for
from sidecar.providers.replies import ReplyWriter
from sidecar.reply_usage import StreamScanner, TokenCounts, UsageChunkFilter, counts_of_body
from sidecar.settings import Settings, UpstreamSettings, upstream_secret
from sidecar.stream_guard import StreamGuard

logger = logging.getLogger("hexarch.sidecar")

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
_NEXT_STATUSES = frozenset({429})  # the provider is fine but will not serve us now: try the next
_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl")
BREAKER_STATES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}

# Builds the wire request for one upstream of the chain (its settings and adapter).
Build = Callable[[UpstreamSettings, Adapter], Wire]


@dataclass
class Reply:
    response: web.StreamResponse
    status: int
    upstream: str
    counts: TokenCounts | None
    complete: bool  # False when the client went away or the upstream broke mid-stream
    seconds: float
    upstream_broke: bool = False  # the provider failed mid-reply (not the client leaving)


@dataclass
class Opened:
    """An upstream response whose headers are read: who answered, and how it was reached."""

    resp: aiohttp.ClientResponse
    target: UpstreamSettings
    adapter: Adapter
    started: float
    tried: tuple[tuple[str, str], ...]  # the attempts that failed before this one


def _timeout(upstream: UpstreamSettings, stream: bool, remaining: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None if stream else min(upstream.timeout_seconds, remaining),
        connect=min(upstream.connect_timeout_seconds, remaining),
        sock_read=min(upstream.timeout_seconds, remaining),
    )


def _tls(upstream: UpstreamSettings) -> ssl.SSLContext | bool:
    """How the provider's certificate is checked: the system CAs, `ca_file`'s, or not at all."""
    if not upstream.verify_tls:
        return False
    if upstream.ca_file:
        return ssl.create_default_context(cafile=upstream.ca_file)
    return True


def _backoff(first: float, attempt: int) -> float:
    """The wait before retry `attempt` (1, 2, ...): `first` doubling per retry, at most 1 s or `first`
    itself when that is longer, plus up to half of it again as jitter (never shorter than named, so
    the seeds' `retry_delay_seconds` is a floor)."""
    nominal = min(max(1.0, first), first * 2.0 ** (attempt - 1))
    jitter = random.uniform(1.0, 1.5)
    return nominal * jitter


def forwarded_headers(
    incoming: CIMultiDictProxy[str], drop: frozenset[str] = frozenset(), strip_identity: bool = False
) -> CIMultiDict[str]:
    """What of the client's headers a pass-through request carries upstream: not hop-by-hop ones,
    not `drop`, and not the sidecar's own identity headers when `strip_identity` (trusted headers
    off: a client typed them; sidecar/forward_headers.py)."""
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v)
        for k, v in incoming.items()
        if k.lower() not in _REQUEST_DROP and not dropped(k, drop, strip_identity)
    )
    headers["Accept-Encoding"] = "identity"
    return headers


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics, env: Mapping[str, str] | None = None) -> None:
        self._upstreams = settings.upstreams
        self._metrics = metrics
        self.adapters: dict[str, Adapter] = {
            name: adapter_for(u, upstream_secret(u, env)) for name, u in settings.upstreams.items()
        }
        # the client's headers a pass-through request must not carry (sidecar/forward_headers.py)
        self._drop = request_drop(settings)
        self._strip_identity = strips_identity(settings)
        self.breakers: dict[str, CircuitBreaker] = {
            name: CircuitBreaker(
                name,
                failure_threshold=u.breaker_failures,
                reset_timeout=u.breaker_seconds,
                on_change=self._breaker_changed,
            )
            for name, u in settings.upstreams.items()
            if u.breaker_failures > 0
        }
        self.tls: dict[str, ssl.SSLContext | bool] = {name: _tls(u) for name, u in settings.upstreams.items()}
        self._session: aiohttp.ClientSession | None = None

    def _breaker_changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        logger.warning("upstream %s: circuit %s -> %s", breaker.name, old.value, new.value)
        self._metrics.child(self._metrics.upstream_breaker_state, breaker.name).set(BREAKER_STATES[new])
        self._metrics.child(self._metrics.upstream_breaker_transitions, breaker.name, new.value).inc()

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

    def chain(self, upstream: UpstreamSettings) -> list[UpstreamSettings]:
        return [upstream, *(self._upstreams[n] for n in upstream.fallback if n in self._upstreams)]

    def url(self, upstream: UpstreamSettings, path: str, query: str) -> str:
        base = upstream.base_url
        # Accept base URLs written with the API prefix: https://api.groq.com/openai/v1 (the client's
        # /v1/... goes after it once), and Gemini's OpenAI endpoint .../v1beta/openai (no /v1 at all).
        if path.startswith("/v1/") or path == "/v1":
            if base.endswith("/v1"):
                base = base[:-3]
            elif base.endswith("/openai"):
                path = path[3:]
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    async def open(
        self,
        upstream: UpstreamSettings,
        build: Build,
        incoming: CIMultiDictProxy[str],
        stream: bool,
    ) -> Opened:
        """Send the request through the chain; the response is open, its headers read.

        `incoming`: the client's headers, forwarded (filtered) when `build` makes a pass-through
        Wire; a translated request carries only what its adapter says.
        """
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        deadline = time.monotonic() + upstream.deadline_seconds
        tried: list[tuple[str, str]] = []
        last: UpstreamError | None = None
        for target in self.chain(upstream):
            adapter = self.adapters[target.name]
            breaker = self.breakers.get(target.name)
            wire = build(target, adapter)
            for attempt in range(target.retries + 1):
                remaining = deadline - time.monotonic()
                if attempt:
                    delay = _backoff(target.backoff_seconds, attempt)
                    if delay >= remaining:
                        break
                    await asyncio.sleep(delay)
                    remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tried.append((target.name, "deadline passed"))
                    last = last or UpstreamTimeout(f"upstream '{target.name}': the deadline passed")
                    break
                if breaker is not None and not breaker.allow():
                    # An open circuit: go straight to the next upstream.
                    self._metrics.child(self._metrics.upstream_errors, target.name, "circuit_open").inc()
                    tried.append((target.name, "circuit open"))
                    last = UpstreamUnavailable(f"upstream '{target.name}' is failing; its circuit is open")
                    break
                started = time.perf_counter()
                try:
                    outcome = await self._attempt(target, adapter, wire, incoming, stream, remaining)
                except BaseException:
                    if breaker is not None:
                        breaker.release()
                    raise
                if isinstance(outcome, aiohttp.ClientResponse):
                    if breaker is not None:
                        breaker.record_success()
                    if tried:
                        logger.info("upstream %s answered after %s", target.name, tried)
                    return Opened(outcome, target, adapter, started, tuple(tried))
                error, reason = outcome
                tried.append((target.name, reason))
                last = error
                if reason.startswith("HTTP 429"):
                    if breaker is not None:
                        breaker.release()
                    break
                if breaker is not None:
                    breaker.record_failure()
                    if breaker.is_open:
                        break
            if deadline - time.monotonic() <= 0:
                break
        summary = "; ".join(f"{name}: {what}" for name, what in tried) or "no upstream could be tried"
        kind = UpstreamTimeout if isinstance(last, UpstreamTimeout) else UpstreamUnavailable
        raise kind(f"All LLM providers failed ({summary})", tried=tuple(tried))

    async def _attempt(
        self,
        target: UpstreamSettings,
        adapter: Adapter,
        wire: Wire,
        incoming: CIMultiDictProxy[str],
        stream: bool,
        remaining: float,
        fresh_credentials: bool = False,
    ) -> aiohttp.ClientResponse | tuple[UpstreamError, str]:
        """One call: the open response, or the error it counts as with a short reason."""
        assert self._session is not None
        headers = (
            forwarded_headers(incoming, self._drop, self._strip_identity)
            if wire.passthrough
            else CIMultiDict({"Accept-Encoding": "identity"})
        )
        headers.update(wire.headers)
        try:
            headers.update(await adapter.auth_headers(self._session, self.tls.get(target.name, True)))
        except UpstreamError as exc:
            self._metrics.child(self._metrics.upstream_errors, target.name, "auth").inc()
            return exc, str(exc)  # e.g. the token exchange failed, and why (never the key)
        url = self.url(target, wire.path, wire.query)
        try:
            resp = await self._session.request(
                wire.method,
                url,
                data=wire.body,
                headers=headers,
                timeout=_timeout(target, stream, remaining),
                allow_redirects=False,
                ssl=self.tls.get(target.name, True),
            )
        except TimeoutError as exc:
            self._metrics.child(self._metrics.upstream_errors, target.name, "timeout").inc()
            error: UpstreamError = UpstreamTimeout(f"upstream '{target.name}' timed out")
            error.__cause__ = exc
            return error, "timeout"
        except aiohttp.ClientError as exc:
            self._metrics.child(self._metrics.upstream_errors, target.name, "connection").inc()
            error = UpstreamUnavailable(f"upstream '{target.name}' is unreachable ({type(exc).__name__})")
            error.__cause__ = exc
            return error, f"unreachable ({type(exc).__name__})"
        if resp.status in _RETRY_STATUSES or resp.status in _NEXT_STATUSES:
            self._metrics.child(self._metrics.upstream_errors, target.name, f"http_{resp.status}").inc()
            resp.release()
            return UpstreamUnavailable(
                f"upstream '{target.name}' answered HTTP {resp.status}"
            ), f"HTTP {resp.status}"
        if resp.status == 401 and not fresh_credentials and adapter.forget_credentials():
            # a cached token the provider no longer accepts (revoked early): one more try with a new one
            resp.release()
            return await self._attempt(
                target, adapter, wire, incoming, stream, remaining, fresh_credentials=True
            )
        return resp

    # -----------------------------------------------------------------------------------------
    async def relay(
        self,
        request: web.Request,
        opened: Opened,
        extra_headers: Mapping[str, str] | CIMultiDict[str],
        stream_requested: bool,
        hide_usage_chunk: bool = False,
        guard: StreamGuard | None = None,
    ) -> Reply:
        """Pass the reply to the client (streamed or whole) and read its token counts on the way.

        `hide_usage_chunk`: the sidecar added `stream_options.include_usage`; the usage-only event it
        caused is read for settling but not passed on.
        """
        resp, upstream, started = opened.resp, opened.target, opened.started
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in resp.headers.items() if k.lower() not in _RESPONSE_DROP
        )
        headers.extend(extra_headers)
        content_type = resp.headers.get("Content-Type", "")
        streaming = stream_requested or content_type.startswith(_STREAM_TYPES)
        try:
            if not streaming:
                raw = await self._read(resp, upstream)
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

    async def _read(self, resp: aiohttp.ClientResponse, upstream: UpstreamSettings) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._metrics.child(self._metrics.upstream_errors, upstream.name, "read").inc()
            error: UpstreamError = (
                UpstreamTimeout if isinstance(exc, asyncio.TimeoutError) else UpstreamUnavailable
            )(f"upstream '{upstream.name}' broke off its reply")
            raise error from exc

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
        complete = broke = False
        first_byte = True
        try:
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                scanner.feed(chunk)
                if usage_filter is not None:
                    chunk = usage_filter.feed(chunk)
                    if not chunk:
                        continue
                if first_byte:
                    first_byte = False
                    self._metrics.observe_first_byte(upstream.name, time.perf_counter() - started)
                if guard is not None:  # counts and caps the output (sidecar/stream_guard.py)
                    chunk = guard.feed(chunk)
                    if chunk:
                        await self._pump(out, chunk)
                    if guard.capped:
                        break
                    continue
                await self._pump(out, chunk)
            scanner.finish()
            if usage_filter is not None and (rest := usage_filter.finish()):
                await self._pump(out, guard.feed(rest) if guard is not None else rest)
            if guard is not None and (rest := guard.finish()):
                await self._pump(out, rest)
            await out.write_eof()
            complete = True
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: settle with what we saw
        except (TimeoutError, aiohttp.ClientError):
            self._metrics.child(self._metrics.upstream_errors, upstream.name, "stream").inc()
            broke = True
            if guard is not None and out.prepared:
                # tell the client the reply is cut short, instead of ending the stream cleanly
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await out.write(guard.error_bytes(f"upstream '{upstream.name}' broke off the stream"))
                    await out.write_eof()
        seconds = time.perf_counter() - started
        self._metrics.child(self._metrics.upstream_seconds, upstream.name).observe(seconds)
        return Reply(out, resp.status, upstream.name, scanner.counts, complete, seconds, broke)

    async def _pump(self, out: web.StreamResponse, chunk: bytes) -> None:
        """Every relayed stream chunk passes here (hook for stream caps)."""
        await out.write(chunk)

    # -----------------------------------------------------------------------------------------
    async def relay_translated(
        self,
        request: web.Request,
        opened: Opened,
        extra_headers: Mapping[str, str] | CIMultiDict[str],
        stream: bool,
        writer: ReplyWriter,
        guard: StreamGuard | None = None,
    ) -> Reply:
        """Read the provider's reply with its adapter and write it in the client's API.

        `guard` (streams): counts the text written and ends the reply with a `length` finish when the
        provider runs past the output reserved; a provider breaking off gets the client an error event.
        """
        resp, upstream, adapter, started = opened.resp, opened.target, opened.adapter, opened.started
        try:
            if resp.status >= 400:
                raw = await self._read(resp, upstream)
                message = adapter.error_message(resp.status, raw)
                self._metrics.child(self._metrics.upstream_errors, upstream.name, f"http_{resp.status}").inc()
                raise ProviderRefused(
                    resp.status,
                    f"upstream '{upstream.name}' ({adapter.api}) answered {resp.status}: {message}",
                )
            headers: CIMultiDict[str] = CIMultiDict(extra_headers)
            if not stream:
                raw = await self._read(resp, upstream)
                seconds = time.perf_counter() - started
                self._metrics.child(self._metrics.upstream_seconds, upstream.name).observe(seconds)
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamUnavailable(
                        f"upstream '{upstream.name}' sent a reply that is not JSON"
                    ) from exc
                completion = adapter.reply(doc if isinstance(doc, dict) else {})
                self._finished(upstream, completion.finish_reason, completion.native_finish)
                headers["Content-Type"] = "application/json"
                out = web.Response(status=200, body=writer.whole(completion), headers=headers)
                counts = _counts(completion.prompt_tokens, completion.completion_tokens)
                return Reply(out, 200, upstream.name, counts, True, seconds)
            return await self._stream_translated(request, opened, headers, writer, guard)
        finally:
            resp.release()

    async def _stream_translated(
        self,
        request: web.Request,
        opened: Opened,
        headers: CIMultiDict[str],
        writer: ReplyWriter,
        guard: StreamGuard | None = None,
    ) -> Reply:
        resp, upstream, adapter, started = opened.resp, opened.target, opened.adapter, opened.started
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        out = web.StreamResponse(status=200, headers=headers)
        decoder = adapter.stream_decoder()
        finish: str | None = None
        native: str | None = None
        prompt: int | None = None
        completion: int | None = None
        complete = broke = False
        try:
            await out.prepare(request)
            await self._pump(out, writer.start())
            first_byte = True
            async for chunk in resp.content.iter_any():
                if first_byte:
                    first_byte = False
                    self._metrics.observe_first_byte(upstream.name, time.perf_counter() - started)
                for delta in decoder.feed(chunk):
                    if delta.text:
                        if guard is not None and not guard.take(delta.text):
                            break  # past the reserved output (sidecar/stream_guard.py)
                        await self._pump(out, writer.text(delta.text))
                    if delta.finish_reason is not None:
                        finish, native = delta.finish_reason, delta.native_finish
                    if delta.prompt_tokens is not None:
                        prompt = delta.prompt_tokens
                    if delta.completion_tokens is not None:
                        completion = delta.completion_tokens
                if guard is not None and guard.capped:
                    break
            if guard is not None and guard.capped:
                # the provider ran past the reservation: the client gets a length-limited reply
                await self._pump(out, writer.end("length", prompt, guard.produced))
                await out.write_eof()
                complete = True
            elif finish is not None or completion is not None:
                self._finished(upstream, finish, native)
                await self._pump(out, writer.end(finish, prompt, completion))
                await out.write_eof()
                complete = True
            else:
                # The provider's stream ended without its end: no made-up ending for the client.
                self._metrics.child(self._metrics.upstream_errors, upstream.name, "stream").inc()
                broke = True
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: settle with what we saw
        except (TimeoutError, aiohttp.ClientError):
            self._metrics.child(self._metrics.upstream_errors, upstream.name, "stream").inc()
            broke = True
        if broke and out.prepared:
            # tell the client the reply is cut short, instead of ending the stream cleanly
            with contextlib.suppress(ConnectionError, RuntimeError):
                await out.write(writer.error(f"upstream '{upstream.name}' broke off the stream"))
                await out.write_eof()
        seconds = time.perf_counter() - started
        self._metrics.child(self._metrics.upstream_seconds, upstream.name).observe(seconds)
        return Reply(out, 200, upstream.name, _counts(prompt, completion), complete, seconds, broke)

    def _finished(self, upstream: UpstreamSettings, finish: str | None, native: str | None) -> None:
        if finish == CONTENT_FILTER:
            self._metrics.child(self._metrics.content_filter, upstream.name).inc()
            logger.warning(
                "upstream %s stopped for safety (%s): finish_reason content_filter", upstream.name, native
            )


def _counts(prompt: int | None, completion: int | None) -> TokenCounts | None:
    if prompt is None and completion is None:
        return None
    return TokenCounts(prompt or 0, completion or 0)
