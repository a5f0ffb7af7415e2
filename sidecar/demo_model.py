"""`hexarch demo-model`: a small, deterministic model server speaking the OpenAI and Ollama APIs.

It is the far end of the test suite, the demo (`hexarch up --demo`) and the benchmarks, so every
answer is a pure function of the request and the settings:

* prompt tokens = ceil(characters of the prompt text / 4) (messages' contents, or the prompt);
* completion tokens = min(requested maximum, `tokens_per_reply`), where the requested maximum is
  `max_completion_tokens` / `max_tokens` (OpenAI) or `options.num_predict` / `num_predict` (Ollama);
* the reply is the first `completion tokens` words of a fixed sentence, one word per stream chunk.

Injected faults: `latency_ms` before the first byte, `token_interval_ms` between stream chunks and
`failure_rate` (seeded, so a run is reproducible) turning model calls into `fail_status` errors (500),
`reset_after_chunks` resetting the connection mid-stream after that many chunks. A request may force
them with `X-Demo-Status: <code>` and `X-Demo-Latency-Ms: <ms>`. `GET /demo/stats` reports what
reached the server (counts by path and the last requests' bodies); `POST /demo/reset` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import random
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MODELS = ("tinyllama", "tinyllama:latest")
EMBEDDING_DIMENSIONS = 8
RECENT_REQUESTS = 100
_REPLY = (
    "Hexarch demo model reply: policies decide, the sidecar enforces, Redis counts, and this "
    "deterministic text stands in for a real language model answer so tests can compare usage "
    "exactly across runs without any randomness at all."
)
_WORDS = tuple(_REPLY.split(" "))
# A silent MPEG-1 Layer III frame header (128 kbit/s, 44.1 kHz), enough for clients that sniff it.
_MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 413

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class DemoSettings:
    host: str = "127.0.0.1"
    port: int = 11434
    latency_ms: float = 0.0
    token_interval_ms: float = 0.0
    failure_rate: float = 0.0
    fail_status: int = 500  # the status an injected failure answers with (429, 503...)
    reset_after_chunks: int = 0  # >0: a stream's connection is reset after this many chunks
    seed: int = 0
    tokens_per_reply: int = 16
    model: str = "tinyllama"


@dataclass
class DemoState:
    """Mutable per-app state: the seeded fault generator and what reached the server."""

    settings: DemoSettings
    rng: random.Random
    by_path: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    tokens_served: int = 0
    streams_interrupted: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    sequence: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_path.values()),
            "by_path": dict(self.by_path),
            "failures": self.failures,
            "tokens_served": self.tokens_served,
            "streams_interrupted": self.streams_interrupted,
            "recent": list(self.recent),
        }

    def reset(self) -> None:
        self.by_path.clear()
        self.recent.clear()
        self.failures = self.tokens_served = self.streams_interrupted = 0
        self.rng = random.Random(self.settings.seed)


STATE_KEY: web.AppKey[DemoState] = web.AppKey("demo_state", DemoState)


# ---------------------------------------------------------------------------------------------
# Deterministic usage


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def content_text(content: Any) -> str:
    """Text of a message content: a string, or OpenAI content parts (only `text` parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part
        )
    return ""


def messages_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    return "".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def reply_words(count: int) -> list[str]:
    """The reply split into stream pieces; joining them gives the full reply text."""
    return [(" " if i else "") + _WORDS[i % len(_WORDS)] for i in range(count)]


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, int(value))


def completion_tokens(settings: DemoSettings, *limits: Any) -> tuple[int, str]:
    """(tokens, finish reason): the first numeric limit caps the configured reply length."""
    for limit in limits:
        cap = _positive_int(limit)
        if cap is not None:
            if cap < settings.tokens_per_reply:
                return cap, "length"
            break
    return settings.tokens_per_reply, "stop"


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0 * 2 - 1, 6) for b in digest[:EMBEDDING_DIMENSIONS]]


# ---------------------------------------------------------------------------------------------
# Plumbing


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def openai_error(status: int, message: str, type_: str = "server_error") -> web.Response:
    body = {"error": {"message": message, "type": type_, "code": type_, "param": None}}
    return json_response(body, status)


def ollama_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the JSON body must be an object")
    return body


def _created_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class _Fault(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def admit(request: web.Request, body: dict[str, Any]) -> tuple[DemoState, int]:
    """Record the request (its sequence number is returned), apply latency, and raise `_Fault`
    when a failure is injected."""
    state = request.app[STATE_KEY]
    state.by_path[request.path] += 1
    state.sequence += 1
    seq = state.sequence
    state.recent.append({"seq": state.sequence, "method": request.method, "path": request.path, "body": body})
    delay_ms = state.settings.latency_ms
    forced_latency = request.headers.get("X-Demo-Latency-Ms")
    if forced_latency is not None:
        delay_ms = float(forced_latency)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    forced = request.headers.get("X-Demo-Status")
    if forced is not None and forced.isdigit() and int(forced) >= 400:
        state.failures += 1
        raise _Fault(int(forced))
    if state.settings.failure_rate > 0 and state.rng.random() < state.settings.failure_rate:
        state.failures += 1
        raise _Fault(state.settings.fail_status)
    return state, seq


async def stream_lines(
    request: web.Request, state: DemoState, content_type: str, lines: Iterator[bytes]
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await resp.prepare(request)
    interval = state.settings.token_interval_ms / 1000
    try:
        reset_after = state.settings.reset_after_chunks
        for i, line in enumerate(lines):
            if interval and i:
                await asyncio.sleep(interval)
            if reset_after and i == reset_after and request.transport is not None:
                state.streams_interrupted += 1
                request.transport.abort()  # a connection reset mid-stream
                return resp
            await resp.write(line)
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        # The client (or the sidecar in front) went away mid-stream; tests assert on this count.
        state.streams_interrupted += 1
        raise
    return resp


def _reply(state: DemoState, body: dict[str, Any], *limits: Any) -> tuple[str, list[str], str]:
    """(model, reply pieces, finish reason) of a generation; its tokens are counted as served."""
    n, finish = completion_tokens(state.settings, *limits)
    state.tokens_served += n
    return str(body.get("model") or state.settings.model), reply_words(n), finish


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# ---------------------------------------------------------------------------------------------
# OpenAI API


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class _Envelope:
    """The fields every OpenAI reply object and stream chunk of one completion share."""

    ident: str
    kind: str  # the `object` field
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def __call__(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = {"id": self.ident, "object": self.kind, "created": self.created, "model": self.model}
        return {**head, "choices": choices, **extra}


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, seq = await admit(request, body)
    prompt = count_tokens(messages_text(body.get("messages")))
    model, words, finish = _reply(state, body, body.get("max_completion_tokens"), body.get("max_tokens"))
    n = len(words)
    if not body.get("stream"):
        reply = _Envelope(f"chatcmpl-demo-{seq}", "chat.completion", model)
        message = {"role": "assistant", "content": "".join(words)}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return json_response(reply([choice], usage=_usage(prompt, n)))
    envelope = _Envelope(f"chatcmpl-demo-{seq}", "chat.completion.chunk", model)
    include_usage = _include_usage(body)
    # With include_usage, OpenAI sends `"usage": null` on every chunk but the last.
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], reason: str | None) -> bytes:
        return sse(
            envelope([{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}], **usage_field)
        )

    def lines() -> Iterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        for word in words:
            yield chunk({"content": word}, None)
        yield chunk({}, finish)
        if include_usage:
            yield sse(envelope([], usage=_usage(prompt, n)))
        yield b"data: [DONE]\n\n"

    return await stream_lines(request, state, "text/event-stream", lines())


async def openai_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, seq = await admit(request, body)
    prompt = count_tokens(prompt_text(body.get("prompt")))
    model, words, finish = _reply(state, body, body.get("max_tokens"))
    n = len(words)
    envelope = _Envelope(f"cmpl-demo-{seq}", "text_completion", model)

    def choice(text: str, reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}

    if not body.get("stream"):
        return json_response(envelope([choice("".join(words), finish)], usage=_usage(prompt, n)))

    def lines() -> Iterator[bytes]:
        for i, word in enumerate(words):
            yield sse(envelope([choice(word, finish if i == len(words) - 1 else None)]))
        if not words:
            yield sse(envelope([choice("", finish)]))
        if _include_usage(body):
            yield sse(envelope([], usage=_usage(prompt, n)))
        yield b"data: [DONE]\n\n"

    return await stream_lines(request, state, "text/event-stream", lines())


async def openai_embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    await admit(request, body)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else [str(x) for x in raw] if isinstance(raw, list) else []
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = embedding(text)
        value: Any = vector
        if as_base64:
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    prompt = sum(count_tokens(t) for t in inputs)
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": str(body.get("model") or "demo-embed"),
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
    )


async def openai_models(request: web.Request) -> web.StreamResponse:
    owned = [{"id": m, "object": "model", "created": 0, "owned_by": "hexarch-demo"} for m in MODELS]
    return json_response({"object": "list", "data": owned})


# ---------------------------------------------------------------------------------------------
# Ollama API (and the TinyLlama app of the seed guide, which shares /api/chat)


def _ollama_limit(body: dict[str, Any]) -> Any:
    options = body.get("options")
    if isinstance(options, dict) and "num_predict" in options:
        return options["num_predict"]
    return body.get("num_predict", body.get("max_tokens"))


def _ollama_final(model: str, prompt: int, n: int, finish: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _created_at(),
        "done": True,
        "done_reason": finish,
        "total_duration": 1000 * (n + 1),
        "load_duration": 0,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 1000,
        "eval_count": n,
        "eval_duration": 1000 * n,
    }


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, _seq = await admit(request, body)
    app_style = "messages" not in body and isinstance(body.get("message"), str)
    if app_style:
        # The TinyLlama app's own /api/chat: {"message", "system"?, "temperature"?, "num_predict"?}.
        text = str(body.get("system") or "") + str(body["message"])
        prompt = count_tokens(text)
    else:
        prompt = count_tokens(messages_text(body.get("messages")))
    model, words, finish = _reply(state, body, _ollama_limit(body))
    n = len(words)
    if app_style:
        return json_response(
            {
                "response": "".join(words),
                "model": model,
                "prompt_tokens": prompt,
                "completion_tokens": n,
                "total_tokens": prompt + n,
            }
        )
    final = _ollama_final(model, prompt, n, finish)
    if body.get("stream") is False:
        final["message"] = {"role": "assistant", "content": "".join(words)}
        return json_response(final)

    def lines() -> Iterator[bytes]:
        for word in words:
            yield (
                orjson.dumps(
                    {
                        "model": model,
                        "created_at": _created_at(),
                        "message": {"role": "assistant", "content": word},
                        "done": False,
                    }
                )
                + b"\n"
            )
        final["message"] = {"role": "assistant", "content": ""}
        yield orjson.dumps(final) + b"\n"

    return await stream_lines(request, state, "application/x-ndjson", lines())


async def ollama_generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, _seq = await admit(request, body)
    prompt = count_tokens(str(body.get("system") or "") + prompt_text(body.get("prompt")))
    model, words, finish = _reply(state, body, _ollama_limit(body))
    n = len(words)
    final = _ollama_final(model, prompt, n, finish)
    final["context"] = list(range(prompt + n))[:64]
    if body.get("stream") is False:
        final["response"] = "".join(words)
        return json_response(final)

    def lines() -> Iterator[bytes]:
        for word in words:
            yield (
                orjson.dumps({"model": model, "created_at": _created_at(), "response": word, "done": False})
                + b"\n"
            )
        final["response"] = ""
        yield orjson.dumps(final) + b"\n"

    return await stream_lines(request, state, "application/x-ndjson", lines())


async def ollama_embed(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, _seq = await admit(request, body)
    raw = body.get("input", body.get("prompt"))
    inputs = [raw] if isinstance(raw, str) else [str(x) for x in raw] if isinstance(raw, list) else []
    model = str(body.get("model") or state.settings.model)
    vectors = [embedding(t) for t in inputs]
    if request.path == "/api/embeddings":  # the legacy single-prompt endpoint
        return json_response({"embedding": vectors[0] if vectors else []})
    return json_response(
        {"model": model, "embeddings": vectors, "prompt_eval_count": sum(count_tokens(t) for t in inputs)}
    )


async def ollama_tags(request: web.Request) -> web.StreamResponse:
    details = {"format": "gguf", "family": "llama", "parameter_size": "1.1B", "quantization_level": "Q4_0"}
    models = [
        {
            "name": m if ":" in m else f"{m}:latest",
            "model": m if ":" in m else f"{m}:latest",
            "modified_at": "2024-01-01T00:00:00Z",
            "size": 637700138,
            "digest": hashlib.sha256(m.encode()).hexdigest(),
            "details": details,
        }
        for m in MODELS[1:]
    ]
    return json_response({"models": models})


async def app_chat_with_voice(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state, _seq = await admit(request, body)
    _model, words, _finish = _reply(state, body, _ollama_limit(body))
    n = len(words)
    # One silent frame per reply word: the size is deterministic and grows with the reply.
    audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + _MP3_FRAME * max(1, n)
    return web.Response(
        body=audio,
        content_type="audio/mpeg",
        headers={"X-Reply-Text": "".join(words), "X-Completion-Tokens": str(n)},
    )


async def app_models(request: web.Request) -> web.StreamResponse:
    return json_response({"models": list(MODELS), "default": request.app[STATE_KEY].settings.model})


async def app_stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return json_response(
        {
            "total_requests": sum(state.by_path.values()),
            "tokens_used": state.tokens_served,
            "api_calls_today": sum(state.by_path.values()),
        }
    )


async def health(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok", "model": request.app[STATE_KEY].settings.model})


async def demo_stats(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE_KEY].snapshot())


async def demo_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    return json_response({"reset": True})


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad JSON and injected failures, in the error shape of the API the path belongs to."""
    openai = request.path.startswith("/v1/")
    try:
        return await handler(request)
    except web.HTTPBadRequest as exc:
        message = exc.text or "bad request"
        return openai_error(400, message, "invalid_request_error") if openai else ollama_error(400, message)
    except _Fault as fault:
        message = "demo model: injected failure"
        return openai_error(fault.status, message) if openai else ollama_error(fault.status, message)


def create_demo_app(settings: DemoSettings) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = DemoState(settings=settings, rng=random.Random(settings.seed))
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/completions", openai_completions)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/api/chat", ollama_chat)
    app.router.add_post("/api/generate", ollama_generate)
    app.router.add_post("/api/embed", ollama_embed)
    app.router.add_post("/api/embeddings", ollama_embed)
    app.router.add_get("/api/tags", ollama_tags)
    app.router.add_post("/api/chat-with-voice", app_chat_with_voice)
    app.router.add_get("/api/models", app_models)
    app.router.add_get("/api/stats", app_stats)
    app.router.add_get("/health", health)
    app.router.add_get("/demo/stats", demo_stats)
    app.router.add_post("/demo/reset", demo_reset)
    return app


# ---------------------------------------------------------------------------------------------
# Command line


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    return DemoSettings(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        token_interval_ms=args.token_interval_ms,
        failure_rate=args.failure_rate,
        fail_status=args.fail_status,
        reset_after_chunks=args.reset_after_chunks,
        seed=args.seed,
        tokens_per_reply=args.tokens_per_reply,
        model=args.model,
    )


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        pass
    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    print(
        f"hexarch demo model on http://{settings.host}:{settings.port} "
        f"(latency {settings.latency_ms} ms, failure rate {settings.failure_rate})",
        flush=True,
    )
    web.run_app(
        create_demo_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        loop=loop,
    )
    return 0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo-model",
        help="run the deterministic demo model server (OpenAI and Ollama APIs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="default: 11434, Ollama's port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte")
    parser.add_argument("--token-interval-ms", type=float, default=0.0, help="delay between stream chunks")
    parser.add_argument("--failure-rate", type=_rate, default=0.0, help="share of model calls that get a 500")
    parser.add_argument("--fail-status", type=int, default=500, help="status of injected failures (e.g. 429)")
    parser.add_argument(
        "--reset-after-chunks", type=int, default=0, help="reset stream connections after N chunks (0: never)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure generator")
    parser.add_argument("--tokens-per-reply", type=int, default=16, help="reply length in tokens (words)")
    parser.add_argument("--model", default="tinyllama", help="model name reported by /health")
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """`python -m sidecar.demo_model`: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="hexarch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo-model", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
