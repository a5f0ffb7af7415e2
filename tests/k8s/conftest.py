"""Fixtures of the Kubernetes tests: helm (rendering the chart), a running `hexarch injector` with a
test CA, and a real etcd + kube-apiserver on loopback (tests/support/kube.py)."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.certs import ServerCert, make_ca, server_cert
from tests.support.kube import KubeApi, start_kube
from tests.support.servers import ROOT, find_binary, free_port, terminate, wait_for

CHART = ROOT / "helm" / "hexarch"
RELEASE = "hx"
RELEASE_NAMESPACE = "hexarch-system"
KUBE_VERSION = "1.37.2"


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return find_binary("helm", "HEXARCH_HELM")


def helm_template(
    helm: str, values: Sequence[str] = (), api_versions: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` pairs; the rendered objects, in order."""
    cmd = [
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]
    for pair in values:
        cmd += ["--set", pair]
    for api in api_versions:
        cmd += ["--api-versions", api]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def chart_injector_config(docs: list[dict[str, Any]]) -> str:
    (config,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-hexarch-injector"
    ]
    text: str = config["data"]["injector.yaml"]
    return text


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@dataclass(frozen=True)
class Injector:
    url: str
    certs: ServerCert
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.certs.ca.read_bytes()).decode()


def start_injector(work: Path, certs: ServerCert, config: Path | None = None) -> Injector:
    port = free_port()
    log = work / f"injector-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "sidecar.cli",
        "injector",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    injector = Injector(f"https://127.0.0.1:{port}", certs, proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"injector exited: {log.read_text()}")
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with urllib.request.urlopen(f"{injector.url}/readyz", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)

    wait_for(ready, 30, "hexarch injector")
    return injector


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def injector(
    tmp_path_factory: pytest.TempPathFactory, test_ca: tuple[Path, Path], helm_bin: str
) -> Iterator[Injector]:
    """The injector with the config the chart renders for its default values."""
    work = tmp_path_factory.mktemp("injector")
    config = work / "injector.yaml"
    config.write_text(chart_injector_config(helm_template(helm_bin)))
    running = start_injector(work, server_cert(work, test_ca, "injector"), config)
    try:
        yield running
    finally:
        terminate(running.proc)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    api = start_kube(tmp_path_factory.mktemp("kube"))
    try:
        yield api
    finally:
        api.stop()


def webhook_config(helm: str, url: str, ca_bundle: str, *extra: str) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, pointed at `url` (clientConfig.url + caBundle)."""
    docs = helm_template(helm, [f"injector.url={url}", f"injector.caBundle={ca_bundle}", *extra])
    (config,) = by_kind(docs, "MutatingWebhookConfiguration")
    return config


def dump(docs: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
