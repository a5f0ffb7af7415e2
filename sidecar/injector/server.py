"""The injector's HTTPS server: `POST /mutate`, `POST /mutate/namespace-enabled`, `/healthz`, `/readyz`.

The request is an AdmissionReview v1; the reply is the same kind with `response.uid` copied and
either a base64 JSONPatch (`patchType: JSONPatch`), no patch (pod left as is), or `allowed: false`
with the injector's message (malformed pod). A body that is not an AdmissionReview gets a 400 in
the DESIGN.md error shape. The TLS certificate and key are re-read when either file changes
(cert-manager and the chart rotate them in place), checked every `reload_seconds`; new
connections then use the new certificate, open ones keep theirs.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sidecar.errors_http import error_body
from sidecar.injector.config import InjectorConfig
from sidecar.injector.errors import BadReview, Refusal
from sidecar.injector.mutate import patch_for
from sidecar.periodic import Periodic

logger = logging.getLogger("hexarch.injector")
JSON = "application/json"
ADMISSION_API = "admission.k8s.io/v1"


@dataclass(frozen=True)
class InjectorSettings:
    host: str
    port: int
    tls_cert: str
    tls_key: str
    config: InjectorConfig
    reload_seconds: float = 1.0


class CertReloader:
    """Holds the server's SSLContext and loads the files again when their mtime or size changes."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._current()
        self.context.load_cert_chain(cert, key)
        self.reloads = 0

    def _current(self) -> tuple[tuple[int, int], ...]:
        stats = (os.stat(self.cert), os.stat(self.key))
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def check(self) -> bool:
        """Reload when the files changed; a half-written pair is retried on the next check."""
        try:
            stamp = self._current()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            logger.warning("TLS files %s, %s not reloaded yet: %s", self.cert, self.key, exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        logger.info("reloaded TLS certificate %s", self.cert)
        return True


CONFIG_KEY = web.AppKey("injector_config", InjectorConfig)
CERTS_KEY = web.AppKey("injector_certs", CertReloader)


def review_response(review: Any, namespace_enabled: bool, config: InjectorConfig) -> dict[str, Any]:
    """The AdmissionReview reply; raises BadReview when `review` is not an AdmissionReview v1."""
    if not isinstance(review, Mapping) or review.get("kind") != "AdmissionReview":
        raise BadReview("expected an AdmissionReview (kind: AdmissionReview)")
    if review.get("apiVersion") != ADMISSION_API:
        raise BadReview(
            f"AdmissionReview apiVersion must be {ADMISSION_API}, not {review.get('apiVersion')!r}"
        )
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise BadReview("AdmissionReview has no request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind = request.get("kind") or {}
    if (
        isinstance(kind, Mapping)
        and kind.get("kind") == "Pod"
        and request.get("operation", "CREATE") == "CREATE"
    ):
        try:
            patch = patch_for(request.get("object"), config, namespace_enabled)
        except Refusal as exc:
            response["allowed"] = False
            response["status"] = {
                "status": "Failure",
                "code": exc.status,
                "reason": "BadRequest",
                "message": f"hexarch injector: {exc.message}",
            }
            logger.info("refused pod in %s: %s", request.get("namespace"), exc.message)
        else:
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


def _mutate(namespace_enabled: bool) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            try:
                review = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                raise BadReview(f"body is not JSON: {exc}") from exc
            reply = review_response(review, namespace_enabled, request.app[CONFIG_KEY])
        except Refusal as exc:  # the one place a refusal becomes an HTTP error
            return web.Response(
                status=exc.status, body=error_body(exc.message, code=exc.code), content_type=JSON
            )
        return web.Response(body=orjson.dumps(reply), content_type=JSON)

    return handler


def create_app(settings: InjectorSettings) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[CONFIG_KEY] = settings.config
    app[CERTS_KEY] = CertReloader(settings.tls_cert, settings.tls_key)
    app.cleanup_ctx.append(_reload_ctx(settings.reload_seconds))

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    async def readyz(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ready"}', content_type=JSON)

    async def not_found(request: web.Request) -> web.StreamResponse:
        body = error_body(f"no route for {request.method} {request.path}", code="not_found")
        return web.Response(status=404, body=body, content_type=JSON)

    app.router.add_post("/mutate", _mutate(False))
    app.router.add_post("/mutate/namespace-enabled", _mutate(True))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def _reload_ctx(every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        certs = app[CERTS_KEY]

        async def check() -> None:
            certs.check()

        reload = Periodic("the certificate reload", check, every)
        reload.start()
        yield
        await reload.stop()

    return ctx
