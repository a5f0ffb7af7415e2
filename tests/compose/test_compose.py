"""docker-compose.yml, loaded by the compose specification's own loader (compose-go, the library
behind `docker compose config`, built by scripts/setup.sh as .tools/bin/compose-config), and the
stack it describes brought up as local processes on loopback from the loaded file itself: the same
commands, environment and health checks, in depends_on order; the `openai` client then gets an
answer through the sidecar, at the OPENAI_BASE_URL of the recipe's example app.

Mapping from containers to processes: image entrypoints to the local `hexarch`, `opa`,
`redis-server`; each service's exposed port to a free loopback port (`service:port` and
`0.0.0.0:port` in arguments and environment become `127.0.0.1:<free port>`); bind mounts to their
source directory (a copy of it, which the edit test changes), named volumes to temporary
directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.servers import ROOT, find_binary, free_port, terminate

COMPOSE_FILE = ROOT / "docker-compose.yml"
RECIPE = ROOT / "deploy" / "compose" / "app-example.yml"
HEALTHY_TIMEOUT_SECONDS = 90.0


def load(*files: Path) -> dict[str, Any]:
    tool = find_binary("compose-config", "HEXARCH_COMPOSE_CONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEXARCH_", "COMPOSE_"))}
    out = subprocess.run([tool, *map(str, files)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    project: dict[str, Any] = json.loads(out.stdout)
    return project


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return load(COMPOSE_FILE)


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(project: dict[str, Any]) -> None:
    services = project["services"]
    assert set(services) == {"hexarch", "opa", "redis", "demo-model"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dep, how in (service.get("depends_on") or {}).items():
            assert how["condition"] == "service_healthy", (name, dep)
    assert set(services["hexarch"]["depends_on"]) == {"redis", "opa", "demo-model"}


def test_only_the_sidecar_is_published_and_only_on_loopback(project: dict[str, Any]) -> None:
    services = project["services"]
    published = {name: s.get("ports") for name, s in services.items() if s.get("ports")}
    assert list(published) == ["hexarch"]
    assert [p["host_ip"] for p in published["hexarch"]] == ["127.0.0.1"]


def test_policy_is_a_directory_mount_and_redis_persists(project: dict[str, Any]) -> None:
    (policy,) = project["services"]["hexarch"]["volumes"]
    assert policy["type"] == "bind" and Path(policy["source"]).is_dir()
    assert (Path(policy["source"]) / "hexarch.yaml").is_file()
    assert project["services"]["hexarch"]["command"][-1] == policy["target"] + "/hexarch.yaml"
    redis = project["services"]["redis"]
    (data,) = redis["volumes"]
    assert data["type"] == "volume" and data["target"] == "/data"
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-data" in project["volumes"]


def test_recipe_includes_hexarch_and_changes_only_the_base_url() -> None:
    project = load(RECIPE)
    assert {"hexarch", "opa", "redis", "demo-model", "app"} <= set(project["services"])
    assert project["services"]["app"]["environment"]["OPENAI_BASE_URL"] == "http://hexarch:8080/v1"


@dataclass
class LocalStack:
    ports: dict[str, int]  # service -> its free loopback port
    exposed: dict[str, int]  # service -> the port it exposes in the file
    procs: list[subprocess.Popen[bytes]]
    binds: dict[str, Path] = field(default_factory=dict)  # bind source -> the test's copy

    def rewrite(self, text: str, own: str | None = None, mounts: dict[str, str] | None = None) -> str:
        for name, port in self.ports.items():
            text = text.replace(f"//{name}:", "//127.0.0.1:")
            text = text.replace(f"127.0.0.1:{self.exposed[name]}", f"127.0.0.1:{port}")
        for target, source in (mounts or {}).items():
            text = text.replace(target, source)
        if own is not None:
            text = text.replace(f"0.0.0.0:{self.exposed[own]}", f"127.0.0.1:{self.ports[own]}")
            text = text.replace(f"127.0.0.1:{self.exposed[own]}", f"127.0.0.1:{self.ports[own]}")
            if text == str(self.exposed[own]):
                text = str(self.ports[own])
        return "127.0.0.1" if text == "0.0.0.0" else text


def local_binary(name: str) -> str:
    if name == "hexarch":  # the console script of the environment running the tests
        return str(Path(sys.executable).with_name("hexarch"))
    local = {
        "opa": ("opa", "HEXARCH_OPA"),
        "redis-server": ("redis-server", "HEXARCH_REDIS_SERVER"),
        "redis-cli": ("redis-cli", "HEXARCH_REDIS_CLI"),
    }
    if name == "python":
        return sys.executable
    binary, env = local[name]
    return find_binary(binary, env)


IMAGE_ENTRYPOINTS = {"hexarch:local": ["hexarch"], "redis:7.4.2": []}


def order(services: dict[str, Any]) -> list[str]:
    done: list[str] = []
    while len(done) < len(services):
        ready = [
            n
            for n, s in sorted(services.items())
            if n not in done and set(s.get("depends_on") or {}) <= set(done)
        ]
        assert ready, "depends_on has a cycle"
        done.extend(ready)
    return done


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    project = load(RECIPE)
    services = {n: s for n, s in project["services"].items() if n != "app"}
    tmp = tmp_path_factory.mktemp("compose")
    exposed = {n: int(s["expose"][0]) for n, s in services.items()}
    stack = LocalStack({n: free_port() for n in services}, exposed, [])
    try:
        for name in order(services):
            service = services[name]
            mounts: dict[str, str] = {}
            for volume in service.get("volumes") or []:
                if volume["type"] == "bind":
                    # a copy, so the edit test below does not touch the repository's policy
                    copy = tmp / "binds" / Path(volume["source"]).name
                    shutil.copytree(volume["source"], copy)
                    mounts[volume["target"]] = str(copy)
                    stack.binds[volume["source"]] = copy
                else:
                    path = tmp / "volumes" / volume["source"]
                    path.mkdir(parents=True, exist_ok=True)
                    mounts[volume["target"]] = str(path)
            entrypoint = service.get("entrypoint") or IMAGE_ENTRYPOINTS[service["image"]]
            argv = [stack.rewrite(a, name, mounts) for a in [*entrypoint, *(service.get("command") or [])]]
            argv[0] = local_binary(argv[0])
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp)}
            env.update(
                {
                    k: stack.rewrite(v or "", name, mounts)
                    for k, v in (service.get("environment") or {}).items()
                }
            )
            log = (tmp / f"{name}.log").open("wb")
            workdir = tmp / "work" / name
            workdir.mkdir(parents=True)
            stack.procs.append(
                subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
            )
            check = [stack.rewrite(a, name, mounts) for a in service["healthcheck"]["test"][1:]]
            check[0] = local_binary(check[0])
            deadline = time.monotonic() + HEALTHY_TIMEOUT_SECONDS
            while subprocess.run(check, capture_output=True, env=env).returncode != 0:
                assert stack.procs[-1].poll() is None, (tmp / f"{name}.log").read_text()
                assert time.monotonic() < deadline, f"{name} not healthy: {(tmp / f'{name}.log').read_text()}"
                time.sleep(0.2)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            terminate(proc)


def test_stack_from_the_file_answers_the_recipe_apps_openai_client(local_stack: LocalStack) -> None:
    app = load(RECIPE)["services"]["app"]
    base_url = local_stack.rewrite(app["environment"]["OPENAI_BASE_URL"])
    assert base_url == f"http://127.0.0.1:{local_stack.ports['hexarch']}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=app["environment"]["OPENAI_API_KEY"], max_retries=0)
    reply = client.chat.completions.create(model="tinyllama", messages=[{"role": "user", "content": "hi"}])
    assert (reply.choices[0].message.content or "").startswith("Hexarch demo model reply")


def test_policy_edit_saved_through_a_rename_is_enforced(local_stack: LocalStack) -> None:
    """Editors save by writing a new file and renaming it over the old one: the directory mount sees it."""
    project = load(COMPOSE_FILE)
    (policy,) = project["services"]["hexarch"]["volumes"]
    directory = local_stack.binds[policy["source"]]
    text = (directory / "hexarch.yaml").read_text()
    assert "max_tokens_per_request: 1024" in text
    (directory / ".hexarch.yaml.swp").write_text(
        text.replace("max_tokens_per_request: 1024", "max_tokens_per_request: 4")
    )
    (directory / ".hexarch.yaml.swp").replace(directory / "hexarch.yaml")
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{local_stack.ports['hexarch']}/v1", api_key="x", max_retries=0
    )
    deadline = time.monotonic() + HEALTHY_TIMEOUT_SECONDS
    while True:
        try:
            client.chat.completions.create(
                model="tinyllama", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
        except openai.BadRequestError as exc:
            assert "token" in str(exc).lower()
            break
        assert time.monotonic() < deadline, "the edited policy was not enforced"
        time.sleep(0.2)
