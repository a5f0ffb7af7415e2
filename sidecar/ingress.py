"""Ingress adapters: which endpoints exist, and what a request body means for the policy.

Each route has an `api` naming its body adapter (openai.chat, ollama.generate, json, none...). The
adapter turns the decoded body into the model name, the parameters under every spelling (so a bound
on `max_tokens` also holds for `num_predict`), the stream flag and a token estimate. Prompt tokens
are estimated as ceil(characters / 4) of the text the model will read; settling later replaces the
estimate with the upstream's real counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.errors import BadRequest
from sidecar.prompt_estimate import weighted_chars
from sidecar.settings import RouteSettings, Settings, UpstreamSettings


@dataclass(frozen=True)
class Endpoint:
    """A route resolved against the settings: everything the hot path needs, computed once."""

    path: str
    methods: tuple[str, ...]
    api: str
    operation: str
    resources: tuple[str, ...]
    feature: str | None
    resource_type: str | None
    upstream: UpstreamSettings | None
    upstream_path: str | None
    model: str | None
    guard: bool
    pinned: bool = False  # the route names its upstream: the request's model does not choose it

    @property
    def has_body(self) -> bool:
        return self.api not in ("none", "openai.models", "ollama.tags")


@dataclass
class Normalised:
    body: dict[str, Any] | None
    model: str | None
    params: dict[str, Any]
    prompt_tokens: int
    max_output_tokens: int | None  # what the request names (None: it names no maximum)
    stream: bool


# (path, api, operation) of the OpenAI- and Ollama-compatible endpoints.
BUILTIN_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("/v1/chat/completions", "POST", "openai.chat", "chat"),
    ("/v1/completions", "POST", "openai.completions", "completion"),
    ("/v1/embeddings", "POST", "openai.embeddings", "embedding"),
    ("/v1/models", "GET", "openai.models", "list_models"),
    ("/api/chat", "POST", "ollama.chat", "chat"),
    ("/api/generate", "POST", "ollama.generate", "generate"),
    ("/api/tags", "GET", "ollama.tags", "list_models"),
    ("/v1/messages", "POST", "anthropic.messages", "chat"),
)
DEFAULT_OPERATION = {api: op for _, _, api, op in BUILTIN_ROUTES} | {"json": "request", "none": "request"}

# Spellings of one parameter; the first name of each group is the normalised one, and every name of
# the `_ALL` groups is written into `params` so a rule on any spelling sees the value.
MAX_TOKENS_NAMES = (
    "max_tokens",
    "num_predict",
    "max_completion_tokens",
    "max_new_tokens",
    "max_output_tokens",
)
_MAX_TOKENS_ALL = ("max_tokens", "num_predict", "max_completion_tokens")
PARAM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("temperature",),
    ("top_p",),
    ("top_k",),
    ("stop", "stop_sequences"),
    ("seed",),
    ("presence_penalty",),
    ("frequency_penalty",),
    ("repeat_penalty", "repetition_penalty"),
    ("n",),
)
# Body fields that hold content, not parameters: counted as prompt text, never copied into params.
CONTENT_FIELDS = frozenset(
    {
        "messages",
        "prompt",
        "input",
        "images",
        "tools",
        "functions",
        "context",
        "suffix",
        "message",
        "options",
        "stream_options",
        "response_format",
        "format",
        "tool_choice",
    }
)


def resolve_endpoints(settings: Settings) -> list[Endpoint]:
    """Configured routes first, then the built-in ones whose path/method no route took."""
    endpoints: list[Endpoint] = []
    taken: set[tuple[str, str]] = set()
    default = settings.upstreams.get(settings.default_upstream) if settings.default_upstream else None
    for route in settings.routes:
        endpoints.append(_endpoint(route, settings, default))
        taken.update((route.path, m) for m in route.methods)
    if settings.builtin_routes:
        for path, method, api, operation in BUILTIN_ROUTES:
            if (path, method) in taken:
                continue
            endpoints.append(
                Endpoint(path, (method,), api, operation, (), None, None, default, None, None, True)
            )
    return endpoints


def _endpoint(route: RouteSettings, settings: Settings, default: UpstreamSettings | None) -> Endpoint:
    upstream = settings.upstreams[route.upstream] if route.upstream else (default if route.guard else None)
    return Endpoint(
        path=route.path,
        methods=route.methods,
        api=route.api,
        operation=route.operation or DEFAULT_OPERATION[route.api],
        resources=route.resources,
        feature=route.feature,
        resource_type=route.resource_type,
        upstream=upstream,
        upstream_path=route.upstream_path,
        model=route.model,
        guard=route.guard,
        pinned=route.upstream is not None,
    )


def decode_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


def _estimate(chars: int) -> int:
    return math.ceil(chars / 4)


def _text_chars(value: Any) -> int:
    """Characters of text in a message content / prompt / input value (strings, lists, parts)."""
    if isinstance(value, str):
        return weighted_chars(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                total += 4  # a token id (pre-tokenised input) counts as one token
            else:
                total += _text_chars(item)
        return total
    if isinstance(value, dict):
        text = value.get("text")
        if isinstance(text, str):
            return weighted_chars(text)
        content = value.get("content")
        return _text_chars(content) if content is not None else 0
    return 0


def _all_string_chars(value: Any) -> int:
    if isinstance(value, str):
        return weighted_chars(value)
    if isinstance(value, list):
        return sum(_all_string_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_all_string_chars(v) for v in value.values())
    return 0


def _system_texts(body: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                content = message.get("content")
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    texts.extend(
                        p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
    return texts


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (_is_number(a) and _is_number(b) and a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _collect_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Raw parameters of the body and of Ollama's `options`, plus normalised spellings.

    The same parameter given twice with different values (`temperature` at the top and in
    `options`, `max_tokens` and `num_predict`) is refused: whichever the upstream reads, the policy
    must have judged that one.
    """
    params: dict[str, Any] = {}
    sources: list[Mapping[str, Any]] = [body]
    options = body.get("options")
    if isinstance(options, dict):
        sources.append(options)
    elif options is not None:
        raise BadRequest("'options' must be an object", param="options", code="invalid_parameter")
    for source in sources:
        for name, value in source.items():
            if name in CONTENT_FIELDS or isinstance(value, dict):
                continue
            if name in params and not _same(params[name], value):
                raise BadRequest(
                    f"parameter '{name}' is given twice with different values",
                    param=name,
                    code="invalid_parameter",
                )
            params[name] = value
    for group in PARAM_GROUPS:
        _unify(params, group, group)
    _unify(params, MAX_TOKENS_NAMES, _MAX_TOKENS_ALL)
    return params


def _unify(params: dict[str, Any], names: tuple[str, ...], write: tuple[str, ...]) -> None:
    found = [(n, params[n]) for n in names if n in params]
    if not found:
        return
    first_name, value = found[0]
    for name, other in found[1:]:
        if not _same(value, other):
            raise BadRequest(
                f"'{first_name}' and '{name}' disagree ({value!r} vs {other!r}); give one",
                param=first_name,
                code="invalid_parameter",
            )
    for name in write:
        params[name] = value


def normalise(endpoint: Endpoint, body: dict[str, Any] | None) -> Normalised:
    try:
        return _normalise(endpoint, body)
    except RecursionError as exc:
        # orjson accepts ~1000 levels of nesting; walking them for text can exhaust the stack.
        raise BadRequest("request body is nested too deeply", code="invalid_json") from exc


def _normalise(endpoint: Endpoint, body: dict[str, Any] | None) -> Normalised:
    upstream_model = endpoint.upstream.model if endpoint.upstream else None
    if body is None:
        return Normalised(None, endpoint.model or upstream_model, {}, 0, 0, False)
    api = endpoint.api
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model", code="invalid_parameter")
    params = _collect_params(body)
    systems = _system_texts(body)
    if systems:
        params["system"] = "\n".join(systems)

    if api in ("openai.chat", "ollama.chat"):
        chars = _text_chars(body.get("messages")) + (
            len(body["system"]) if isinstance(body.get("system"), str) else 0
        )
        # The TinyLlama app's flat body: {"message": "...", "system": "...", "num_predict": ...}
        chars += _text_chars(body.get("message"))
        if isinstance(body.get("message"), str):
            params["message"] = body["message"]  # so `parameter: message` bounds can see it
    elif api in ("openai.completions", "ollama.generate"):
        chars = _text_chars(body.get("prompt")) + _text_chars(body.get("suffix"))
        chars += len(body["system"]) if isinstance(body.get("system"), str) else 0
    elif api == "openai.embeddings":
        chars = _text_chars(body.get("input"))
    else:
        chars = _all_string_chars(body)

    stream_default = api in ("ollama.chat", "ollama.generate") and not is_flat(body)
    stream_value = body.get("stream", stream_default)
    if not isinstance(stream_value, bool):
        raise BadRequest("'stream' must be true or false", param="stream", code="invalid_parameter")
    params["stream"] = stream_value

    max_output: int | None = None
    if "max_tokens" in params:
        value = params["max_tokens"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(
                f"max_tokens must be an integer, got {value!r}", param="max_tokens", code="invalid_parameter"
            )
        if value >= 0:
            max_output = value
        else:
            # Ollama reads a negative num_predict as "no limit": the request names no maximum.
            for name in _MAX_TOKENS_ALL:
                params.pop(name, None)
    if api == "openai.embeddings":
        max_output = 0
    return Normalised(
        body, model or endpoint.model or upstream_model, params, _estimate(chars), max_output, stream_value
    )


def resources_of(endpoint: Endpoint, model: str | None) -> list[str]:
    out = list(endpoint.resources)
    if endpoint.upstream is not None and endpoint.upstream.name not in out:
        out.append(endpoint.upstream.name)
    if model and model not in out:
        out.append(model)
    if "*" not in out:
        out.append("*")
    return out


def is_flat(body: Mapping[str, Any]) -> bool:
    """The TinyLlama app's flat chat body: a `message` string, parameters at the top, no stream."""
    return isinstance(body.get("message"), str) and "messages" not in body


FILLABLE_APIS = ("openai.chat", "openai.completions", "ollama.chat", "ollama.generate")


def _names_any(body: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    options = body.get("options")
    return any(n in body for n in names) or (isinstance(options, dict) and any(n in options for n in names))


def fill_defaults(endpoint: Endpoint, body: dict[str, Any]) -> bool:
    """The upstream section's `default_model`, `default_temperature` and `default_max_tokens`, written
    into a request that sets none of them (before the decision, so the policy judges what is sent).
    True when the body changed."""
    upstream = endpoint.upstream
    if upstream is None or endpoint.api not in FILLABLE_APIS:
        return False
    changed = False
    if upstream.model is not None and "model" not in body:
        body["model"] = upstream.model
        changed = True
    if upstream.default_temperature is not None and not _names_any(body, ("temperature",)):
        options = body.get("options")
        if endpoint.api.startswith("ollama.") and not is_flat(body):
            if not isinstance(options, dict):
                options = {}
                body["options"] = options
            options["temperature"] = upstream.default_temperature
        else:
            body["temperature"] = upstream.default_temperature
        changed = True
    if upstream.default_max_tokens is not None and not _names_any(body, MAX_TOKENS_NAMES):
        apply_token_cap(endpoint, body, upstream.default_max_tokens)
        changed = True
    return changed


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text the model reads (system, messages, prompt, message, input), for the decision log."""
    parts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            if isinstance(value.get("text"), str):
                parts.append(value["text"])
            elif "content" in value:
                collect(value["content"])

    for name in ("system", "messages", "prompt", "suffix", "message", "input"):
        collect(body.get(name))
    return "\n".join(parts)


def apply_token_cap(endpoint: Endpoint, body: dict[str, Any], cap: int) -> None:
    """Write an output cap into a body that named no maximum, in the spelling its upstream reads."""
    api = endpoint.api
    if is_flat(body) and api in ("ollama.chat", "ollama.generate"):
        body["num_predict"] = cap  # the TinyLlama app reads its parameters at the top
        return
    options = body.get("options")
    if api in ("ollama.chat", "ollama.generate") or (api == "json" and isinstance(options, dict)):
        if not isinstance(options, dict):
            options = {}
            body["options"] = options
        options["num_predict"] = cap
        for name in MAX_TOKENS_NAMES:
            if name != "num_predict":
                body.pop(name, None)
        return
    upstream = endpoint.upstream
    if api == "json" and upstream is not None and upstream.api == "ollama":
        body["num_predict"] = cap
    elif api == "openai.chat" and upstream is not None:
        body[upstream.token_cap_param] = cap
    else:
        body["max_tokens"] = cap
    for name in MAX_TOKENS_NAMES:
        if name in body and body[name] != cap:
            body[name] = cap


def request_stream_usage(endpoint: Endpoint, body: dict[str, Any]) -> bool:
    """Ask an OpenAI-style upstream to end a stream with a usage chunk. True when the body changed."""
    if endpoint.api not in ("openai.chat", "openai.completions") or endpoint.upstream is None:
        return False
    if not endpoint.upstream.supports_stream_usage:
        return False
    options = body.get("stream_options")
    if isinstance(options, dict):
        if options.get("include_usage") is True:
            return False
        body["stream_options"] = {**options, "include_usage": True}
    else:
        body["stream_options"] = {"include_usage": True}
    return True
