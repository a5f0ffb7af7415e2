"""`hexarch up` as a user runs it: one command, a working stack, live policy edits, clean Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from sidecar.stack import free_port
from tests.e2e.conftest import e2e_policy
from tests.support.servers import ROOT

HEXARCH = [sys.executable, "-m", "sidecar.cli"]
CHAT = {
    "model": "tinyllama",
    "messages": [{"role": "user", "content": "Hi"}],
    "temperature": 0.8,
    "max_tokens": 4,
}


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised command name) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    port: int
    policy: Path
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@contextlib.contextmanager
def running_up(tmp_path: Path, policy: Path, *flags: str) -> Iterator[Up]:
    """`hexarch up --policy POLICY *flags` until it prints that the stack is ready; Ctrl-C after."""
    port = free_port()
    output = tmp_path / "up.out"
    # Explicit ports for the private parts too: parallel test runs must not race for 6379/8181/11434.
    private = [
        "--redis-port",
        str(free_port()),
        "--opa-port",
        str(free_port()),
        "--demo-port",
        str(free_port()),
    ]
    cmd = [*HEXARCH, "up", "--policy", str(policy), *flags, "--port", str(port), *private]
    cmd += ["--work-dir", str(tmp_path / "run")]
    with output.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    running = Up(proc, port, policy, output)
    try:
        deadline = time.monotonic() + 60
        while "the stack is ready" not in running.text():
            assert proc.poll() is None, f"hexarch up exited early:\n{running.text()}"
            assert time.monotonic() < deadline, f"hexarch up not ready:\n{running.text()}"
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    with running_up(tmp_path, e2e_policy(tmp_path / "hexarch.yaml", api_key=False), "--demo") as running:
        yield running


@dataclass
class Traffic:
    """A background loop of chat requests recording (time, status) or (time, error)."""

    url: str
    results: list[tuple[float, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                status, _ = post(f"{self.url}/v1/chat/completions", CHAT)
                self.results.append((now, status))
            except (OSError, ValueError) as exc:
                self.results.append((now, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.02)


def test_up_serves_without_a_key_and_reloads_policy_edits_live(up: Up) -> None:
    assert "curl" in up.text() and f"http://127.0.0.1:{up.port}" in up.text()
    # No API keys in the file: --demo lets anonymous callers in, as the README's curl does.
    status, body = post(f"{up.url}/v1/chat/completions", CHAT)
    assert status == 200, body

    traffic = Traffic(up.url)
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    edited_at = time.monotonic()
    e2e_policy(up.policy, temperature_max=0.5, api_key=False)  # rewrites the file in place, like an editor
    deadline = edited_at + 15
    while time.monotonic() < deadline and not any(s == 400 for _, s in traffic.results):
        time.sleep(0.1)
    time.sleep(1.0)
    traffic.stop.set()
    thread.join(15)

    statuses = [s for _, s in traffic.results]
    errors = [s for s in statuses if s not in (200, 400)]
    assert not errors, f"requests failed during the reload: {errors[:5]}"
    first_denied = next((t for t, s in traffic.results if s == 400), None)
    assert first_denied is not None, "the edited policy never took effect"
    assert first_denied - edited_at < 10
    before = [s for t, s in traffic.results if t < edited_at]
    after = [s for t, s in traffic.results if t > first_denied]
    assert before and set(before) == {200}
    assert after and set(after) == {400}  # OPA swaps bundles atomically: no flapping back
    status, body = post(f"{up.url}/v1/chat/completions", CHAT)
    error = body["error"]
    assert status == 400 and isinstance(error, dict)
    assert "above the maximum 0.5" in str(error["message"])


def test_readme_openai_call_works_under_up_demo(up: Up) -> None:
    """The README's client call, verbatim: the openai client insists on some key, and with no keys
    configured `hexarch up --demo` must not turn that placeholder into a 401."""
    client = openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused-in-demo", max_retries=0)
    reply = client.chat.completions.create(
        model="tinyllama", messages=[{"role": "user", "content": "Explain machine learning"}], max_tokens=64
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tinyllama", messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )
    assert "temperature 1.5 is above the maximum 1.0" in str(caught.value)


def test_up_runs_opa_with_its_go_runtime_settings(up: Up) -> None:
    def program(pid: int) -> str:
        return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name

    (opa,) = [pid for pid in children_of(up.proc.pid) if program(pid) == "opa"]
    environ = dict(
        item.split(b"=", 1) for item in Path(f"/proc/{opa}/environ").read_bytes().split(b"\0") if b"=" in item
    )
    # docs/performance.md: one scheduler thread and GOGC=400, unless the user's environment says otherwise
    assert environ[b"GOMAXPROCS"] == os.environ.get("GOMAXPROCS", "1").encode()
    assert environ[b"GOGC"] == os.environ.get("GOGC", "400").encode()


def test_ctrl_c_stops_every_child(up: Up) -> None:
    children = children_of(up.proc.pid)
    assert len(children) == 4, children  # redis, demo model, sidecar, opa
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(15) == 0
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if alive(pid)]
    assert not listening(up.port)
    assert "stopped" in up.text()


def test_up_without_an_upstream_starts_the_demo_model_on_its_own(tmp_path: Path) -> None:
    policy = tmp_path / "bare.yaml"
    rules = "    rules:\n      - parameter: temperature\n        max: 1.0\n"
    policy.write_text("version: 1\npolicies:\n  - id: quality\n" + rules)
    with running_up(tmp_path, policy) as up:  # no --demo
        assert "configures no upstream; the demo model stands in" in up.text()
        assert "  demo      http://127.0.0.1:" in up.text()
        status, doc = post(f"{up.url}/v1/chat/completions", CHAT)
        assert status == 200 and doc["choices"][0]["message"]["content"]
        status, doc = post(f"{up.url}/v1/chat/completions", {**CHAT, "temperature": 1.5})
        assert status == 400 and doc["error"]["code"] == "invalid_parameter"


def test_up_leaves_a_configured_upstream_alone(tmp_path: Path) -> None:
    policy = e2e_policy(tmp_path / "hexarch.yaml", api_key=False)
    with running_up(tmp_path, policy) as up:  # its tinyllama: upstream section, no --demo
        assert "demo model" not in up.text() and "  demo  " not in up.text()
        assert len(children_of(up.proc.pid)) == 3  # redis, sidecar, opa


def test_up_refuses_a_busy_port_and_a_missing_policy(tmp_path: Path) -> None:
    policy = e2e_policy(tmp_path / "hexarch.yaml", api_key=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*HEXARCH, "up", "--policy", str(policy), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env={**os.environ},
        )
    assert done.returncode == 1
    assert f"port {port}" in done.stderr and "in use" in done.stderr
    missing = subprocess.run(
        [*HEXARCH, "up", "--policy", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert missing.returncode == 2
    assert "not found" in missing.stderr
