"""`hexarch up`: the whole local stack in one command.

Started in dependency order, each as a child process bound to loopback:

1. `redis-server` (no persistence, bounded memory) for the counters;
2. with `--demo`, the demo model (`sidecar.demo_model`), which becomes the default upstream; also
   without `--demo` when neither POLICY nor `HEXARCH_UPSTREAM_URL` configures an upstream, so the
   stack answers out of the box (the banner says so);
3. the sidecar (`hexarch serve --config POLICY`), which also compiles POLICY and serves the bundle
   at `/bundles/hexarch.tar.gz` with an ETag, recompiling when the file changes;
4. OPA, configured (generated `opa-config.yaml` in the work directory) to poll that bundle every
   1-2 s, so an edited policy is live within seconds and without a restart. OPA swaps bundles
   atomically: requests in flight see either the old or the new policy, never an error.

Ports: the sidecar port is exactly `--port` (default 8080). Redis, OPA and the demo model use
`--redis-port` / `--opa-port` / `--demo-port` when given (and fail if busy); otherwise their usual
port (6379, 8181, 11434) when it is free, else any free port, since they are private to the stack
and a developer's own Redis or Ollama must not stop it from starting.

Ctrl-C (SIGINT) or SIGTERM stops every child (sidecar first, Redis last) and exits 0. A child that
dies on its own stops the stack with exit 1 and the tail of its log. Children also get SIGTERM from
the kernel if `hexarch up` itself is killed (Linux `PR_SET_PDEATHSIG`), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from sidecar.errors import SidecarError

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_RESOURCE = "bundles/hexarch.tar.gz"
DEFAULT_REDIS_PORT = 6379
DEFAULT_OPA_PORT = 8181
DEFAULT_DEMO_PORT = 11434
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
# Go runtime settings for OPA, unless the environment sets them. One scheduler thread: OPA answers
# one sidecar, and idle Go threads spinning for work and parallel GC workers took CPU from the
# sidecar and Redis on a small machine. GOGC=400: a collection every 4x live heap instead of 2x,
# trading some tens of MB for less GC per decision. Together about -0.2 ms added p50 and +15%
# throughput through the sidecar in `make bench` (docs/performance.md).
OPA_RUNTIME_ENV = {"GOMAXPROCS": "1", "GOGC": "400"}


class StackError(SidecarError):
    """The local stack could not start (a binary is missing, a port is busy, a child died)."""


@dataclass(frozen=True)
class StackOptions:
    policy: Path
    demo: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    opa_port: int | None = None
    redis_port: int | None = None
    demo_port: int | None = None
    work_dir: Path = Path(".hexarch/run")
    demo_latency_ms: float = 0.0
    demo_failure_rate: float = 0.0
    polling_min_seconds: int = 1
    polling_max_seconds: int = 2
    # False: the sidecar writes to this terminal (its decision log is what a developer watches).
    sidecar_log_file: bool = False
    decision_log: str | None = None  # `logging.file` of the policy; None: the sidecar's stdout
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None

    def tail(self, chars: int = 2000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]


# ---------------------------------------------------------------------------------------------
# Small helpers


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT would look busy; servers set it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(host: str, requested: int | None, usual: int, what: str) -> int:
    if requested is not None:
        if not port_is_free(host, requested):
            raise StackError(f"{what} port {requested} on {host} is already in use")
        return requested
    return usual if port_is_free(host, usual) else free_port(host)


def find_binary(name: str, env_var: str, env: Mapping[str, str] | None = None) -> str:
    """$env_var, then the project's .tools/bin (scripts/setup.sh installs the pinned OPA there), then PATH."""
    environ = os.environ if env is None else env
    for candidate in (environ.get(env_var), str(ROOT / ".tools" / "bin" / name), shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(f"{name} not found: set {env_var}, put it on PATH, or run scripts/setup.sh")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (OSError, urllib.error.URLError):
        return False


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def opa_config(sidecar_url: str, min_delay: int, max_delay: int) -> str:
    """OPA's configuration: one service (the sidecar) and one bundle polled from it."""
    return (
        "services:\n"
        "  hexarch:\n"
        f"    url: {sidecar_url}\n"
        "bundles:\n"
        "  hexarch:\n"
        "    service: hexarch\n"
        f"    resource: {BUNDLE_RESOURCE}\n"
        "    persist: false\n"
        "    polling:\n"
        f"      min_delay_seconds: {min_delay}\n"
        f"      max_delay_seconds: {max_delay}\n"
    )


def upstream_configured(policy: Path) -> bool:
    """True when the policy file (or HEXARCH_* variables) names at least one upstream."""
    from sidecar.settings import load_settings

    return bool(load_settings(str(policy), env=dict(os.environ)).upstreams)


def validate_file(policy: Path) -> str | None:
    """The whole file checked as `hexarch check` does (policies, then the sidecar's sections).

    None when it is valid, else the located diagnostics to print.
    """
    from compiler.api import check_custom, load_policy
    from compiler.diagnostics import Diagnostic, format_all
    from compiler.errors import CompilerError, PolicyError
    from sidecar.settings import file_diagnostics

    diagnostics: list[Diagnostic] = []
    try:
        check_custom(load_policy(policy))
    except PolicyError as exc:
        diagnostics.extend(exc.diagnostics)
    except CompilerError as exc:
        return f"hexarch up: {exc}"
    seen = set(diagnostics)
    diagnostics.extend(d for d in file_diagnostics(str(policy)) if d not in seen)
    errors = [d for d in diagnostics if d.severity == "error"]
    if not errors:
        return None
    plural = "s" if len(errors) != 1 else ""
    return f"{format_all(errors)}\nhexarch up: {len(errors)} error{plural} in {policy}; nothing started"


def bundle_polling(policy: Path) -> tuple[int, int]:
    """OPA's bundle polling delays (min, max): `opa.bundle_polling_seconds` of the file, else 1-2 s."""
    from sidecar.settings import load_settings

    seconds = load_settings(str(policy), env=dict(os.environ)).opa_bundle_polling_seconds
    if seconds is None:
        return StackOptions.polling_min_seconds, StackOptions.polling_max_seconds
    return seconds, seconds


def _decision_log(policy: Path) -> str | None:
    from sidecar.settings import load_settings

    settings = load_settings(str(policy), env=dict(os.environ))
    return settings.log_file if settings.log_decisions else "off (logging.enabled: false)"


def _anonymous_needed(policy: Path, env: Mapping[str, str]) -> bool:
    """True when the policy file declares no API keys, so the demo must work without one."""
    from sidecar.settings import load_settings

    settings = load_settings(str(policy), env={**os.environ, **env})
    return not settings.api_keys and not settings.trusted_headers.enabled


# ---------------------------------------------------------------------------------------------
# The stack


class Stack:
    """Redis, OPA, the sidecar and optionally the demo model, as child processes."""

    def __init__(self, options: StackOptions, interrupted: threading.Event | None = None) -> None:
        self.options = options
        self.children: list[Child] = []
        # Set by a signal handler: start() gives up waiting instead of finishing a doomed start.
        self.interrupted = interrupted or threading.Event()
        host = options.host
        self.redis_port = choose_port(host, options.redis_port, DEFAULT_REDIS_PORT, "redis")
        self.opa_port = choose_port(host, options.opa_port, DEFAULT_OPA_PORT, "opa")
        self.demo_port = (
            choose_port(host, options.demo_port, DEFAULT_DEMO_PORT, "demo model") if options.demo else None
        )
        if not port_is_free(host, options.port):
            raise StackError(f"sidecar port {options.port} on {host} is already in use (choose --port)")
        self.work_dir = options.work_dir.resolve()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def sidecar_url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    @property
    def opa_url(self) -> str:
        return f"http://{self.options.host}:{self.opa_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.options.host}:{self.redis_port}/0"

    @property
    def demo_url(self) -> str | None:
        return None if self.demo_port is None else f"http://{self.options.host}:{self.demo_port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child and wait until the sidecar answers /readyz; on failure stop them all."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            if self.options.demo:
                self._start_demo()
            self._start_sidecar()
            self._start_opa()
            self._wait(self.sidecar_url + "/readyz", "sidecar readiness (/readyz)")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every child in reverse start order, SIGKILL what does not exit in time."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in reversed(self.children):
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(STOP_TIMEOUT_SECONDS)

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- children -------------------------------------------------------------------------------

    def _spawn(
        self, name: str, cmd: list[str], env: Mapping[str, str] | None = None, inherit_output: bool = False
    ) -> Child:
        """Start `cmd`; its output goes to <work-dir>/<name>.log unless `inherit_output`."""
        log_path = None if inherit_output else self.work_dir / f"{name}.log"
        environ = dict(os.environ)
        environ.update(env or {})
        if log_path is None:
            proc = subprocess.Popen(cmd, env=environ, start_new_session=True, preexec_fn=_die_with_parent)
        else:
            with log_path.open("wb") as fh:
                proc = subprocess.Popen(
                    cmd,
                    env=environ,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def _wait(self, url: str, what: str, child: Child | None = None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.interrupted.is_set():
                raise StackError("interrupted while starting")
            dead = self.dead_child()
            if dead is not None:
                raise StackError(
                    f"{dead.name} exited with code {dead.proc.returncode} while waiting for "
                    f"{what}\n{dead.tail()}"
                )
            if http_ok(url):
                return
            time.sleep(0.05)
        detail = child.tail() if child is not None else ""
        raise StackError(f"{what} not ready after {READY_TIMEOUT_SECONDS:.0f}s ({url})\n{detail}")

    def _start_redis(self) -> None:
        binary = find_binary("redis-server", "HEXARCH_REDIS_SERVER")
        cmd = [
            binary,
            "--port",
            str(self.redis_port),
            "--bind",
            self.options.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "64mb",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--dir",
            str(self.work_dir),
            "--loglevel",
            "warning",
        ]
        child = self._spawn("redis", cmd)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not _redis_pong(self.options.host, self.redis_port):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"redis-server did not start on port {self.redis_port}\n{child.tail()}")
            time.sleep(0.05)

    def _start_demo(self) -> None:
        assert self.demo_port is not None
        cmd = [
            sys.executable,
            "-m",
            "sidecar.demo_model",
            "--host",
            self.options.host,
            "--port",
            str(self.demo_port),
            "--latency-ms",
            str(self.options.demo_latency_ms),
            "--failure-rate",
            str(self.options.demo_failure_rate),
        ]
        child = self._spawn("demo-model", cmd)
        self._wait(f"{self.demo_url}/health", "demo model", child)

    def sidecar_env(self) -> dict[str, str]:
        env = {
            "HEXARCH_LISTEN": f"{self.options.host}:{self.options.port}",
            "HEXARCH_OPA_URL": self.opa_url,
            "HEXARCH_REDIS_URL": self.redis_url,
            "HEXARCH_SERVE_BUNDLE": "true",
        }
        if self.demo_url is not None:
            env["HEXARCH_UPSTREAM_URL"] = self.demo_url
            if _anonymous_needed(self.options.policy, self.options.extra_env):
                env["HEXARCH_ANONYMOUS"] = "true"
        env.update(self.options.extra_env)
        return env

    def _start_sidecar(self) -> None:
        cmd = [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(self.options.policy.resolve())]
        child = self._spawn(
            "sidecar", cmd, env=self.sidecar_env(), inherit_output=not self.options.sidecar_log_file
        )
        # The bundle must be served before OPA starts polling; /healthz is up before OPA is.
        self._wait(f"{self.sidecar_url}/{BUNDLE_RESOURCE}", "sidecar bundle endpoint", child)

    def _start_opa(self) -> None:
        from compiler.errors import OpaToolError
        from compiler.opa_tool import find_opa

        try:
            binary = find_opa()  # the one lookup of the pinned OPA, shared with the compiler
        except OpaToolError as exc:
            raise StackError(str(exc)) from exc
        config = self.work_dir / "opa-config.yaml"
        config.write_text(
            opa_config(self.sidecar_url, self.options.polling_min_seconds, self.options.polling_max_seconds)
        )
        cmd = [
            binary,
            "run",
            "--server",
            "--addr",
            f"{self.options.host}:{self.opa_port}",
            "--config-file",
            str(config),
            "--log-level",
            "error",
            # Bundle data is kept as AST, so a decision does not convert data.hexarch.config from Go
            # values on every query (docs/performance.md measures the difference).
            "--optimize-store-for-read-speed",
            "--skip-version-check",  # no call to GitHub from a local stack
            "--shutdown-grace-period",
            "2",
        ]
        runtime = {k: v for k, v in OPA_RUNTIME_ENV.items() if k not in os.environ}
        child = self._spawn("opa", cmd, env=runtime)
        self._wait(f"{self.opa_url}/health?bundles", "OPA with the hexarch bundle", child)


def _redis_pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_stack(options: StackOptions) -> Iterator[Stack]:
    stack = Stack(options)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


# ---------------------------------------------------------------------------------------------
# Command line


def banner(stack: Stack) -> str:
    url = stack.sidecar_url
    lines = [
        "hexarch up: the stack is ready",
        f"  sidecar   {url}   (metrics {url}/metrics, bundle {url}/{BUNDLE_RESOURCE})",
        f"  opa       {stack.opa_url}   (polls the bundle every "
        f"{stack.options.polling_min_seconds}-{stack.options.polling_max_seconds} s)",
        f"  redis     {stack.redis_url}",
    ]
    if stack.demo_url is not None:
        lines.append(f"  demo      {stack.demo_url}   (the upstream)")
    lines += [
        f"  policy    {stack.options.policy}   (edits are live within seconds)",
        f"  logs      {stack.work_dir}",
        f"  decisions {stack.options.decision_log or 'this terminal'}   (one line per request)",
        "",
        "Try:",
        f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
        '    -d \'{"model": "tinyllama", "messages": [{"role": "user", "content": "Hello"}]}\'',
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    policy = Path(args.policy)
    if not policy.is_file():
        print(f"hexarch up: policy file {policy} not found", file=sys.stderr)
        return 2
    problems = validate_file(policy)
    if problems is not None:  # nothing is started for a file `hexarch check` would refuse
        print(problems, file=sys.stderr)
        return 1
    try:
        demo = args.demo or not upstream_configured(policy)
        polling = bundle_polling(policy)
        decision_log = _decision_log(policy)
    except SidecarError as exc:  # the settings in the file are invalid: the diagnostics say where
        print(f"hexarch up: {exc}", file=sys.stderr)
        return 1
    if demo and not args.demo:
        print(
            f"hexarch up: {policy} configures no upstream; the demo model stands in (as with --demo)",
            flush=True,
        )
    options = StackOptions(
        policy=policy,
        demo=demo,
        host=args.host,
        port=args.port,
        opa_port=args.opa_port,
        redis_port=args.redis_port,
        demo_port=args.demo_port,
        work_dir=Path(args.work_dir),
        demo_latency_ms=args.demo_latency_ms,
        demo_failure_rate=args.demo_failure_rate,
        polling_min_seconds=polling[0],
        polling_max_seconds=polling[1],
        decision_log=decision_log,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack = Stack(options, interrupted=stop)
        try:
            stack.start()
        except StackError as exc:
            if stop.is_set():
                return 0
            print(f"hexarch up: {exc}", file=sys.stderr)
            return 1
        print(banner(stack), flush=True)
        code = _supervise(stack, stop)
        stack.stop()
        print("hexarch up: stopped", flush=True)
        return code
    except SidecarError as exc:
        print(f"hexarch up: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(stack: Stack, stop: threading.Event) -> int:
    while not stop.wait(0.2):
        dead = stack.dead_child()
        if dead is not None:
            print(
                f"hexarch up: {dead.name} exited with code {dead.proc.returncode}; stopping\n{dead.tail()}",
                file=sys.stderr,
                flush=True,
            )
            return 1
    return 0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="run the local stack: Redis, OPA, the sidecar and (--demo) the demo model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", required=True, help="the hexarch.yaml to enforce (hot-reloaded)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start the demo model as the upstream (automatic when the policy configures none)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every part binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="sidecar port (default 8080)")
    parser.add_argument("--opa-port", type=int, default=None, help="default: 8181 if free, else any")
    parser.add_argument("--redis-port", type=int, default=None, help="default: 6379 if free, else any")
    parser.add_argument("--demo-port", type=int, default=None, help="default: 11434 if free, else any")
    parser.add_argument("--demo-latency-ms", type=float, default=0.0, help="demo model latency")
    parser.add_argument(
        "--demo-failure-rate", type=float, default=0.0, help="share of demo model calls answered 500"
    )
    parser.add_argument(
        "--work-dir", default=".hexarch/run", help="logs and OPA config (default .hexarch/run)"
    )
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """`python -m sidecar.stack`: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="hexarch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["up", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
