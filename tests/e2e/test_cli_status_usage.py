"""`hexarch --version`, bare `hexarch`, and `hexarch status` / `hexarch usage` finding a running
`hexarch up` by its state file, with no flags pointing at Redis or the policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import e2e_policy
from tests.e2e.test_up import CHAT, HEXARCH, post, running_up
from tests.support.servers import ROOT


def hexarch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEXARCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_version_and_bare_help() -> None:
    version = hexarch("--version")
    assert version.returncode == 0 and version.stdout.startswith("hexarch 0.")
    bare = hexarch()
    assert bare.returncode == 0 and "usage: hexarch" in bare.stdout
    for command in ("up", "serve", "usage", "status", "compile"):
        assert command in bare.stdout


def test_status_and_usage_read_the_running_stack(tmp_path: Path) -> None:
    policy = e2e_policy(tmp_path / "hexarch.yaml", api_key=False)
    work = str(tmp_path / "run")
    with running_up(tmp_path, policy, "--demo") as up:
        state = json.loads((tmp_path / "run" / "stack.json").read_text())
        assert state["sidecar_url"] == up.url and state["redis_url"].startswith("redis://")
        for _ in range(3):
            assert post(f"{up.url}/v1/chat/completions", CHAT)[0] == 200

        status = hexarch("status", "--work-dir", work, "--json")
        assert status.returncode == 0, status.stderr
        parts = json.loads(status.stdout)["parts"]
        assert all(part["ok"] for part in parts.values()) and set(parts) >= {
            "sidecar",
            "opa",
            "redis",
            "policy",
        }
        table = hexarch("status", "--work-dir", work)
        assert table.returncode == 0 and "sidecar" in table.stdout and "ok" in table.stdout

        usage = hexarch("usage", "--work-dir", work, "--json")
        assert usage.returncode == 0, usage.stderr
        rows = {row["id"]: row for row in json.loads(usage.stdout)}
        assert rows["rate_limit/0/rpm"]["used"] == 3
        pretty = hexarch("usage", "--work-dir", work)
        assert pretty.returncode == 0, pretty.stderr
        budget = next(line for line in pretty.stdout.splitlines() if line.startswith("api_budget/0/month"))
        assert "USD" in budget and "$1,000,000.00" in budget
        assert ("█" in budget or "░" in budget) and "%" in budget
    assert not (tmp_path / "run" / "stack.json").exists()  # removed when the stack stops
    gone = hexarch("status", "--work-dir", work)
    assert gone.returncode == 2 and "no running `hexarch up`" in gone.stderr
