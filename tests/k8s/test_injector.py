"""`hexarch injector` as a process: HTTPS with the test CA, AdmissionReview replies, refusals in the
DESIGN.md error shape, certificate reload, and a config file whose every key is checked."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import Injector, start_injector
from tests.support.certs import server_cert
from tests.support.servers import ROOT, terminate, wait_for


def post(injector: Injector, path: str, body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(injector.certs.ca))
    req = urllib.request.Request(
        f"{injector.url}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def review(pod: dict[str, Any], uid: str = "u-1") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "default",
                "object": pod,
            },
        }
    ).encode()


POD = {
    "metadata": {"name": "p", "annotations": {"hexarch.io/inject": "true"}},
    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
}


def test_reply_carries_the_uid_and_a_json_patch(injector: Injector) -> None:
    status, body = post(injector, "/mutate", review(POD, uid="abc"))
    assert status == 200
    response = body["response"]
    assert (body["kind"], response["uid"], response["allowed"], response["patchType"]) == (
        "AdmissionReview",
        "abc",
        True,
        "JSONPatch",
    )
    patch = json.loads(base64.b64decode(response["patch"]))
    assert {k: patch[0][k] for k in ("op", "path")} == {"op": "add", "path": "/spec/initContainers"}
    assert [c["name"] for c in patch[0]["value"]] == ["hexarch", "hexarch-opa"]


def test_unannotated_pod_outside_labelled_namespace_gets_no_patch(injector: Injector) -> None:
    plain = {"metadata": {"name": "p"}, "spec": POD["spec"]}
    _, body = post(injector, "/mutate", review(plain))
    assert body["response"]["allowed"] is True and "patch" not in body["response"]
    _, body = post(injector, "/mutate/namespace-enabled", review(plain))
    assert "patch" in body["response"]


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        (
            {"metadata": {"annotations": {"hexarch.io/inject": "true"}}, "spec": {"containers": []}},
            "no containers",
        ),
        (
            {
                "metadata": {"annotations": {"hexarch.io/inject": "true"}},
                "spec": {"containers": [{"image": "x"}]},
            },
            "spec.containers[0] has no name",
        ),
        (
            {
                "metadata": {
                    "annotations": {"hexarch.io/inject": "true", "hexarch.io/sidecar-resources": "{nope"}
                },
                "spec": POD["spec"],
            },
            "hexarch.io/sidecar-resources is not JSON",
        ),
    ],
)
def test_malformed_pod_is_refused_with_a_message(
    injector: Injector, pod: dict[str, Any], message: str
) -> None:
    _, body = post(injector, "/mutate", review(pod))
    response = body["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert message in response["status"]["message"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b'{"kind": "Pod"}', "expected an AdmissionReview"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}', "apiVersion must be"),
    ],
)
def test_bad_review_is_a_400_in_the_error_shape(injector: Injector, payload: bytes, message: str) -> None:
    status, body = post(injector, "/mutate", payload)
    assert status == 400
    assert body["error"]["code"] == "invalid_admission_review"
    assert message in body["error"]["message"]


def test_certificate_files_replaced_are_served_without_restart(
    tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    first = server_cert(tmp_path, test_ca, "first", cn="first.hexarch.test")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first.cert, live / "tls.crt")
    shutil.copy(first.key, live / "tls.key")
    from tests.support.certs import ServerCert

    running = start_injector(tmp_path, ServerCert(first.ca, live / "tls.crt", live / "tls.key"))
    try:

        def served() -> str:
            return ssl.get_server_certificate(("127.0.0.1", int(running.url.rsplit(":", 1)[1])))

        def same(pem_a: str, pem_b: str) -> bool:
            der = ssl.PEM_cert_to_DER_cert
            return der(pem_a) == der(pem_b)

        assert same(served(), first.cert.read_text())
        second = server_cert(tmp_path, test_ca, "second", cn="second.hexarch.test")
        # as kubelet updates a mounted Secret: new files swapped in
        shutil.copy(second.key, live / "tls.key.new")
        shutil.copy(second.cert, live / "tls.crt.new")
        (live / "tls.key.new").replace(live / "tls.key")
        (live / "tls.crt.new").replace(live / "tls.crt")
        wait_for(lambda: same(served(), second.cert.read_text()), 30, "the new certificate")
        status, _ = post(running, "/mutate", review(POD))
        assert status == 200
    finally:
        terminate(running.proc)


def run_injector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "injector", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("sidecar_imagee: x\n", "unknown injector config key 'sidecar_imagee'"),
        ("sidecar_port: '8080'\n", "'sidecar_port' must be an integer"),
        ("fail_mode: sometimes\n", "'fail_mode' must be one of fail_closed, fail_open"),
        ("sidecar_port: 8181\n", "'sidecar_port', 'admin_port' and 'opa_port' must differ"),
        ("admin_port: 8080\n", "'sidecar_port', 'admin_port' and 'opa_port' must differ"),
        ("opa_resources: {limits: {memory: [1]}}\n", "'opa_resources'"),
        ("redis_url_secret: just-a-name\n", "'redis_url_secret' must be SECRET/KEY"),
    ],
)
def test_bad_injector_config_is_refused_at_start(
    tmp_path: Path, injector: Injector, config: str, message: str
) -> None:
    path = tmp_path / "injector.yaml"
    path.write_text(config)
    out = run_injector(
        "--listen",
        "127.0.0.1:1",
        "--tls-cert",
        str(injector.certs.cert),
        "--tls-key",
        str(injector.certs.key),
        "--config",
        str(path),
    )
    assert out.returncode == 1
    assert message in out.stderr


def test_config_keys_change_what_is_injected(tmp_path: Path, injector: Injector) -> None:
    path = tmp_path / "injector.yaml"
    path.write_text(
        "sidecar_image: reg.example/hexarch:2\nopa_image: reg.example/opa:2\n"
        "sidecar_port: 9090\nadmin_port: 9292\nopa_port: 9191\nredis_url: redis://redis.example:6379/3\n"
        "policy_configmap: pol\npolicy_key: p.yaml\nfail_mode: fail_open\n"
        "native_sidecars: false\nimage_pull_policy: Always\nbundle_polling_min_seconds: 3\n"
        "bundle_polling_max_seconds: 7\nsidecar_resources: {requests: {cpu: 10m}}\n"
        "opa_resources: {limits: {memory: 64Mi}}\n"
    )
    running = start_injector(tmp_path, injector.certs, path)
    try:
        _, body = post(running, "/mutate", review(POD))
    finally:
        terminate(running.proc)
    patch = json.loads(base64.b64decode(body["response"]["patch"]))
    added = [
        op["value"]
        for op in patch
        if op["path"] == "/spec/containers/1" or op["path"] == "/spec/containers/2"
    ]
    sidecar, opa = added
    assert "restartPolicy" not in sidecar
    assert (sidecar["image"], opa["image"], sidecar["imagePullPolicy"]) == (
        "reg.example/hexarch:2",
        "reg.example/opa:2",
        "Always",
    )
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["HEXARCH_LISTEN"] == "0.0.0.0:9090"
    assert env["HEXARCH_OPA_URL"] == "http://127.0.0.1:9191"
    assert env["HEXARCH_ADMIN_LISTEN"] == "0.0.0.0:9292"
    assert [p["containerPort"] for p in sidecar["ports"]] == [9090, 9292]
    # OPA polls the bundle on the admin listener, the only one that serves it
    assert "services.sidecar.url=http://127.0.0.1:9292" in opa["args"]
    assert env["HEXARCH_REDIS_URL"] == "redis://redis.example:6379/3"
    assert env["HEXARCH_FAIL_MODE"] == "fail_open"
    assert sidecar["args"][-1] == "/etc/hexarch/policy/p.yaml"
    assert sidecar["resources"] == {"requests": {"cpu": "10m"}}
    assert opa["resources"] == {"limits": {"memory": "64Mi"}}
    assert "127.0.0.1:9191" in opa["args"]
    assert "bundles.hexarch.polling.min_delay_seconds=3" in opa["args"]
    assert "bundles.hexarch.polling.max_delay_seconds=7" in opa["args"]
    app_env = next(op["value"] for op in patch if op["path"] == "/spec/containers/0/env")
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:9090/v1"} in app_env
    volume = next(op["value"] for op in patch if op["path"] == "/spec/volumes")
    assert volume[0]["configMap"]["name"] == "pol"


def test_redis_url_from_a_secret_is_a_secret_key_ref(tmp_path: Path, injector: Injector) -> None:
    path = tmp_path / "injector.yaml"
    path.write_text("redis_url: redis://:s3cret@r:6379/0\nredis_url_secret: redis-creds/url\n")
    running = start_injector(tmp_path, injector.certs, path)
    try:
        _, body = post(running, "/mutate", review(POD))
    finally:
        terminate(running.proc)
    patch = base64.b64decode(body["response"]["patch"])
    assert b"s3cret" not in patch
    sidecar = json.loads(patch)[0]["value"][0]
    redis = next(e for e in sidecar["env"] if e["name"] == "HEXARCH_REDIS_URL")
    assert redis == {
        "name": "HEXARCH_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-creds", "key": "url"}},
    }


def test_every_injector_config_key_is_documented() -> None:
    from dataclasses import fields

    from sidecar.injector.config import InjectorConfig

    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for f in fields(InjectorConfig):
        assert f"| `{f.name}` |" in docs, f.name
