"""The floor: the least a guarding proxy does per request, to compare the sidecar against.

`python -m bench.floor_proxy --port P --opa URL --redis URL --upstream URL` serves
`POST /v1/chat/completions` and, for each request, does only the steps no guard can skip:

1. read and parse the JSON body;
2. ask OPA for the same `data.hexarch.decision` the sidecar asks for (DESIGN.md input document,
   model and parameters from the body), over the sidecar's own decision client, and refuse with 403
   unless it allows;
3. one EVALSHA on Redis (a one-line INCR script, standing for the admission call);
4. forward the body to the upstream with aiohttp and return its reply.

No principal, no limits, no settlement, no metrics, no decision log, no error shape: whatever the
sidecar adds on top of this is its own overhead, and whatever this adds over a direct call is the
price of the policy engine and the counter store on this machine. `bench.latency` runs it beside the
sidecar in the same interleaved loop.

With `--bare` it does steps 1 and 4 only (no OPA, no Redis): the `passthrough` path of the bench,
what any aiohttp proxy in Python adds on this machine before it guards anything.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis
from aiohttp import web

from sidecar.errors import PolicyEngineError
from sidecar.opa_client import OpaClient

PATH = "/v1/chat/completions"
_INCR = "return redis.call('INCR', KEYS[1])"

OPA_KEY: web.AppKey[OpaClient] = web.AppKey("opa", OpaClient)
REDIS_KEY: web.AppKey[redis.Redis] = web.AppKey("redis", redis.Redis)
SCRIPT_KEY: web.AppKey[str] = web.AppKey("script", str)
SESSION_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def decision_input(body: dict[str, Any]) -> dict[str, Any]:
    """The input document the sidecar builds for an anonymous OpenAI chat call."""
    model = body.get("model")
    max_tokens = body.get("max_tokens")
    params: dict[str, Any] = {k: body[k] for k in ("temperature", "top_p", "max_tokens") if k in body}
    if max_tokens is not None:
        params["num_predict"] = params["max_completion_tokens"] = max_tokens
    estimate: dict[str, Any] = {"prompt_tokens": 10}
    if max_tokens is not None:
        estimate["max_output_tokens"] = max_tokens
    return {
        "request": {"id": "floor", "method": "POST", "path": PATH, "api": "openai.chat"},
        "principal": {"id": "anonymous", "team": None, "roles": [], "tier": None, "authenticated": False},
        "resources": [model, "*"] if isinstance(model, str) else ["*"],
        "operation": "chat",
        "resource_type": None,
        "feature": None,
        "confirmed": False,
        "model": model,
        "params": params,
        "estimate": estimate,
    }


def create_app(opa_url: str, redis_url: str, upstream_url: str, *, bare: bool = False) -> web.Application:
    app = web.Application()

    async def bare_client(app: web.Application) -> AsyncIterator[None]:
        app[SESSION_KEY] = aiohttp.ClientSession()
        yield
        await app[SESSION_KEY].close()

    async def clients(app: web.Application) -> AsyncIterator[None]:
        opa = OpaClient(opa_url, 1000)
        await opa.start()
        client = redis.Redis.from_url(redis_url)
        app[OPA_KEY] = opa
        app[REDIS_KEY] = client
        app[SCRIPT_KEY] = await client.script_load(_INCR)
        app[SESSION_KEY] = aiohttp.ClientSession()
        yield
        await app[SESSION_KEY].close()
        await client.aclose()
        await opa.close()

    async def forward(request: web.Request, raw: bytes) -> web.StreamResponse:
        async with request.app[SESSION_KEY].post(
            upstream_url.rstrip("/") + PATH, data=raw, headers={"Content-Type": "application/json"}
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    async def passthrough(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        orjson.loads(raw)  # a proxy reads the body it forwards
        return await forward(request, raw)

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        try:
            decision = await request.app[OPA_KEY].decide(decision_input(body))
        except PolicyEngineError as exc:
            return web.Response(status=503, text=str(exc))
        if decision.get("allow") is not True:
            return web.Response(status=403, body=orjson.dumps(decision))
        await request.app[REDIS_KEY].evalsha(request.app[SCRIPT_KEY], 1, "hexarch-floor")
        return await forward(request, raw)

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app.cleanup_ctx.append(bare_client if bare else clients)
    app.router.add_post(PATH, passthrough if bare else handle)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--opa", default="", help="OPA base URL (not with --bare)")
    parser.add_argument("--redis", default="", help="Redis URL (not with --bare)")
    parser.add_argument("--bare", action="store_true", help="parse and forward only: no OPA, no Redis")
    parser.add_argument("--upstream", required=True, help="model base URL")
    args = parser.parse_args(argv)
    if not args.bare and not (args.opa and args.redis):
        parser.error("--opa and --redis are needed unless --bare")
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # the sidecar's event loop, so the comparison is like for like
        loop = asyncio.new_event_loop()
    app = create_app(args.opa, args.redis, args.upstream, bare=args.bare)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
