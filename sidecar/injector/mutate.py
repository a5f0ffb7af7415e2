"""Deciding whether to inject a pod, and the JSONPatch that does it (pure functions, no I/O).

Selection. The chart registers two webhooks that differ only in their namespaceSelector and path:
`/mutate` for namespaces NOT labelled `hexarch.io/inject=enabled` (a pod is injected only when
annotated `hexarch.io/inject: "true"`), and `/mutate/namespace-enabled` for labelled namespaces (a pod
is injected unless annotated `hexarch.io/inject: "false"`). So the injector knows the namespace's
label from the path it was called on, and needs no API access (no RBAC on namespaces).

What is added: the `hexarch` container (`hexarch serve` with the policy ConfigMap mounted as a
directory, so ConfigMap updates are seen) and the `hexarch-opa` container (`opa run --server` on
127.0.0.1 polling the sidecar's bundle), as native sidecars (init containers with
`restartPolicy: Always`, first in order, so they start before the app's init containers and stop
after the app) or, with `native_sidecars: false`, as plain containers. Every app container gets
`OPENAI_BASE_URL` and `OLLAMA_HOST` pointing at the sidecar unless it sets them itself. The pod is
stamped `hexarch.io/injected: "true"` (annotation and label); a stamped pod, or one that already
has a `hexarch` container, is left alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.injector.config import FAIL_MODES, InjectorConfig, check_resources
from sidecar.injector.errors import ConfigError, MalformedPod

INJECT = "hexarch.io/inject"
INJECTED = "hexarch.io/injected"
POLICY_CONFIGMAP = "hexarch.io/policy-configmap"
FAIL_MODE = "hexarch.io/fail-mode"
SIDECAR_RESOURCES = "hexarch.io/sidecar-resources"
SIDECAR_NAME = "hexarch"
OPA_NAME = "hexarch-opa"
POLICY_VOLUME = "hexarch-policy"
WORK_VOLUME = "hexarch-work"
POLICY_DIR = "/etc/hexarch/policy"
WORK_DIR = "/var/lib/hexarch"
APP_ENV = ("OPENAI_BASE_URL", "OLLAMA_HOST")

SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Overrides:
    policy_configmap: str
    fail_mode: str
    sidecar_resources: Mapping[str, Any]


def wants_injection(pod: Mapping[str, Any], namespace_enabled: bool) -> bool:
    annotations = _annotations(pod)
    value = str(annotations.get(INJECT, "")).strip().lower()
    if value == "false":
        return False
    return value == "true" or namespace_enabled


def already_injected(pod: Mapping[str, Any]) -> bool:
    if str(_annotations(pod).get(INJECTED, "")).lower() == "true":
        return True
    spec = pod.get("spec") or {}
    names = {
        c.get("name")
        for key in ("containers", "initContainers")
        for c in (spec.get(key) or [])
        if isinstance(c, Mapping)
    }
    return SIDECAR_NAME in names


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def overrides(pod: Mapping[str, Any], config: InjectorConfig) -> Overrides:
    annotations = _annotations(pod)
    configmap = annotations.get(POLICY_CONFIGMAP, config.policy_configmap)
    if not isinstance(configmap, str) or not _dns_label(configmap):
        raise MalformedPod(f"annotation {POLICY_CONFIGMAP}='{configmap}' is not a ConfigMap name")
    fail_mode = annotations.get(FAIL_MODE, config.fail_mode)
    if fail_mode not in FAIL_MODES:
        raise MalformedPod(f"annotation {FAIL_MODE}='{fail_mode}' is not one of {', '.join(FAIL_MODES)}")
    resources: Any = config.sidecar_resources
    if SIDECAR_RESOURCES in annotations:
        try:
            resources = json.loads(str(annotations[SIDECAR_RESOURCES]))
            check_resources(resources, f"annotation {SIDECAR_RESOURCES}")
        except json.JSONDecodeError as exc:
            raise MalformedPod(
                f'annotation {SIDECAR_RESOURCES} is not JSON like {{"limits": {{"memory": "512Mi"}}}}: {exc}'
            ) from exc
        except ConfigError as exc:
            raise MalformedPod(str(exc)) from exc
    return Overrides(configmap, fail_mode, resources)


def _dns_label(name: str) -> bool:
    return 0 < len(name) <= 253 and all(
        part.replace("-", "a").isalnum() and part == part.lower() for part in name.split(".")
    )


def check_pod(pod: Any) -> None:
    """The shape the patch relies on; anything else is refused with a message naming the field."""
    if not isinstance(pod, Mapping):
        raise MalformedPod("the admission request has no pod object")
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise MalformedPod("pod has no spec")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise MalformedPod("pod spec has no containers: nothing to put the hexarch sidecar next to")
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise MalformedPod(f"pod spec.{key} is not a list")
        for i, c in enumerate(items):
            if not isinstance(c, Mapping) or not isinstance(c.get("name"), str) or not c["name"]:
                raise MalformedPod(f"pod spec.{key}[{i}] has no name")
            if c["name"] in (SIDECAR_NAME, OPA_NAME):
                continue
            if c.get("env") is not None and not isinstance(c.get("env"), list):
                raise MalformedPod(f"pod spec.{key}[{i}].env is not a list")
    volumes = spec.get("volumes")
    if volumes is not None and not isinstance(volumes, list):
        raise MalformedPod("pod spec.volumes is not a list")
    for v in volumes or []:
        if isinstance(v, Mapping) and v.get("name") in (POLICY_VOLUME, WORK_VOLUME):
            raise MalformedPod(f"pod already has a volume named {v.get('name')}, which the injector adds")


def sidecar_containers(config: InjectorConfig, o: Overrides) -> list[dict[str, Any]]:
    port = config.sidecar_port
    native = {"restartPolicy": "Always"} if config.native_sidecars else {}

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": port},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    sidecar: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": config.sidecar_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["serve", "--config", f"{POLICY_DIR}/{config.policy_key}"],
        "workingDir": WORK_DIR,
        "env": [
            {"name": "HEXARCH_LISTEN", "value": f"0.0.0.0:{port}"},
            # /metrics and the bundle answer only on the admin listener (docs/hardening.md)
            {"name": "HEXARCH_ADMIN_LISTEN", "value": f"0.0.0.0:{config.admin_port}"},
            {"name": "HEXARCH_OPA_URL", "value": f"http://127.0.0.1:{config.opa_port}"},
            _redis_env(config),
            {"name": "HEXARCH_FAIL_MODE", "value": o.fail_mode},
        ],
        "ports": [
            {"name": "hexarch", "containerPort": port, "protocol": "TCP"},
            {"name": "hexarch-admin", "containerPort": config.admin_port, "protocol": "TCP"},
        ],
        "startupProbe": probe("/healthz", 1, 60),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 3),
        "resources": dict(o.sidecar_resources),
        "securityContext": dict(SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": True},
            {"name": WORK_VOLUME, "mountPath": WORK_DIR},
        ],
        **native,
    }
    opa: dict[str, Any] = {
        "name": OPA_NAME,
        "image": config.opa_image,
        "imagePullPolicy": config.image_pull_policy,
        # OPA binds loopback only: nothing outside the pod can query or replace its policies.
        "args": [
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{config.opa_port}",
            "--optimize-store-for-read-speed",
            "--set",
            f"services.sidecar.url=http://127.0.0.1:{config.admin_port}",
            "--set",
            "bundles.hexarch.service=sidecar",
            "--set",
            "bundles.hexarch.resource=bundles/hexarch.tar.gz",
            "--set",
            f"bundles.hexarch.polling.min_delay_seconds={config.bundle_polling_min_seconds}",
            "--set",
            f"bundles.hexarch.polling.max_delay_seconds={config.bundle_polling_max_seconds}",
            "--set",
            "decision_logs.console=false",
        ],
        # As `hexarch up` runs it (docs/performance.md): one scheduler thread, fewer GC cycles.
        "env": [{"name": "GOMAXPROCS", "value": "1"}, {"name": "GOGC", "value": "400"}],
        "resources": dict(config.opa_resources),
        "securityContext": dict(SECURITY_CONTEXT),
        **native,
    }
    return [sidecar, opa]


def _redis_env(config: InjectorConfig) -> dict[str, Any]:
    if config.redis_url_secret:
        name, key = config.redis_url_secret.split("/")
        return {"name": "HEXARCH_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
    return {"name": "HEXARCH_REDIS_URL", "value": config.redis_url}


def volumes(o: Overrides) -> list[dict[str, Any]]:
    return [
        {"name": POLICY_VOLUME, "configMap": {"name": o.policy_configmap}},
        {"name": WORK_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def patch_for(pod: Any, config: InjectorConfig, namespace_enabled: bool) -> list[dict[str, Any]]:
    """The JSONPatch for this pod ([] when it is not to be injected or already is)."""
    if not isinstance(pod, Mapping):
        raise MalformedPod("the admission request has no pod object")
    if not wants_injection(pod, namespace_enabled) or already_injected(pod):
        return []
    check_pod(pod)
    o = overrides(pod, config)
    spec: Mapping[str, Any] = pod["spec"]
    ops: list[dict[str, Any]] = []
    added = sidecar_containers(config, o)
    key = "initContainers" if config.native_sidecars else "containers"
    app_containers: Sequence[Mapping[str, Any]] = spec["containers"]
    if spec.get(key):
        # Native sidecars go first so they run before the app's own init containers.
        at = 0 if config.native_sidecars else len(spec[key])
        for i, c in enumerate(added):
            ops.append({"op": "add", "path": f"/spec/{key}/{at + i}", "value": c})
    else:
        ops.append({"op": "add", "path": f"/spec/{key}", "value": added})
    if spec.get("volumes"):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes(o))
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes(o)})
    base = f"http://127.0.0.1:{config.sidecar_port}"
    wanted = {"OPENAI_BASE_URL": f"{base}/v1", "OLLAMA_HOST": base}
    for i, container in enumerate(app_containers):
        env = container.get("env") or []
        have = {e.get("name") for e in env if isinstance(e, Mapping)}
        new = [{"name": n, "value": v} for n, v in wanted.items() if n not in have]
        if not new:
            continue
        if env:
            ops.extend({"op": "add", "path": f"/spec/containers/{i}/env/-", "value": e} for e in new)
        else:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": new})
    metadata = pod.get("metadata") or {}
    # The annotation marks the pod as done; the label lets a PodMonitor find the sidecars.
    for field in ("annotations", "labels"):
        if metadata.get(field):
            ops.append({"op": "add", "path": f"/metadata/{field}/{_escape(INJECTED)}", "value": "true"})
        else:
            ops.append({"op": "add", "path": f"/metadata/{field}", "value": {INJECTED: "true"}})
    return ops
