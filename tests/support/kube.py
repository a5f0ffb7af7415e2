"""A real Kubernetes API server on loopback: etcd + kube-apiserver built by scripts/build-k8s.sh.

No controller-manager or scheduler: pods are stored, not run, which is what admission tests need.
The caller talks REST with a static `system:masters` token (`KubeApi`), over the API server's
self-signed certificate (the API server is the test's own process on 127.0.0.1).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.certs import make_keypair
from tests.support.servers import find_binary, free_port, terminate

READY_TIMEOUT_SECONDS = 90.0


@dataclass
class KubeApi:
    url: str
    token: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.url, verify=False, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def request(self, method: str, path: str, body: Any = None, **params: str) -> httpx.Response:
        return self.http.request(method, path, json=body, params=params or None)

    def ok(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        resp = self.request(method, path, body, **params)
        if resp.status_code >= 300:
            raise AssertionError(f"{method} {path} -> {resp.status_code}: {resp.text}")
        result: dict[str, Any] = resp.json()
        return result

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.ok(
            "POST",
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})},
            },
        )
        # No controller-manager: the namespace's default ServiceAccount is made here.
        self.ok(
            "POST",
            f"/api/v1/namespaces/{name}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
        )

    def apply(self, manifest: Mapping[str, Any], collection: str) -> dict[str, Any]:
        """Create `manifest` at `collection`, replacing an object of the same name."""
        name = manifest["metadata"]["name"]
        if self.request("GET", f"{collection}/{name}").status_code == 200:
            self.ok("DELETE", f"{collection}/{name}")
        return self.ok("POST", collection, manifest)

    def stop(self) -> None:
        self.http.close()
        for proc in reversed(self.procs):
            terminate(proc)


def start_kube(work: Path) -> KubeApi:
    etcd_bin = find_binary("etcd", "HEXARCH_ETCD")
    apiserver_bin = find_binary("kube-apiserver", "HEXARCH_KUBE_APISERVER")
    work.mkdir(parents=True, exist_ok=True)
    client, peer, secure = free_port(), free_port(), free_port()
    token = uuid.uuid4().hex
    (work / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    sa_key, sa_pub = make_keypair(work, "service-account")
    api = KubeApi(f"https://127.0.0.1:{secure}", token)
    etcd_log = (work / "etcd.log").open("wb")
    api.logs.append(work / "etcd.log")
    api.procs.append(
        subprocess.Popen(
            [
                etcd_bin,
                "--data-dir",
                str(work / "etcd"),
                "--name",
                "test",
                "--listen-client-urls",
                f"http://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"test=http://127.0.0.1:{peer}",
                "--log-level",
                "warn",
                "--quota-backend-bytes",
                str(256 << 20),
            ],
            stdout=etcd_log,
            stderr=subprocess.STDOUT,
        )
    )
    kas_log = (work / "kube-apiserver.log").open("wb")
    api.logs.append(work / "kube-apiserver.log")
    api.procs.append(
        subprocess.Popen(
            [
                apiserver_bin,
                f"--etcd-servers=http://127.0.0.1:{client}",
                f"--secure-port={secure}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={work / 'certs'}",
                f"--token-auth-file={work / 'tokens.csv'}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--authorization-mode=RBAC",
                "--storage-media-type=application/json",
                "--v=1",
            ],
            stdout=kas_log,
            stderr=subprocess.STDOUT,
        )
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        for proc, log in zip(api.procs, api.logs, strict=True):
            if proc.poll() is not None:
                api.stop()
                raise RuntimeError(f"{log.name} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if api.request("GET", "/readyz").status_code == 200:
                return api
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            api.stop()
            raise RuntimeError(
                f"kube-apiserver not ready:\n{api.logs[1].read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.2)
