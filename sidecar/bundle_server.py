"""`GET /bundles/hexarch.tar.gz`: the compiled policy, for OPA to poll.

The bundle is compiled at start-up and again whenever the policy file's mtime or size changes
(checked at most every `check_seconds`, on request). A broken edit is logged with its diagnostics
and the last good bundle keeps being served, so a typo never takes the guardrails down. The ETag is
the bundle revision (content hash); `If-None-Match` gets a 304.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from aiohttp import web

from compiler.errors import CompilerError, PolicyError
from sidecar.errors_http import error_response
from sidecar.metrics import Metrics

logger = logging.getLogger("hexarch.bundle")


@dataclass(frozen=True)
class _Built:
    data: bytes
    revision: str
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it was built from


class BundleServer:
    def __init__(self, policy_file: str, metrics: Metrics, check_seconds: float = 1.0) -> None:
        self._path = policy_file
        self._metrics = metrics
        self._check_seconds = check_seconds
        self._built: _Built | None = None
        self._failed_stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    @property
    def revision(self) -> str | None:
        return self._built.revision if self._built else None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def build(self) -> None:
        """Compile now; raises PolicyError on the first build (start-up must see a broken policy)."""
        from compiler.api import compile_policy

        stamp = self._stamp() or (0, 0)
        bundle = compile_policy(self._path)
        self._built = _Built(bundle.data, bundle.revision, stamp)
        self._metrics.bundle_reloads.labels("ok").inc()
        logger.info("bundle built from %s, revision %s", self._path, bundle.revision)

    async def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            return
        async with self._lock:
            if time.monotonic() - self._checked < self._check_seconds:
                return
            self._checked = time.monotonic()
            stamp = self._stamp()
            if stamp is None or (self._built and stamp == self._built.stamp) or stamp == self._failed_stamp:
                return
            try:
                # Only after an edit; in a thread, because custom Rego runs `opa check` (~0.1 s),
                # which must not stall the requests this loop is serving.
                await asyncio.to_thread(self.build)
                self._failed_stamp = None
            except PolicyError as exc:
                self._failed_stamp = stamp
                self._metrics.bundle_reloads.labels("error").inc()
                logger.error("policy edit rejected, still serving revision %s:\n%s", self.revision, exc)
            except CompilerError as exc:
                self._failed_stamp = stamp
                self._metrics.bundle_reloads.labels("error").inc()
                logger.error("bundle build failed, still serving revision %s: %s", self.revision, exc)

    async def current(self) -> tuple[str, bytes] | None:
        """(revision, bundle) after the same mtime check OPA's polling triggers; None before a build."""
        await self._refresh()
        built = self._built
        return None if built is None else (built.revision, built.data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await self._refresh()
        built = self._built
        if built is None:
            return error_response(503, "no policy bundle has been built yet", code="bundle_unavailable")
        etag = f'"{built.revision}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        match = request.headers.get("If-None-Match", "")
        if match and (match.strip() == "*" or built.revision in match):
            return web.Response(status=304, headers=headers)
        return web.Response(body=built.data, content_type="application/gzip", headers=headers)
