"""The injected pod spec runs: the sidecar and OPA containers read back from the API server are
started as local processes with the same commands, arguments and environment (image entrypoints
mapped to the local `hexarch` and `opa`, volumes to temporary directories), and the `openai` client
gets an answer through them from the demo model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.k8s.conftest import Injector, chart_injector_config, helm_template, webhook_config
from tests.k8s.test_apiserver import WEBHOOKS, until
from tests.support.kube import KubeApi
from tests.support.servers import RedisServer, free_port, terminate, wait_for

NS = "runs"
SIDECAR_IMAGE = "ghcr.io/hexarch/hexarch:0.1.0"
OPA_IMAGE = "openpolicyagent/opa:1.22.2-static"


def policy(demo_url: str) -> str:
    return f"""version: 1
enforcement: strict
demo:
  base_url: {demo_url}
  api: ollama
sidecar:
  anonymous:
    enabled: true
policies:
  - id: rate_limit
    rules:
      - requests_per_minute: 1000
        action: block
"""


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "demo-model", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/api/tags", timeout=1).status == 200, 30, "demo model")
        yield url
    finally:
        terminate(proc)


def test_injected_sidecar_and_opa_answer_the_openai_client(
    kube: KubeApi,
    injector: Injector,
    helm_bin: str,
    redis_server: RedisServer,
    demo_url: str,
    tmp_path: Path,
    opa_bin: str,
) -> None:
    sidecar_port, admin_port, opa_port = free_port(), free_port(), free_port()
    values = [
        f"sidecar.port={sidecar_port}",
        f"sidecar.adminPort={admin_port}",
        f"opa.port={opa_port}",
        "redis.mode=external",
        f"redis.externalUrl=redis://127.0.0.1:{redis_server.port}/0",
        "injector.image.tag=0.1.0",
    ]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy(demo_url))
    docs = helm_template(helm_bin, [*values, "injector.url=https://x", "injector.caBundle=eA=="])
    config_file = tmp_path / "injector.yaml"
    config_file.write_text(chart_injector_config(docs))

    # An injector with this release's config, behind the chart's webhook configuration.
    from tests.k8s.conftest import start_injector

    own = start_injector(tmp_path, injector.certs, config_file)
    try:
        kube.create_namespace(NS, {"hexarch.io/inject": "enabled"})
        kube.apply(webhook_config(helm_bin, own.url, own.ca_bundle, *values), WEBHOOKS)
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
        }

        def sees_own_config() -> bool:
            resp = kube.request("POST", f"/api/v1/namespaces/{NS}/pods", probe, dryRun="All")
            inits = resp.json().get("spec", {}).get("initContainers", [])
            return bool(inits) and inits[0]["ports"][0]["containerPort"] == sidecar_port

        until(sees_own_config, "the webhook configured for this release")
        app = dict(probe, metadata={"name": "app"})
        kube.ok("POST", f"/api/v1/namespaces/{NS}/pods", app)
        stored = kube.ok("GET", f"/api/v1/namespaces/{NS}/pods/app")
    finally:
        terminate(own.proc)
        kube.apply(webhook_config(helm_bin, injector.url, injector.ca_bundle), WEBHOOKS)

    spec = stored["spec"]
    # The ConfigMap volume holds the policy; every other volume is an empty directory.
    volume_dirs: dict[str, Path] = {}
    for volume in spec["volumes"]:
        path = tmp_path / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "configMap" in volume:
            (path / "hexarch.yaml").write_text(policy(demo_url))
        volume_dirs[volume["name"]] = path
    hexarch = str(Path(sys.executable).with_name("hexarch"))  # console script of this environment
    entrypoints = {SIDECAR_IMAGE: [hexarch], OPA_IMAGE: [opa_bin]}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for container in spec["initContainers"]:
            assert container["image"] in entrypoints, container["image"]
            mounts = {m["mountPath"]: volume_dirs[m["name"]] for m in container.get("volumeMounts", [])}

            def local(text: str, mounts: dict[str, Path] = mounts) -> str:
                # volumes -> temporary directories; the pod's own address -> loopback
                for mount_path, directory in mounts.items():
                    text = text.replace(mount_path, str(directory))
                return text.replace("0.0.0.0:", "127.0.0.1:")

            cmd = container.get("command") or entrypoints[container["image"]]
            args = [local(a) for a in container.get("args", [])]
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
            env.update({e["name"]: local(e["value"]) for e in container.get("env", [])})
            cwd = local(container.get("workingDir", str(tmp_path)))
            log = (tmp_path / f"{container['name']}.log").open("wb")
            procs.append(
                subprocess.Popen([*cmd, *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            )
        app_env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        base_url = app_env["OPENAI_BASE_URL"]
        ready = (
            f"http://127.0.0.1:{sidecar_port}{spec['initContainers'][0]['readinessProbe']['httpGet']['path']}"
        )
        import urllib.request

        def is_ready() -> bool:
            for proc in procs:
                assert proc.poll() is None, (tmp_path / "hexarch.log").read_text()
            try:
                return bool(urllib.request.urlopen(ready, timeout=2).status == 200)
            except OSError:
                return False

        wait_for(is_ready, 60, "the injected sidecar's readiness probe")
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tinyllama", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        assert reply.choices[0].message.content.startswith("Hexarch")
    finally:
        for proc in reversed(procs):
            terminate(proc)
