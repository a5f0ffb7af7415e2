"""OPA is pinned once (scripts/versions.env); every other place that names a version must agree."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.support.servers import ROOT


def pinned_opa() -> str:
    text = (ROOT / "scripts" / "versions.env").read_text()
    match = re.search(r"^OPA_VERSION=v(\S+)$", text, re.MULTILINE)
    assert match, "scripts/versions.env has no OPA_VERSION=vX.Y.Z line"
    return match.group(1)


def test_the_opa_the_tests_run_is_the_pinned_one(opa_bin: str) -> None:
    out = subprocess.run([opa_bin, "version"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"Version: {pinned_opa()}\n" in out


def test_docker_compose_runs_the_pinned_opa() -> None:
    # OPA runs from the sidecar image, which copies the pinned opa (next test).
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["opa"]["image"] == compose["services"]["hexarch"]["image"]
    assert compose["services"]["opa"]["entrypoint"] == ["opa"]


def test_the_helm_chart_injects_the_pinned_opa() -> None:
    values = yaml.safe_load((ROOT / "helm" / "hexarch" / "values.yaml").read_text())
    assert values["opa"]["image"]["tag"] == f"{pinned_opa()}-static"
    from sidecar.injector.config import InjectorConfig

    assert InjectorConfig().opa_image == f"openpolicyagent/opa:{pinned_opa()}-static"


def test_the_sidecar_image_copies_the_pinned_opa() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG OPA_VERSION={pinned_opa()}\n" in dockerfile
    assert "COPY --from=opa /opa /usr/local/bin/opa" in dockerfile
