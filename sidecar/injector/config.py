"""What the injector adds to a pod: read from the injector's YAML config (the chart renders it).

One table, `FIELDS`, drives the accepted keys, their defaults and docs/kubernetes.md. Unknown keys
and wrong types are refused at start-up, so no key is accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sidecar.injector.errors import ConfigError

FAIL_MODES = ("fail_closed", "fail_open")
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"memory": "256Mi"},
}


@dataclass(frozen=True)
class InjectorConfig:
    # image of the `hexarch` container (its entrypoint is `hexarch`)
    sidecar_image: str = "ghcr.io/hexarch/hexarch:latest"
    # image of the OPA container (its entrypoint is `opa`)
    opa_image: str = "openpolicyagent/opa:1.22.2-static"
    image_pull_policy: str = "IfNotPresent"
    # port of the sidecar in the pod; apps get OPENAI_BASE_URL=http://127.0.0.1:<port>/v1
    sidecar_port: int = 8080
    # port of the sidecar's admin listener (/metrics, the policy bundle): OPA and Prometheus use it
    admin_port: int = 9090
    # port of OPA, bound to 127.0.0.1 in the pod (only the sidecar talks to it)
    opa_port: int = 8181
    # Redis for the counters (HEXARCH_REDIS_URL of the sidecar)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # "SECRET/KEY": take HEXARCH_REDIS_URL from this Secret in the pod's namespace instead of
    # redis_url (for URLs with a password: the URL then never appears in a ConfigMap or pod spec)
    redis_url_secret: str = ""
    # ConfigMap holding the policy (key `policy_key`); annotation hexarch.io/policy-configmap overrides
    policy_configmap: str = "hexarch-policy"
    policy_key: str = "hexarch.yaml"
    # fail_closed | fail_open; annotation hexarch.io/fail-mode overrides
    fail_mode: str = "fail_closed"
    # add the two containers as init containers with restartPolicy Always (Kubernetes >= 1.29)
    native_sidecars: bool = True
    # resources of the sidecar container; annotation hexarch.io/sidecar-resources (JSON) overrides
    sidecar_resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    opa_resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    # seconds between OPA's polls of the sidecar's bundle (min, max)
    bundle_polling_min_seconds: int = 1
    bundle_polling_max_seconds: int = 2


# key -> Python type, from the dataclass annotations (strings under `from __future__ import annotations`)
_TYPES: Mapping[str, type] = {
    f.name: {"str": str, "int": int, "bool": bool}.get(str(f.type), dict) for f in fields(InjectorConfig)
}


def parse_config(data: Mapping[str, Any]) -> InjectorConfig:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TYPES:
            raise ConfigError(f"unknown injector config key '{key}' (known: {', '.join(sorted(_TYPES))})")
        want = _TYPES[key]
        if want is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"injector config '{key}' must be an integer, not {value!r}")
        if want is not int and not isinstance(value, want):
            raise ConfigError(f"injector config '{key}' must be a {want.__name__}, not {value!r}")
        values[key] = value
    config = InjectorConfig(**values)
    if config.fail_mode not in FAIL_MODES:
        raise ConfigError(f"injector config 'fail_mode' must be one of {', '.join(FAIL_MODES)}")
    for key in ("sidecar_port", "admin_port", "opa_port"):
        if not 0 < getattr(config, key) < 65536:
            raise ConfigError(f"injector config '{key}' must be a port (1-65535)")
    if len({config.sidecar_port, config.admin_port, config.opa_port}) != 3:
        raise ConfigError("injector config 'sidecar_port', 'admin_port' and 'opa_port' must differ")
    if not 1 <= config.bundle_polling_min_seconds <= config.bundle_polling_max_seconds:
        raise ConfigError(
            "injector config needs 1 <= bundle_polling_min_seconds <= bundle_polling_max_seconds"
        )
    if config.redis_url_secret and len(config.redis_url_secret.split("/")) != 2:
        raise ConfigError("injector config 'redis_url_secret' must be SECRET/KEY, e.g. hexarch-redis/url")
    for key in ("sidecar_resources", "opa_resources"):
        check_resources(getattr(config, key), f"injector config '{key}'")
    return config


def check_resources(value: Any, what: str) -> None:
    """Resources are {requests?: {name: quantity}, limits?: {name: quantity}} with string quantities."""
    if not isinstance(value, Mapping) or not set(value) <= {"requests", "limits"}:
        raise ConfigError(f"{what} must be an object with 'requests' and/or 'limits'")
    for part in value.values():
        if not isinstance(part, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
            for k, v in part.items()
        ):
            raise ConfigError(f'{what}: requests/limits must map resource names to quantities like "100m"')


def load_config(path: str | None) -> InjectorConfig:
    if path is None:
        return InjectorConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read injector config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"injector config {path} must be a mapping of keys to values")
    return parse_config(data)
