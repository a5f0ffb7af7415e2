"""The chart's webhook configuration installed in a real kube-apiserver (with etcd), pointed at a
running `hexarch injector`: pods created through the API and read back as stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.conftest import Injector, webhook_config
from tests.support.kube import KubeApi
from tests.support.servers import free_port

WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
PLAIN_NS = "apps"
LABELLED_NS = "apps-injected"
PROPAGATION_SECONDS = 30.0


def pod(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "example.com/app:1"}]}
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": body,
    }


def names(items: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in items or []]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def until(check: Any, what: str) -> None:
    """Webhook configurations reach the API server's admission chain through an informer: wait."""
    deadline = time.monotonic() + PROPAGATION_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {PROPAGATION_SECONDS}s: {what}")
        time.sleep(0.2)


def dry_run(kube: KubeApi, ns: str, body: dict[str, Any]) -> Any:
    return kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body, dryRun="All")


def injected(kube: KubeApi) -> bool:
    resp = dry_run(kube, PLAIN_NS, pod("probe", {"hexarch.io/inject": "true"}))
    return resp.status_code == 201 and "hexarch" in names(resp.json()["spec"].get("initContainers"))


@pytest.fixture(scope="module")
def cluster(kube: KubeApi, injector: Injector, helm_bin: str) -> Iterator[KubeApi]:
    kube.create_namespace(PLAIN_NS)
    kube.create_namespace(LABELLED_NS, {"hexarch.io/inject": "enabled"})
    config = webhook_config(helm_bin, injector.url, injector.ca_bundle)
    kube.apply(config, WEBHOOKS)
    until(lambda: injected(kube), "the webhook injecting a probe pod")
    yield kube


def create(kube: KubeApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    kube.ok("POST", f"/api/v1/namespaces/{ns}/pods", body)
    return kube.ok("GET", f"/api/v1/namespaces/{ns}/pods/{body['metadata']['name']}")


def test_plain_annotated_pod_gets_native_sidecars_and_env(cluster: KubeApi) -> None:
    stored = create(cluster, PLAIN_NS, pod("plain", {"hexarch.io/inject": "true"}))
    spec = stored["spec"]
    assert names(spec["initContainers"]) == ["hexarch", "hexarch-opa"]
    assert all(c["restartPolicy"] == "Always" for c in spec["initContainers"])
    assert names(spec["containers"]) == ["app"]
    env = env_of(spec["containers"][0])
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["OLLAMA_HOST"] == "http://127.0.0.1:8080"
    sidecar = spec["initContainers"][0]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["hexarch-policy"]["configMap"]["name"] == "hx-hexarch-policy"
    assert stored["metadata"]["annotations"]["hexarch.io/injected"] == "true"
    assert stored["metadata"]["labels"]["hexarch.io/injected"] == "true"


def test_pod_with_init_containers_keeps_them_after_the_sidecars(cluster: KubeApi) -> None:
    body = pod(
        "with-init",
        {"hexarch.io/inject": "true"},
        initContainers=[{"name": "migrate", "image": "example.com/migrate:1"}],
    )
    spec = create(cluster, PLAIN_NS, body)["spec"]
    assert names(spec["initContainers"]) == ["hexarch", "hexarch-opa", "migrate"]
    assert "restartPolicy" not in spec["initContainers"][2]


def test_already_injected_pod_is_left_alone(cluster: KubeApi) -> None:
    first = create(cluster, PLAIN_NS, pod("first", {"hexarch.io/inject": "true"}))
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "again", "annotations": first["metadata"]["annotations"]},
        "spec": {k: first["spec"][k] for k in ("initContainers", "containers", "volumes")},
    }
    spec = create(cluster, PLAIN_NS, again)["spec"]
    assert names(spec["initContainers"]) == ["hexarch", "hexarch-opa"]
    assert [e["name"] for e in spec["containers"][0]["env"]] == ["OPENAI_BASE_URL", "OLLAMA_HOST"]
    assert [v["name"] for v in spec["volumes"]].count("hexarch-policy") == 1


def test_opted_out_and_unannotated_pods_are_not_injected(cluster: KubeApi) -> None:
    out = create(cluster, LABELLED_NS, pod("opted-out", {"hexarch.io/inject": "false"}))["spec"]
    assert "initContainers" not in out and "env" not in out["containers"][0]
    plain = create(cluster, PLAIN_NS, pod("not-asked"))["spec"]
    assert "initContainers" not in plain and "env" not in plain["containers"][0]


def test_pod_in_labelled_namespace_is_injected_and_keeps_its_own_base_url(cluster: KubeApi) -> None:
    body = pod("ns-labelled")
    body["spec"]["containers"][0]["env"] = [{"name": "OPENAI_BASE_URL", "value": "http://elsewhere/v1"}]
    spec = create(cluster, LABELLED_NS, body)["spec"]
    assert names(spec["initContainers"]) == ["hexarch", "hexarch-opa"]
    env = env_of(spec["containers"][0])
    assert env["OPENAI_BASE_URL"] == "http://elsewhere/v1"
    assert env["OLLAMA_HOST"] == "http://127.0.0.1:8080"


def test_annotation_overrides_policy_resources_and_fail_mode(cluster: KubeApi) -> None:
    body = pod(
        "overrides",
        {
            "hexarch.io/inject": "true",
            "hexarch.io/policy-configmap": "team-a-policy",
            "hexarch.io/fail-mode": "fail_open",
            "hexarch.io/sidecar-resources": '{"limits": {"memory": "512Mi"}}',
        },
    )
    spec = create(cluster, PLAIN_NS, body)["spec"]
    sidecar = spec["initContainers"][0]
    assert env_of(sidecar)["HEXARCH_FAIL_MODE"] == "fail_open"
    assert sidecar["resources"]["limits"] == {"memory": "512Mi"}  # requests default to limits
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["hexarch-policy"]["configMap"]["name"] == "team-a-policy"


def test_malformed_pod_is_refused_with_the_injectors_message(cluster: KubeApi) -> None:
    body = pod("bad-mode", {"hexarch.io/inject": "true", "hexarch.io/fail-mode": "sometimes"})
    resp = cluster.request("POST", f"/api/v1/namespaces/{PLAIN_NS}/pods", body)
    assert resp.status_code == 400
    message = resp.json()["message"]
    assert "hexarch injector: annotation hexarch.io/fail-mode='sometimes' is not one of" in message
    assert cluster.request("GET", f"/api/v1/namespaces/{PLAIN_NS}/pods/bad-mode").status_code == 404


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
def test_injector_down_follows_the_failure_policy(
    cluster: KubeApi, injector: Injector, helm_bin: str, policy: str
) -> None:
    dead = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    config = webhook_config(helm_bin, dead, injector.ca_bundle, f"injector.failurePolicy={policy}")
    assert {w["failurePolicy"] for w in config["webhooks"]} == {policy}
    cluster.apply(config, WEBHOOKS)
    try:
        until(lambda: not injected(cluster), "the webhook pointing at the stopped injector")
        resp = cluster.request(
            "POST",
            f"/api/v1/namespaces/{PLAIN_NS}/pods",
            pod(f"down-{policy.lower()}", {"hexarch.io/inject": "true"}),
        )
        if policy == "Ignore":
            assert resp.status_code == 201, resp.text
            assert "initContainers" not in resp.json()["spec"]
        else:
            assert resp.status_code == 500, resp.text
            assert "failed calling webhook" in resp.json()["message"]
    finally:
        cluster.apply(webhook_config(helm_bin, injector.url, injector.ca_bundle), WEBHOOKS)
        until(lambda: injected(cluster), "the webhook back on the running injector")


def test_helm_install_into_the_api_server_and_upgrade_keeps_the_certificate(
    cluster: KubeApi, helm_bin: str, tmp_path: Any
) -> None:
    """Every object of the chart is accepted by a real API server; NOTES.txt renders with the Redis
    password masked; an upgrade reuses the generated certificate (lookup) instead of rotating it."""
    import base64
    import subprocess

    import yaml

    from tests.k8s.conftest import CHART

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [
                    {"name": "test", "cluster": {"server": cluster.url, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "admin", "user": {"token": cluster.token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            }
        )
    )
    ns = "hexarch-real"
    base = [helm_bin, "--kubeconfig", str(kubeconfig), "-n", ns]
    values = [
        "--set",
        "redis.mode=external",
        "--set",
        "redis.externalUrl=redis://:s3cret@redis.example:6379/0",
        "--set",
        "injector.failurePolicy=Ignore",
    ]
    secret_path = f"/api/v1/namespaces/{ns}/secrets/real-hexarch-injector-tls"
    try:
        out = subprocess.run(
            [*base, "install", "real", str(CHART), "--create-namespace", *values],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert 'hexarch.io/inject: "true"' in out.stdout
        assert "redis://:***@redis.example:6379/0" in out.stdout and "s3cret" not in out.stdout, out.stdout
        first = cluster.ok("GET", secret_path)["data"]
        assert base64.b64decode(first["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
        kinds = {"deployments": "apps/v1", "poddisruptionbudgets": "policy/v1"}
        for plural, group in kinds.items():
            cluster.ok("GET", f"/apis/{group}/namespaces/{ns}/{plural}/real-hexarch-injector")
        out = subprocess.run(
            [*base, "upgrade", "real", str(CHART), *values], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert cluster.ok("GET", secret_path)["data"] == first
    finally:
        subprocess.run([*base, "uninstall", "real"], capture_output=True, timeout=120)
