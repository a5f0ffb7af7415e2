"""Sidecar settings: `sidecar:`, upstream sections, `logging:` and `opa:` of hexarch.yaml, plus env.

The sidecar reads the same file as the compiler. Each top-level section has one owner: the compiler
reads `policies`, `enforcement`, `timezone`, `pricing`, `defaults` and `custom`; this module is the
only reader of `sidecar:`, `logging:`, `opa:` and the upstream sections (any top-level mapping with a
`base_url` or a seed-style `api_url`). It validates them with the compiler's reader
(compiler/reader.py: the same located messages and hints) and returns frozen dataclasses;
`file_diagnostics` is what `hexarch check | test | compile` run beside the compiler. SETTINGS_DOCS
lists every accepted key, its variable and default; docs/sidecar.md's table is generated from it.
Precedence, lowest first: built-in defaults, the file, `HEXARCH_*` environment
variables, command-line flags (passed in as the same `HEXARCH_*` names). Every problem is
collected before `SettingsError` is raised.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from compiler.diagnostics import Diagnostic, did_you_mean
from compiler.errors import PolicyError
from compiler.parse import Node, parse_file
from compiler.reader import Reader
from compiler.validate import EXTENSION_PREFIX, TOP_LEVEL_KEYS, UPSTREAM_URL_KEYS
from sidecar.errors import SettingsError
from sidecar.hardening import KEYS as HARDENING_KEYS
from sidecar.hardening import HardeningSettings
from sidecar.hardening import apply_env as _hardening_env
from sidecar.hardening import read_section as _hardening_section

FAIL_MODES = ("fail_closed", "fail_open")
# Who decides a request (sidecar/decision_engine.py): the OPA server, or its Wasm build in-process.
DECISION_ENGINES = ("opa", "wasm")
UPSTREAM_APIS = ("openai", "ollama", "gemini", "anthropic", "yandexgpt", "gigachat")
KEY_TYPES = ("api_key", "iam_token")
# Which body adapter a route uses; see sidecar/ingress.py.
ROUTE_APIS = (
    "openai.chat",
    "openai.completions",
    "openai.embeddings",
    "openai.models",
    "ollama.chat",
    "ollama.generate",
    "ollama.tags",
    "anthropic.messages",
    "json",
    "none",
)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# Top-level keys that belong to the compiler: never treated as upstream sections.
COMPILER_KEYS = frozenset(TOP_LEVEL_KEYS)
ENV_FILE = "<environment>"
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True)
class UpstreamSettings:
    name: str
    base_url: str  # server root, without a trailing slash
    api: str = "openai"
    model: str | None = None
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    api_key_env: str | None = None  # name of the variable; the secret itself is read at start-up
    retries: int = 0
    fallback: tuple[str, ...] = ()
    supports_stream_usage: bool = True
    breaker_failures: int = 5  # consecutive failed attempts that open the circuit (0: never)
    breaker_seconds: float = 10.0  # how long an open circuit skips this upstream
    max_tokens_param: str | None = None  # None: chosen by host (see `token_cap_param`)
    # Seed-style sections (`api_url`, `internal_url`, `default_*`, `retry_*`): base_url is the
    # internal_url when given (where the sidecar forwards), public_url the api_url clients know.
    public_url: str | None = None
    default_temperature: float | None = None  # filled into requests that set no temperature
    default_max_tokens: int | None = None  # filled into requests that name no output maximum
    models: tuple[str, ...] = ()  # globs of the request models this upstream serves (routing by model)
    api_key_file: str | None = None  # a file holding the key (read at start-up, like api_key_env)
    folder_id: str | None = None  # yandexgpt: the folder in modelUri and x-folder-id
    key_type: str = "api_key"  # yandexgpt: the key is an API key (Api-Key) or an IAM token (Bearer)
    auth_url: str | None = None  # gigachat: the OAuth token endpoint
    scope: str | None = None  # gigachat: the OAuth scope (GIGACHAT_API_PERS, _B2B, _CORP)
    # first retry delay (seed spelling: retry_delay_seconds); doubles per retry, at most 1 s or
    # the delay itself, plus up to half of it again as jitter
    backoff_seconds: float = 0.05
    deadline_seconds: float = 60.0  # the whole chain (retries, fallbacks, backoff) before the first byte
    ca_file: str | None = None  # PEM bundle the provider's TLS certificate is checked against
    verify_tls: bool = True  # False: the provider's certificate is not checked (GigaChat's own CA)

    @property
    def token_cap_param(self) -> str:
        """The body field an output cap the sidecar adds to an OpenAI chat request goes in.

        OpenAI's own API refuses `max_tokens` for its reasoning models and reads
        `max_completion_tokens`; most OpenAI-compatible servers read `max_tokens`.
        """
        if self.max_tokens_param is not None:
            return self.max_tokens_param
        host = urlsplit(self.base_url).hostname or ""
        return "max_completion_tokens" if host == "api.openai.com" else "max_tokens"

    def __repr__(self) -> str:  # never print more than the variable name of the secret
        return f"UpstreamSettings(name={self.name!r}, base_url={self.base_url!r}, api={self.api!r})"


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes = field(repr=False)  # sha256 of the key; the key itself is never stored
    team: str | None = None
    roles: tuple[str, ...] = ()
    tier: str | None = None


@dataclass(frozen=True)
class AnonymousSettings:
    enabled: bool = False
    id: str = "anonymous"
    team: str | None = None
    roles: tuple[str, ...] = ()
    tier: str | None = None


@dataclass(frozen=True)
class TrustedHeaders:
    enabled: bool = False
    user: str = "X-Hexarch-User"
    team: str = "X-Hexarch-Team"
    roles: str = "X-Hexarch-Roles"
    tier: str = "X-Hexarch-Tier"
    resource_owner: str = "X-Hexarch-Resource-Owner"  # fills input.resource_owner (`@self`)


@dataclass(frozen=True)
class RouteSettings:
    path: str
    methods: tuple[str, ...]
    api: str
    resources: tuple[str, ...] = ()
    operation: str | None = None
    feature: str | None = None
    resource_type: str | None = None
    upstream: str | None = None  # None with guard=False: answered by the sidecar itself
    upstream_path: str | None = None
    model: str | None = None
    guard: bool = True  # False: no principal, no decision, no counters (health checks)


@dataclass(frozen=True)
class Settings:
    source: str | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    opa_url: str = "http://127.0.0.1:8181"
    opa_timeout_ms: int = 250
    opa_decision_path: str = "hexarch/decision"
    redis_url: str = "redis://127.0.0.1:6379/0"
    fail_mode: str = "fail_closed"
    decision_engine: str = "opa"
    timezone: str = "UTC"
    max_body_bytes: int = 4 * 1024 * 1024
    default_upstream: str | None = None
    builtin_routes: bool = True
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    api_keys: tuple[ApiKey, ...] = ()
    anonymous: AnonymousSettings = field(default_factory=AnonymousSettings)
    trusted_headers: TrustedHeaders = field(default_factory=TrustedHeaders)
    routes: tuple[RouteSettings, ...] = ()
    policy_file: str | None = None
    serve_bundle: bool = False
    bundle_check_seconds: float = 1.0
    log_decisions: bool = True  # sidecar.log_decisions and logging.enabled
    log_level: str = "info"
    log_file: str | None = None  # decision log file (absolute); None: stdout
    log_format: str = "json"
    log_prompts: bool = False
    opa_health_check_seconds: float = 0.0  # 0: /readyz asks OPA on every probe
    opa_bundle_polling_seconds: int | None = None  # None: each launcher's own default
    hardening: HardeningSettings = field(default_factory=HardeningSettings)


# --------------------------------------------------------------------------------------------
# Located-value helpers
# --------------------------------------------------------------------------------------------


class _Collector:
    """The shared Reader (compiler/reader.py), with the defaults settings fall back to.

    Each reader returns the default when the key is absent or wrong (the problem is recorded), so
    one pass collects every problem and still builds a complete Settings.
    """

    def __init__(self, static: bool = False) -> None:
        self.reader = Reader(ENV_FILE)
        # static: checking the file alone (`hexarch check`), where the variables that will hold the
        # secrets at run time need not be set
        self.static = static

    @property
    def errors(self) -> list[Diagnostic]:
        return self.reader.diags

    def add(self, diag: Diagnostic) -> None:
        self.reader.add(diag)

    def mapping(self, node: Node, allowed: tuple[str, ...], what: str) -> bool:
        """True when `node` is a mapping; reports every key outside `allowed`."""
        if not self.reader.mapping(node, what):
            return False
        self.reader.check_keys(node, allowed, what)
        return True

    def string(
        self, node: Node | None, default: str | None = None, *, choices: tuple[str, ...] = ()
    ) -> str | None:
        value = self.reader.choice(node, choices) if choices else self.reader.string(node)
        return default if value is None else value

    def boolean(self, node: Node | None, default: bool) -> bool:
        value = self.reader.boolean(node)
        return default if value is None else value

    def number(
        self, node: Node | None, default: float, *, minimum: float = 0, integer: bool = False
    ) -> float:
        if integer:
            whole = self.reader.integer(node, minimum=int(minimum))
            return default if whole is None else float(whole)
        value = self.reader.number(node, minimum=minimum)
        return default if value is None else float(value)

    def strings(self, node: Node | None) -> tuple[str, ...]:
        """A string or a list of strings (maybe empty); () when absent or wrong."""
        return self.reader.strings(node, allow_empty=True) or ()

    def url(self, node: Node | None, default: str, schemes: tuple[str, ...]) -> str:
        value = self.string(node, default)
        assert value is not None
        if node is not None and not _valid_url(value, schemes):
            self.add(
                node.diag(f"'{value}' is not a valid URL", f"expected {' or '.join(schemes)}://host[:port]")
            )
            return default
        return value


def _valid_url(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in schemes:
        return False
    if parts.scheme.endswith("+cluster"):
        return bool(parts.netloc)  # host:port[,host:port...]
    if not port_ok:
        return False
    return parts.scheme == "unix" or bool(parts.hostname)


_LISTEN = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+)?:)?(?P<port>\d{1,5})$")


def parse_listen(text: str) -> tuple[str, int] | None:
    """`host:port`, `:port` or `port` -> (host, port); None when malformed."""
    match = _LISTEN.match(text.strip())
    if not match:
        return None
    port = int(match.group("port"))
    if not 0 < port < 65536:
        return None
    host = (match.group("host") or "127.0.0.1").strip("[]")
    return host, port


def _truthy(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

UPSTREAM_KEYS = (
    "base_url",
    "api_url",
    "internal_url",
    "default_model",
    "default_temperature",
    "default_max_tokens",
    "retry_attempts",
    "retry_delay_seconds",
    "api",
    "model",
    "timeout_seconds",
    "connect_timeout_seconds",
    "api_key_env",
    "retries",
    "fallback",
    "supports_stream_usage",
    "breaker_failures",
    "breaker_seconds",
    "max_tokens_param",
    "models",
    "api_key_file",
    "folder_id",
    "key_type",
    "auth_url",
    "scope",
    "backoff_seconds",
    "deadline_seconds",
    "ca_file",
    "verify_tls",
    "description",
)
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")
LOGGING_KEYS = ("enabled", "level", "file", "format", "log_prompts")
OPA_KEYS = (
    "url",
    "timeout_ms",
    "timeout_seconds",
    "decision_path",
    "health_check_interval",
    "bundle_polling_seconds",
)
# Two spellings of one setting: give one (the seed files use the second).
SYNONYMS = (
    ("base_url", "api_url"),
    ("model", "default_model"),
    ("retries", "retry_attempts"),
    ("backoff_seconds", "retry_delay_seconds"),
    ("timeout_ms", "timeout_seconds"),
)
SIDECAR_KEYS = (
    "listen",
    "redis_url",
    "fail_mode",
    "decision_engine",
    "max_body_bytes",
    "default_upstream",
    "builtin_routes",
    "anonymous",
    "trusted_headers",
    "api_keys",
    "routes",
    "policy_file",
    "serve_bundle",
    "log_decisions",
    "hardening",
)
ANONYMOUS_KEYS = ("enabled", "id", "team", "roles", "tier")
TRUSTED_KEYS = ("enabled", "user", "team", "roles", "tier", "resource_owner")
API_KEY_KEYS = ("id", "sha256", "key_env", "team", "roles", "tier", "description")
ROUTE_KEYS = (
    "path",
    "methods",
    "resource",
    "operation",
    "feature",
    "resource_type",
    "upstream",
    "upstream_path",
    "api",
    "model",
    "guard",
    "description",
)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _one_of(node: Node, c: _Collector) -> None:
    """Report a section that gives both spellings of one setting."""
    for first, second in SYNONYMS:
        if node.get(first) is not None and node.get(second) is not None:
            second_node = node.get(second)
            assert second_node is not None
            c.add(second_node.diag(f"'{second}' and '{first}' are the same setting", "give one of them"))


def _upstream(name: str, node: Node, c: _Collector) -> UpstreamSettings | None:
    if not c.mapping(node, UPSTREAM_KEYS, f"upstream '{name}'"):
        return None
    _one_of(node, c)
    schemes = ("http", "https")
    public_node = node.get("api_url")
    public = c.url(public_node, "http://127.0.0.1", schemes) if public_node is not None else None
    base_node = node.get("base_url")
    base = c.url(base_node, "http://127.0.0.1", schemes) if base_node is not None else public
    internal_node = node.get("internal_url")
    if internal_node is not None:
        base = c.url(internal_node, "http://127.0.0.1", schemes)
    assert base is not None  # the section has base_url or api_url, or it is no upstream section
    api = c.string(node.get("api"), "openai", choices=UPSTREAM_APIS) or "openai"
    env_node = node.get("api_key_env")
    key_env = c.string(env_node)
    if env_node is not None and key_env is not None and not _ENV_NAME.match(key_env):
        c.add(env_node.diag(f"'{key_env}' is not an environment variable name"))
    fallback_node = node.get("fallback")
    fallback = c.strings(fallback_node)
    temperature_node = node.get("default_temperature")
    temperature = c.reader.number(temperature_node, minimum=0) if temperature_node is not None else None
    max_tokens_node = node.get("default_max_tokens")
    max_tokens = c.reader.integer(max_tokens_node, minimum=1) if max_tokens_node is not None else None
    retries = node.get("retries") or node.get("retry_attempts")
    backoff = node.get("backoff_seconds") or node.get("retry_delay_seconds")
    if api == "yandexgpt" and node.get("folder_id") is None:
        c.add(
            node.diag(
                f"upstream '{name}' (api: yandexgpt) needs folder_id", "modelUri is gpt://<folder_id>/<model>"
            )
        )
    return UpstreamSettings(
        name=name,
        base_url=base.rstrip("/"),
        api=api,
        model=c.string(node.get("model") or node.get("default_model")),
        timeout_seconds=c.number(node.get("timeout_seconds"), 30.0, minimum=0.001),
        connect_timeout_seconds=c.number(node.get("connect_timeout_seconds"), 5.0, minimum=0.001),
        api_key_env=key_env,
        retries=int(c.number(retries, 0, integer=True)),
        fallback=fallback,
        supports_stream_usage=c.boolean(node.get("supports_stream_usage"), True),
        breaker_failures=int(c.number(node.get("breaker_failures"), 5, integer=True)),
        breaker_seconds=c.number(node.get("breaker_seconds"), 10.0),
        max_tokens_param=c.string(node.get("max_tokens_param"), None, choices=MAX_TOKENS_PARAMS),
        public_url=public.rstrip("/") if public is not None else None,
        default_temperature=None if temperature is None else float(temperature),
        default_max_tokens=max_tokens,
        models=c.strings(node.get("models")),
        api_key_file=c.string(node.get("api_key_file")),
        folder_id=c.string(node.get("folder_id")),
        key_type=c.string(node.get("key_type"), "api_key", choices=KEY_TYPES) or "api_key",
        auth_url=_optional_url(node.get("auth_url"), c),
        scope=c.string(node.get("scope")),
        backoff_seconds=c.number(backoff, 0.05),
        deadline_seconds=c.number(node.get("deadline_seconds"), 60.0, minimum=0.001),
        ca_file=_readable_file(node.get("ca_file"), c),
        verify_tls=c.boolean(node.get("verify_tls"), True),
    )


def _readable_file(node: Node | None, c: _Collector) -> str | None:
    path = c.string(node)
    if path is not None and node is not None and not os.access(path, os.R_OK):
        c.add(node.diag(f"'{path}' is not a readable file"))
    return path


def _optional_url(node: Node | None, c: _Collector) -> str | None:
    return c.url(node, "", ("http", "https")) or None if node is not None else None


def _logging_section(node: Node, changes: dict[str, object], c: _Collector) -> None:
    if not c.mapping(node, LOGGING_KEYS, "logging"):
        return
    if not c.boolean(node.get("enabled"), True):
        changes["log_decisions"] = False
    changes["log_level"] = c.string(node.get("level"), Settings.log_level, choices=LOG_LEVELS)
    changes["log_format"] = c.string(node.get("format"), Settings.log_format, choices=LOG_FORMATS)
    changes["log_prompts"] = c.boolean(node.get("log_prompts"), False)
    file_node = node.get("file")
    log_file = c.string(file_node)
    if log_file is not None and file_node is not None:
        if not log_file.strip():
            c.add(file_node.diag("logging.file is empty", "remove it to log decisions to stdout"))
        else:
            # Relative to the file that names it, like policy_file and custom policies.
            changes["log_file"] = os.path.normpath(
                os.path.join(os.path.dirname(os.path.abspath(node.file)), os.path.expanduser(log_file))
            )


def _opa_section(opa: Node, changes: dict[str, object], c: _Collector) -> None:
    if not c.mapping(opa, OPA_KEYS, "opa"):
        return
    _one_of(opa, c)
    changes["opa_url"] = c.url(opa.get("url"), Settings.opa_url, ("http", "https")).rstrip("/")
    seconds_node = opa.get("timeout_seconds")
    if seconds_node is not None:
        seconds = c.reader.number(seconds_node, minimum=0.001)
        if seconds is not None:
            changes["opa_timeout_ms"] = max(1, round(float(seconds) * 1000))
    else:
        changes["opa_timeout_ms"] = int(
            c.number(opa.get("timeout_ms"), Settings.opa_timeout_ms, minimum=1, integer=True)
        )
    path = c.string(opa.get("decision_path"), Settings.opa_decision_path)
    changes["opa_decision_path"] = (path or Settings.opa_decision_path).strip("/").replace(".", "/")
    changes["opa_health_check_seconds"] = c.number(opa.get("health_check_interval"), 0.0)
    polling_node = opa.get("bundle_polling_seconds")
    if polling_node is not None:
        polling = c.reader.integer(polling_node, minimum=1)
        if polling is not None:
            changes["opa_bundle_polling_seconds"] = polling


def _api_key(node: Node, env: Mapping[str, str], c: _Collector) -> ApiKey | None:
    if not c.mapping(node, API_KEY_KEYS, "api key"):
        return None
    ident = c.string(node.get("id"))
    if ident is None and node.get("id") is None:
        c.add(node.diag("an API key needs an 'id' (the user it stands for)"))
    sha_node, env_node = node.get("sha256"), node.get("key_env")
    digest: bytes | None = None
    if (sha_node is None) == (env_node is None):
        c.add(
            node.diag(
                "an API key needs exactly one of 'sha256' or 'key_env'",
                "sha256: hex digest of the key (`printf %s KEY | sha256sum`); key_env: variable holding it",
            )
        )
    elif sha_node is not None:
        text = c.string(sha_node)
        if text is not None and not _HEX64.match(text):
            c.add(sha_node.diag("sha256 must be 64 hexadecimal characters", "`printf %s KEY | sha256sum`"))
        elif text is not None:
            digest = bytes.fromhex(text)
    elif env_node is not None:
        name = c.string(env_node)
        if name is not None:
            secret = env.get(name)
            if not secret and c.static:
                digest = hashlib.sha256(name.encode()).digest()
            elif not secret:
                c.add(env_node.diag(f"environment variable {name} is not set (or empty)"))
            else:
                digest = hashlib.sha256(secret.encode()).digest()
    if ident is None or digest is None:
        return None
    return ApiKey(
        id=ident,
        digest=digest,
        team=c.string(node.get("team")),
        roles=c.strings(node.get("roles")),
        tier=c.string(node.get("tier")),
    )


def _route(node: Node, c: _Collector) -> RouteSettings | None:
    if not c.mapping(node, ROUTE_KEYS, "route"):
        return None
    path_node = node.get("path")
    path = c.string(path_node)
    if path_node is None:
        c.add(node.diag("a route needs a 'path'"))
    elif path is not None and not path.startswith("/"):
        c.add(path_node.diag(f"route path '{path}' must start with '/'"))
        path = None
    elif path is not None:
        problem = _path_problem(path)
        if problem is not None:
            c.add(path_node.diag(f"route path '{path}' is not a valid pattern: {problem}"))
            path = None
    api = c.string(node.get("api"), None, choices=ROUTE_APIS)
    methods_node = node.get("methods")
    methods = tuple(m.upper() for m in c.strings(methods_node))
    for method in methods:
        if method not in HTTP_METHODS:
            assert methods_node is not None
            c.add(methods_node.diag(f"unknown HTTP method '{method}'", did_you_mean(method, HTTP_METHODS)))
    guard = c.boolean(node.get("guard"), True)
    if api is None:
        api = "json" if not methods or any(m in ("POST", "PUT", "PATCH") for m in methods) else "none"
    if not methods:
        methods = ("POST",) if api not in ("none", "openai.models", "ollama.tags") else ("GET",)
    resources = c.strings(node.get("resource"))
    upstream_path_node = node.get("upstream_path")
    upstream_path = c.string(upstream_path_node)
    if upstream_path is not None and upstream_path_node is not None:
        if not upstream_path.startswith("/"):
            c.add(upstream_path_node.diag(f"upstream_path '{upstream_path}' must start with '/'"))
        else:
            plain = PLAIN_PLACEHOLDER.sub("", upstream_path)
            defined = _placeholders(path) if path else set()
            missing = set(PLAIN_PLACEHOLDER.findall(upstream_path)) - defined
            if "{" in plain or "}" in plain:
                message = f"upstream_path '{upstream_path}' may only use plain {{name}} placeholders"
                c.add(upstream_path_node.diag(message))
            elif missing:
                message = f"upstream_path uses {{{sorted(missing)[0]}}}, which the route path does not define"
                hint = f"the path defines: {', '.join(sorted(defined)) or 'no placeholders'}"
                c.add(upstream_path_node.diag(message, hint))
    if path is None:
        return None
    return RouteSettings(
        path=path,
        methods=methods,
        api=api,
        resources=resources,
        operation=c.string(node.get("operation")),
        feature=c.string(node.get("feature")),
        resource_type=c.string(node.get("resource_type")),
        upstream=c.string(node.get("upstream")),
        upstream_path=upstream_path,
        model=c.string(node.get("model")),
        guard=guard,
    )


PLAIN_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*)?\}")


def _placeholders(pattern: str) -> set[str]:
    """Names of `{name}` / `{name:regex}` placeholders in a route pattern."""
    return set(_PLACEHOLDER.findall(pattern))


def _path_problem(path: str) -> str | None:
    """Why aiohttp's router would refuse `path`, or None."""
    from aiohttp import web

    try:
        web.UrlDispatcher().add_resource(path)
    except ValueError as exc:
        return str(exc)
    stripped = _PLACEHOLDER.sub("", path)
    if "{" in stripped or "}" in stripped:
        return "unbalanced '{' or '}'"
    return None


def _principal_fields(node: Node | None, keys: tuple[str, ...], what: str, c: _Collector) -> Node | None:
    if node is None:
        return None
    return node if c.mapping(node, keys, what) else None


def _from_tree(root: Node, env: Mapping[str, str], c: _Collector) -> Settings:
    settings = Settings(source=root.file)
    if root.kind != "mapping":
        c.add(root.diag("hexarch.yaml must be a mapping at the top level"))
        return settings
    changes: dict[str, object] = {}

    tz = root.get("timezone")
    if tz is not None and isinstance(tz.value, str):
        changes["timezone"] = tz.value
    opa = root.get("opa")
    if opa is not None:
        _opa_section(opa, changes, c)
    logging_node = root.get("logging")
    if logging_node is not None:
        _logging_section(logging_node, changes, c)

    upstreams: dict[str, UpstreamSettings] = {}
    upstream_nodes: dict[str, Node] = {}
    for key, value in root.items():
        name = str(key.value)
        if name in COMPILER_KEYS or name.startswith(EXTENSION_PREFIX):
            continue
        if value.kind != "mapping" or all(value.get(k) is None for k in UPSTREAM_URL_KEYS):
            continue  # not an upstream section: the compiler reports the unknown key
        upstream = _upstream(name, value, c)
        if upstream is not None:
            upstreams[name] = upstream
            upstream_nodes[name] = value
    for name, upstream in upstreams.items():
        fallback_node = upstream_nodes[name].get("fallback")
        for other in upstream.fallback:
            if other not in upstreams or other == name:
                assert fallback_node is not None
                c.add(
                    fallback_node.diag(
                        f"fallback '{other}' is not another upstream section",
                        did_you_mean(other, set(upstreams) - {name}),
                    )
                )
    changes["upstreams"] = upstreams

    has_policies = root.get("policies") is not None
    changes["policy_file"] = root.file if has_policies else None
    changes["serve_bundle"] = has_policies

    side = root.get("sidecar")
    if side is not None and c.mapping(side, SIDECAR_KEYS, "sidecar"):
        _sidecar_section(side, env, upstreams, changes, c)
    elif "default_upstream" not in changes and len(upstreams) >= 1:
        changes["default_upstream"] = next(iter(upstreams))
    return replace(settings, **changes)  # type: ignore[arg-type]


def _sidecar_section(
    side: Node,
    env: Mapping[str, str],
    upstreams: Mapping[str, UpstreamSettings],
    changes: dict[str, object],
    c: _Collector,
) -> None:
    listen_node = side.get("listen")
    listen = c.string(listen_node)
    if listen is not None and listen_node is not None:
        parsed = parse_listen(listen)
        if parsed is None:
            c.add(
                listen_node.diag(
                    f"'{listen}' is not a listen address", "expected host:port, e.g. 127.0.0.1:8080"
                )
            )
        else:
            changes["listen_host"], changes["listen_port"] = parsed
    if side.get("redis_url") is not None:
        changes["redis_url"] = c.url(side.get("redis_url"), Settings.redis_url, REDIS_SCHEMES)
    changes["fail_mode"] = c.string(side.get("fail_mode"), Settings.fail_mode, choices=FAIL_MODES)
    changes["decision_engine"] = c.string(
        side.get("decision_engine"), Settings.decision_engine, choices=DECISION_ENGINES
    )
    changes["max_body_bytes"] = int(
        c.number(side.get("max_body_bytes"), Settings.max_body_bytes, minimum=1, integer=True)
    )
    changes["builtin_routes"] = c.boolean(side.get("builtin_routes"), True)
    if not c.boolean(side.get("log_decisions"), True):
        changes["log_decisions"] = False
    hardening_node = side.get("hardening")
    if hardening_node is not None:
        changes["hardening"] = _hardening_section(
            hardening_node, c.add, lambda n: c.mapping(n, HARDENING_KEYS, "sidecar.hardening")
        )

    default_node = side.get("default_upstream")
    default = c.string(default_node)
    if default is not None and default not in upstreams:
        assert default_node is not None
        c.add(
            default_node.diag(
                f"default_upstream '{default}' is not an upstream section",
                did_you_mean(default, upstreams) or _upstream_hint(upstreams),
            )
        )
        default = None
    if default is None and upstreams:
        default = next(iter(upstreams))
    changes["default_upstream"] = default

    anon = _principal_fields(side.get("anonymous"), ANONYMOUS_KEYS, "sidecar.anonymous", c)
    if anon is not None:
        changes["anonymous"] = AnonymousSettings(
            enabled=c.boolean(anon.get("enabled"), True),
            id=c.string(anon.get("id"), "anonymous") or "anonymous",
            team=c.string(anon.get("team")),
            roles=c.strings(anon.get("roles")),
            tier=c.string(anon.get("tier")),
        )
    trusted = _principal_fields(side.get("trusted_headers"), TRUSTED_KEYS, "sidecar.trusted_headers", c)
    if trusted is not None:
        base = TrustedHeaders()
        changes["trusted_headers"] = TrustedHeaders(
            enabled=c.boolean(trusted.get("enabled"), True),
            user=c.string(trusted.get("user"), base.user) or base.user,
            team=c.string(trusted.get("team"), base.team) or base.team,
            roles=c.string(trusted.get("roles"), base.roles) or base.roles,
            tier=c.string(trusted.get("tier"), base.tier) or base.tier,
            resource_owner=c.string(trusted.get("resource_owner"), base.resource_owner)
            or base.resource_owner,
        )

    keys_node = side.get("api_keys")
    if keys_node is not None:
        if keys_node.kind != "sequence":
            c.add(keys_node.diag("api_keys must be a list of {id, sha256 | key_env, team, roles, tier}"))
        else:
            keys = [k for k in (_api_key(n, env, c) for n in keys_node.elements()) if k is not None]
            seen: set[str] = set()
            for node, key in zip(keys_node.elements(), keys, strict=False):
                if key.id in seen:
                    c.add(node.diag(f"duplicate API key id '{key.id}'"))
                seen.add(key.id)
            changes["api_keys"] = tuple(keys)

    routes_node = side.get("routes")
    if routes_node is not None:
        if routes_node.kind != "sequence":
            c.add(
                routes_node.diag(
                    "routes must be a list of {path, methods, resource, operation, upstream, ...}"
                )
            )
        else:
            routes: list[RouteSettings] = []
            taken: dict[tuple[str, str], int] = {}
            for node in routes_node.elements():
                route = _route(node, c)
                if route is None:
                    continue
                upstream_node = node.get("upstream")
                if route.upstream is not None and route.upstream not in upstreams:
                    assert upstream_node is not None
                    c.add(
                        upstream_node.diag(
                            f"upstream '{route.upstream}' is not an upstream section",
                            did_you_mean(route.upstream, upstreams) or _upstream_hint(upstreams),
                        )
                    )
                if route.upstream is None and route.guard and default is None:
                    c.add(
                        node.diag("this route has no upstream and there is no upstream section to default to")
                    )
                for method in route.methods:
                    if (route.path, method) in taken:
                        c.add(
                            node.diag(
                                f"{method} {route.path} is already routed at line {taken[route.path, method]}"
                            )
                        )
                    taken[(route.path, method)] = node.line
                routes.append(route)
            changes["routes"] = tuple(routes)

    policy_node = side.get("policy_file")
    policy_file = c.string(policy_node)
    if policy_file is not None:
        base_dir = os.path.dirname(side.file)
        changes["policy_file"] = os.path.normpath(os.path.join(base_dir, policy_file))
    changes["serve_bundle"] = c.boolean(side.get("serve_bundle"), bool(changes.get("policy_file")))
    if changes["serve_bundle"] and not changes.get("policy_file"):
        serve_node = side.get("serve_bundle")
        assert serve_node is not None
        c.add(serve_node.diag("serve_bundle needs policies in this file or a policy_file"))


def _upstream_hint(upstreams: Mapping[str, UpstreamSettings]) -> str:
    if not upstreams:
        return "declare one as a top-level section with a base_url"
    return f"upstream sections: {', '.join(upstreams)}"


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _env_diag(name: str, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(ENV_FILE, 1, 1, name, message, hint)


def _apply_env(settings: Settings, env: Mapping[str, str], c: _Collector) -> Settings:
    changes: dict[str, object] = {}

    def text(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def url(name: str, schemes: tuple[str, ...]) -> str | None:
        value = text(name)
        if value is not None and not _valid_url(value, schemes):
            c.add(
                _env_diag(
                    name,
                    f"{name}='{value}' is not a valid URL",
                    f"expected {' or '.join(schemes)}://host[:port]",
                )
            )
            return None
        return value

    def flag(name: str) -> bool | None:
        value = text(name)
        if value is None:
            return None
        parsed = _truthy(value)
        if parsed is None:
            c.add(_env_diag(name, f"{name}='{value}' is not true or false"))
        return parsed

    def integer(name: str, minimum: int) -> int | None:
        value = text(name)
        if value is None:
            return None
        if not value.isdigit() or int(value) < minimum:
            c.add(_env_diag(name, f"{name}='{value}' is not an integer >= {minimum}"))
            return None
        return int(value)

    listen = text("HEXARCH_LISTEN")
    if listen is not None:
        parsed = parse_listen(listen)
        if parsed is None:
            c.add(_env_diag("HEXARCH_LISTEN", f"HEXARCH_LISTEN='{listen}' is not host:port"))
        else:
            changes["listen_host"], changes["listen_port"] = parsed
    if (opa := url("HEXARCH_OPA_URL", ("http", "https"))) is not None:
        changes["opa_url"] = opa.rstrip("/")
    if (timeout := integer("HEXARCH_OPA_TIMEOUT_MS", 1)) is not None:
        changes["opa_timeout_ms"] = timeout
    if (redis := url("HEXARCH_REDIS_URL", REDIS_SCHEMES)) is not None:
        changes["redis_url"] = redis
    fail_mode = text("HEXARCH_FAIL_MODE")
    if fail_mode is not None:
        if fail_mode not in FAIL_MODES:
            c.add(
                _env_diag(
                    "HEXARCH_FAIL_MODE",
                    f"HEXARCH_FAIL_MODE='{fail_mode}' is not one of {', '.join(FAIL_MODES)}",
                    did_you_mean(fail_mode, FAIL_MODES),
                )
            )
        else:
            changes["fail_mode"] = fail_mode
    engine = text("HEXARCH_DECISION_ENGINE")
    if engine is not None:
        if engine not in DECISION_ENGINES:
            c.add(
                _env_diag(
                    "HEXARCH_DECISION_ENGINE",
                    f"HEXARCH_DECISION_ENGINE='{engine}' is not one of {', '.join(DECISION_ENGINES)}",
                    did_you_mean(engine, DECISION_ENGINES),
                )
            )
        else:
            changes["decision_engine"] = engine
    if (max_body := integer("HEXARCH_MAX_BODY_BYTES", 1)) is not None:
        changes["max_body_bytes"] = max_body
    policy_file = text("HEXARCH_POLICY_FILE")
    if policy_file is not None:
        changes["policy_file"] = policy_file
        changes["serve_bundle"] = True
    if (serve := flag("HEXARCH_SERVE_BUNDLE")) is not None:
        changes["serve_bundle"] = serve
        if serve and not (policy_file or settings.policy_file):
            c.add(
                _env_diag(
                    "HEXARCH_SERVE_BUNDLE",
                    "HEXARCH_SERVE_BUNDLE=true needs a policy file",
                    "pass --config with policies or set HEXARCH_POLICY_FILE",
                )
            )
    decision_path = text("HEXARCH_OPA_DECISION_PATH")
    if decision_path is not None:
        changes["opa_decision_path"] = decision_path.strip("/").replace(".", "/")
    if (builtin := flag("HEXARCH_BUILTIN_ROUTES")) is not None:
        changes["builtin_routes"] = builtin
    if (log_decisions := flag("HEXARCH_LOG_DECISIONS")) is not None:
        changes["log_decisions"] = log_decisions
    anonymous_settings = settings.anonymous
    if (anonymous := flag("HEXARCH_ANONYMOUS")) is not None:
        anonymous_settings = replace(anonymous_settings, enabled=anonymous)
    if (anonymous_id := text("HEXARCH_ANONYMOUS_ID")) is not None:
        anonymous_settings = replace(anonymous_settings, id=anonymous_id)
    if anonymous_settings is not settings.anonymous:
        changes["anonymous"] = anonymous_settings
    if (trusted := flag("HEXARCH_TRUSTED_HEADERS")) is not None:
        changes["trusted_headers"] = replace(settings.trusted_headers, enabled=trusted)
    hardening = _hardening_env(settings.hardening, env, lambda name, msg: c.add(_env_diag(name, msg)))
    if hardening is not settings.hardening:
        changes["hardening"] = hardening

    upstreams = dict(settings.upstreams)
    default = settings.default_upstream
    chosen = text("HEXARCH_DEFAULT_UPSTREAM")
    if chosen is not None:
        if chosen not in upstreams:
            c.add(
                _env_diag(
                    "HEXARCH_DEFAULT_UPSTREAM",
                    f"HEXARCH_DEFAULT_UPSTREAM='{chosen}' is not an upstream section",
                    did_you_mean(chosen, upstreams) or _upstream_hint(upstreams),
                )
            )
        else:
            default = chosen
    upstream_url = url("HEXARCH_UPSTREAM_URL", ("http", "https"))
    upstream_api = text("HEXARCH_UPSTREAM_API")
    if upstream_api is not None and upstream_api not in UPSTREAM_APIS:
        c.add(
            _env_diag(
                "HEXARCH_UPSTREAM_API",
                f"HEXARCH_UPSTREAM_API='{upstream_api}' is not one of {', '.join(UPSTREAM_APIS)}",
            )
        )
        upstream_api = None
    if upstream_url is not None or upstream_api is not None:
        if default is None:
            # No upstream in the file: the environment declares one named "default".
            default = "default"
            upstreams[default] = UpstreamSettings(
                name=default, base_url="http://127.0.0.1:11434", api="openai"
            )
        current = upstreams[default]
        api = upstream_api or current.api
        upstreams[default] = replace(
            current,
            base_url=(upstream_url or current.base_url).rstrip("/"),
            api=api,
        )
    if upstreams != settings.upstreams or default != settings.default_upstream:
        changes["upstreams"] = upstreams
        changes["default_upstream"] = default
    return replace(settings, **changes)  # type: ignore[arg-type]


def load_settings(
    path: str | None, env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Settings from `path` (or defaults when None), then `env`, then `overrides` (same HEXARCH_* names).

    Raises SettingsError with every located problem found.
    """
    environment = dict(os.environ if env is None else env)
    if overrides:
        environment.update({k: v for k, v in overrides.items() if v is not None})
    c = _Collector()
    if path is None:
        path = environment.get("HEXARCH_CONFIG") or None
    settings = Settings()
    if path is not None:
        try:
            root = parse_file(path)
        except PolicyError as exc:
            raise SettingsError(exc.diagnostics) from exc
        settings = _from_tree(root, environment, c)
    settings = _apply_env(settings, environment, c)
    if settings.decision_engine == "wasm" and not settings.policy_file:
        # The Wasm engine compiles the bundle itself: it needs the policy the sidecar would serve.
        c.add(
            Diagnostic(
                settings.source or ENV_FILE,
                1,
                1,
                "decision_engine",
                "decision_engine: wasm needs the policy: policies in this file or a policy_file",
                "set sidecar.policy_file (or HEXARCH_POLICY_FILE), or use decision_engine: opa",
            )
        )
    if c.errors:
        raise SettingsError(c.errors)
    return settings


def file_diagnostics(path: str) -> list[Diagnostic]:
    """Every problem in the sections this module owns, without reading the environment.

    `hexarch check | test | compile` report these beside the compiler's own diagnostics. A file
    that does not parse gives [] here: the compiler reports the syntax error once.
    """
    try:
        root = parse_file(path)
    except PolicyError:
        return []
    c = _Collector(static=True)
    _from_tree(root, {}, c)
    return list(c.errors)


def upstream_secret(upstream: UpstreamSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The upstream's API key from its variable, read when the app starts (never stored in settings)."""
    if upstream.api_key_env is not None:
        source: Callable[[str], str | None] = (env or os.environ).get
        found = source(upstream.api_key_env)
        if found:
            return found
    if upstream.api_key_file is not None:
        try:
            with open(upstream.api_key_file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
    return None
