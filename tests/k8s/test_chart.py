"""`helm lint` and `helm template` of helm/hexarch for the default values and the other supported
set-ups; every rendered manifest is valid against the Kubernetes schemas (kubernetes-validate,
offline, strict: unknown fields are errors)."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s.conftest import CHART, by_kind, helm_template
from tests.support.servers import ROOT

CERT_MANAGER = "cert-manager.io/v1"
MONITORING = "monitoring.coreos.com/v1"
# Custom resources: kubernetes-validate ships no schema for them; their fields are checked below.
CRD_KINDS = {"Issuer", "Certificate", "PodMonitor", "PrometheusRule"}

VALUE_SETS: dict[str, tuple[list[str], list[str]]] = {
    "default": ([], []),
    "external-redis": (["redis.mode=external", "redis.externalUrl=redis://:s3cret@redis.example:6379/0"], []),
    "redis-cluster": (["redis.mode=cluster", r"redis.clusterUrl=redis+cluster://r1:6379\,r2:6379"], []),
    "cert-manager": ([], [CERT_MANAGER]),
    "fail-open": (["sidecar.failMode=fail_open", "injector.failurePolicy=Ignore"], []),
    "monitoring": ([], [MONITORING]),
    "no-persistence-old-cluster": (
        ["redis.standalone.persistence.enabled=false", "injector.nativeSidecars=false"],
        [],
    ),
}


def render(name: str, helm: str) -> list[dict[str, Any]]:
    values, apis = VALUE_SETS[name]
    return helm_template(helm, values, apis)


def injector_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-injector"))
    config: dict[str, Any] = yaml.safe_load(cm["data"]["injector.yaml"])
    return config


def test_helm_lint(helm_bin: str) -> None:
    for name, (values, _apis) in VALUE_SETS.items():
        cmd = [helm_bin, "lint", "--strict", str(CHART)]
        for pair in values:
            cmd += ["--set", pair]
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_manifest_is_valid(helm_bin: str, name: str) -> None:
    docs = render(name, helm_bin)
    assert docs
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "hexarch", doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/instance") == "hx"
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] in (CERT_MANAGER, MONITORING)
            assert doc["spec"]
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_schema_rejects_bad_values(helm_bin: str) -> None:
    for pair, message in [
        ("injector.failurePolicy=Sometimes", "failurePolicy"),
        ("sidecar.failMode=open", "failMode"),
        ("redis.mode=cluster", "redis.clusterUrl is required"),
        ("injector.replicaCount=0", "replicaCount"),
        ("unknownKey=1", "unknownKey"),
    ]:
        out = subprocess.run(
            [helm_bin, "template", "hx", str(CHART), "--set", pair], capture_output=True, text=True
        )
        assert out.returncode != 0 and message in out.stderr, (pair, out.stderr)


def test_default_install_generates_tls_and_standalone_redis(helm_bin: str) -> None:
    docs = render("default", helm_bin)
    (secret,) = by_kind(docs, "Secret")
    (webhook_cfg,) = by_kind(docs, "MutatingWebhookConfiguration")
    ca = secret["data"]["ca.crt"]
    assert base64.b64decode(ca).startswith(b"-----BEGIN CERTIFICATE-----")
    assert {w["clientConfig"]["caBundle"] for w in webhook_cfg["webhooks"]} == {ca}
    assert {w["failurePolicy"] for w in webhook_cfg["webhooks"]} == {"Fail"}
    paths = {w["name"]: w["clientConfig"]["service"]["path"] for w in webhook_cfg["webhooks"]}
    assert paths == {"pods.hexarch.io": "/mutate", "namespace.hexarch.io": "/mutate/namespace-enabled"}
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    (statefulset,) = by_kind(docs, "StatefulSet")
    assert "--appendonly" in statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert statefulset["spec"]["volumeClaimTemplates"]
    config = injector_config(docs)
    assert config["redis_url"] == "redis://hx-hexarch-redis.hexarch-system.svc:6379/0"
    assert config["native_sidecars"] is True
    assert not by_kind(docs, "Issuer") and not by_kind(docs, "PodMonitor")
    assert not by_kind(docs, "Role") and not by_kind(docs, "ClusterRole")


def test_external_and_cluster_redis_reach_the_sidecars(helm_bin: str) -> None:
    external = render("external-redis", helm_bin)
    assert not by_kind(external, "StatefulSet")
    assert injector_config(external)["redis_url"] == "redis://:s3cret@redis.example:6379/0"
    cluster = render("redis-cluster", helm_bin)
    assert injector_config(cluster)["redis_url"] == "redis+cluster://r1:6379,r2:6379"
    from_secret = helm_template(helm_bin, ["redis.mode=external", "redis.urlSecret.name=redis-creds"])
    config = injector_config(from_secret)
    assert config["redis_url_secret"] == "redis-creds/url" and "redis_url" not in config


def test_cert_manager_issues_the_certificate_when_its_crds_exist(helm_bin: str) -> None:
    docs = render("cert-manager", helm_bin)
    assert not by_kind(docs, "Secret")
    (cert,) = by_kind(docs, "Certificate")
    assert cert["spec"]["secretName"] == "hx-hexarch-injector-tls"
    assert "hx-hexarch-injector.hexarch-system.svc" in cert["spec"]["dnsNames"]
    (webhook_cfg,) = by_kind(docs, "MutatingWebhookConfiguration")
    annotations = webhook_cfg["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == "hexarch-system/hx-hexarch-injector"


def test_fail_open_values(helm_bin: str) -> None:
    docs = render("fail-open", helm_bin)
    assert injector_config(docs)["fail_mode"] == "fail_open"
    (webhook_cfg,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert {w["failurePolicy"] for w in webhook_cfg["webhooks"]} == {"Ignore"}


def test_alerts_query_only_metrics_the_sidecar_defines(helm_bin: str) -> None:
    import re

    docs = render("monitoring", helm_bin)
    (rule,) = by_kind(docs, "PrometheusRule")
    assert by_kind(docs, "PodMonitor")
    defined = set(re.findall(r'"(hexarch_[a-z_]+)"', (ROOT / "sidecar" / "metrics.py").read_text()))
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            used = set(re.findall(r"hexarch_[a-z_]+", alert["expr"]))
            assert used and used <= defined, (alert["alert"], used - defined)


def test_old_cluster_gets_plain_containers_and_no_volume_claim(helm_bin: str) -> None:
    docs = render("no-persistence-old-cluster", helm_bin)
    assert injector_config(docs)["native_sidecars"] is False
    (statefulset,) = by_kind(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]


def test_default_policy_in_the_chart_compiles(helm_bin: str, tmp_path: Any) -> None:
    import sys
    from pathlib import Path

    docs = render("default", helm_bin)
    policy = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "hx-hexarch-policy")
    path = tmp_path / "hexarch.yaml"
    path.write_text(policy["data"]["hexarch.yaml"])
    hexarch = str(Path(sys.executable).with_name("hexarch"))
    out = subprocess.run([hexarch, "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
