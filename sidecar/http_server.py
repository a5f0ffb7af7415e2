"""The HTTP front guard: aiohttp's server with bounded connections and a header read timeout.

aiohttp's RequestHandler limits header sizes but has no deadline for the headers themselves: a
client sending one byte every few seconds (slowloris) holds a connection forever, and a thousand of
them hold every file descriptor. `HardenedRequestHandler` adds, per connection:

- a **header read timeout**: from the connection's first byte (or from a keep-alive connection's
  first byte of its next request) the request line and headers must arrive within
  `header_read_timeout_seconds`, or the connection is closed;
- a **connection bound**: past `max_connections` open connections, the oldest connection still
  waiting for its headers is closed to make room (a slow client never starves a fast one);
- **malformed HTTP** (bad request line, unsupported Content-Encoding such as `br`, ...) answered in
  the DESIGN.md error shape, logged as one INFO line without a traceback.

`HardenedRunner` is an AppRunner whose server builds these handlers; `hexarch serve` and the tests
both run the app through it (`serve_forever`, `HardenedTestServer` in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from sidecar.errors_http import error_response
from sidecar.hardening import HardeningSettings

logger = logging.getLogger("hexarch.sidecar")


class HardenedRequestHandler(RequestHandler):
    __slots__ = ("_hx_header_timer", "_hx_pending_since", "_hx_settings")

    def __init__(self, manager: Server, *, hardening: HardeningSettings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._hx_settings = hardening
        self._hx_header_timer: asyncio.TimerHandle | None = None
        self._hx_pending_since: float | None = None

    # -- header read timeout -----------------------------------------------------------------
    def _hx_arm(self) -> None:
        if self._hx_header_timer is None:
            self._hx_pending_since = time.monotonic()
            self._hx_header_timer = self._loop.call_later(
                self._hx_settings.header_read_timeout_seconds, self._hx_headers_late
            )

    def _hx_disarm(self) -> None:
        self._hx_pending_since = None
        if self._hx_header_timer is not None:
            self._hx_header_timer.cancel()
            self._hx_header_timer = None

    def _hx_headers_late(self) -> None:
        self._hx_header_timer = None
        if self._hx_pending_since is not None:
            logger.debug("closing a connection that sent no complete headers in time")
            self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._hx_arm()
        self._hx_bound_connections()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._hx_disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # between requests (nothing queued, nothing being handled) a byte starts a new request's
        # headers; bytes of a body being read, or of a request being handled, are not headers
        between = (
            self._payload_parser is None
            and not self._upgraded
            and not self._messages
            and self._current_request is None
        )
        before = self._request_count
        if between:
            self._hx_arm()
        super().data_received(data)
        if self._request_count != before:
            self._hx_disarm()  # a whole request line + headers arrived

    # -- connection bound --------------------------------------------------------------------
    def _hx_bound_connections(self) -> None:
        manager = self._manager
        if manager is None:
            return
        handlers: Sequence[RequestHandler] = manager.connections
        over = len(handlers) - self._hx_settings.max_connections
        if over <= 0:
            return
        waiting = sorted(
            (h for h in handlers if isinstance(h, HardenedRequestHandler) and h._hx_pending_since),
            key=lambda h: h._hx_pending_since or 0.0,
        )
        for victim in waiting[:over]:
            victim.force_close()

    # -- malformed requests ------------------------------------------------------------------
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        text = (message or (str(exc) if exc else "") or "malformed HTTP request").strip()
        text = " ".join(text.split())[:200]
        logger.info("malformed HTTP request from %s: %s", request.remote, text)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        if "content-encoding" in text.lower():
            resp = error_response(
                415, f"unsupported Content-Encoding: {text}", code="unsupported_content_encoding"
            )
        else:
            resp = error_response(status, f"malformed HTTP request: {text}", code="malformed_request")
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # the client sent something broken; the reply already told it so
            logger.info("malformed HTTP request: %s", " ".join(str(exc).split())[:200])
            return
        super().log_exception(*args, **kw)


class HardenedServer(Server):
    """aiohttp's Server that builds HardenedRequestHandler connections."""

    hardening: HardeningSettings

    def __call__(self) -> RequestHandler:
        return HardenedRequestHandler(self, loop=self._loop, hardening=self.hardening, **self._kwargs)


class HardenedRunner(web.AppRunner):
    def __init__(self, app: web.Application, hardening: HardeningSettings, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", hardening.keepalive_timeout_seconds)
        super().__init__(app, **kwargs)
        self._hardening = hardening

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = HardenedServer  # same layout, only __call__ differs
        assert isinstance(server, HardenedServer)
        server.hardening = self._hardening
        return server


async def serve_forever(
    app: web.Application,
    hardening: HardeningSettings,
    listens: Sequence[tuple[str, int]],
    shutdown_timeout: float = 10.0,
) -> None:
    """Run `app` on every (host, port) until SIGINT/SIGTERM, then shut down gracefully."""
    runner = HardenedRunner(
        app, hardening, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        for host, port in listens:
            await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
