"""The embedded decision engine (`decision_engine: wasm`): OPA's Wasm build of the bundle, in-process.

The same bundle OPA serves is compiled with `opa build -t wasm -e hexarch/decision` (its Rego files
without the `*_test.rego` ones; the compiled data is loaded separately), and evaluated with the
`wasmtime` package through OPA's Wasm ABI: the input JSON is written at the heap's base, `opa_eval`
evaluates the entrypoint against the data parsed once at load, and the result set is read back as
JSON. No socket, no HTTP: a decision costs the evaluation alone.

The host builtins the module imports (`sprintf`, `time.clock`, `time.now_ns`, `time.weekday`) are
answered by sidecar/wasm_builtins.py with the OPA server's semantics; a builtin that fails answers
undefined, as in the server.

Reload: a background task asks the bundle source for its revision every `check_seconds`; a new
revision is compiled to Wasm in a thread and swapped in whole, so a decision always sees one bundle.
A failed build keeps the previous module (logged).

One known difference of OPA's Wasm runtime: its `glob.match` does not let `*` or `?` match a line
break (the OPA server's does). An input whose JSON holds an escaped line break (`\n`, `\r`: only
odd model names, principals or parameters do) is therefore decided by the OPA server, over the
same client the `opa` engine uses, so both engines still give the same decision for every input.

The OPA server still runs: it serves and verifies the bundle, `/readyz` asks it, and it is the
source of truth for `opa test`; the differential tests (tests/sidecar/test_wasm_engine.py) keep the
two engines' decisions identical.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import wasmtime

from sidecar.errors import PolicyEngineError
from sidecar.periodic import Periodic
from sidecar.wasm_builtins import HOST_BUILTINS, NOW_NS, BuiltinError

logger = logging.getLogger("hexarch.wasm")

ENTRYPOINT = "hexarch/decision"
_PAGE = 65536
# The compiled data lives under data.hexarch.config (compiler/bundle.py's layout).
_DATA_FILE = "hexarch/config/data.json"

# (revision, gzipped bundle) of the bundle to decide with, or None when none is built yet.
BundleSource = Callable[[], Awaitable[tuple[str, bytes] | None]]


class WasmBuildError(PolicyEngineError):
    """`opa build -t wasm` refused the bundle, or the module does not load."""


def wasm_from_bundle(bundle: bytes, opa: str) -> tuple[bytes, bytes]:
    """(policy.wasm, data.json) of a gzipped Hexarch bundle: its Rego files minus the tests."""
    with tempfile.TemporaryDirectory(prefix="hexarch-wasm-") as tmp:
        src = Path(tmp) / "src"
        data = b"{}"
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.lstrip("/")
                if not member.isfile() or ".." in Path(name).parts:
                    continue
                extracted = tar.extractfile(member)
                if extracted is None:
                    continue
                if name == _DATA_FILE:
                    data = extracted.read()
                elif name.endswith(".rego") and not name.endswith("_test.rego"):
                    target = src / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(extracted.read())
        out = Path(tmp) / "wasm.tar.gz"
        cmd = [opa, "build", "-t", "wasm", "-e", ENTRYPOINT, "-o", str(out), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise WasmBuildError(f"opa build -t wasm failed: {done.stderr.strip()[:2000]}")
        with tarfile.open(out, mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.name.lstrip("/") == "policy.wasm":
                    module = tar.extractfile(member)
                    if module is not None:
                        return module.read(), data
    raise WasmBuildError("opa build -t wasm wrote no policy.wasm")


class WasmPolicy:
    """One loaded module with its data: `evaluate(input_bytes)` -> the decision document.

    Not thread-safe (one linear memory); the sidecar calls it from its event loop only.
    """

    def __init__(self, module_bytes: bytes, data: Any, revision: str = "") -> None:
        self.revision = revision
        self._engine = wasmtime.Engine()
        self._store = wasmtime.Store(self._engine)
        module = wasmtime.Module(self._engine, module_bytes)
        limits = next(i.type for i in module.imports if i.name == "memory")
        assert isinstance(limits, wasmtime.MemoryType)
        self._memory = wasmtime.Memory(self._store, wasmtime.MemoryType(limits.limits))
        self._now_ns: int | None = None
        self._builtins: dict[int, str] = {}
        i32 = wasmtime.ValType.i32()
        imports: list[wasmtime.Func | wasmtime.Memory] = []
        for imp in module.imports:
            if imp.name == "memory":
                imports.append(self._memory)
            elif imp.name == "opa_abort":
                imports.append(wasmtime.Func(self._store, wasmtime.FuncType([i32], []), self._abort))
            elif imp.name == "opa_println":
                imports.append(wasmtime.Func(self._store, wasmtime.FuncType([i32], []), lambda _a: None))
            elif imp.name is not None and imp.name.startswith("opa_builtin"):
                arity = int(imp.name.removeprefix("opa_builtin"))
                ftype = wasmtime.FuncType([i32] * (arity + 2), [i32])
                imports.append(wasmtime.Func(self._store, ftype, self._builtin))
            else:
                raise WasmBuildError(f"the Wasm module imports an unknown {imp.module}.{imp.name}")
        instance = wasmtime.Instance(self._store, module, imports)
        ex = instance.exports(self._store)

        def fn(name: str) -> wasmtime.Func:
            found = ex[name]
            assert isinstance(found, wasmtime.Func)
            return found

        self._malloc = fn("opa_malloc")
        self._json_parse = fn("opa_json_parse")
        self._json_dump = fn("opa_json_dump")
        self._heap_get = fn("opa_heap_ptr_get")
        self._eval = fn("opa_eval")
        names = self._read_json(self._json_dump(self._store, fn("builtins")(self._store)))
        self._builtins = {int(v): k for k, v in names.items()}
        missing = set(self._builtins.values()) - set(HOST_BUILTINS) - {NOW_NS}
        if missing:
            raise WasmBuildError(f"the Wasm module needs host builtins not provided: {sorted(missing)}")
        entrypoints = self._read_json(self._json_dump(self._store, fn("entrypoints")(self._store)))
        self._entrypoint = int(entrypoints[ENTRYPOINT])
        raw = orjson.dumps(data)
        self._data = self._parse(raw)
        self._base = int(self._heap_get(self._store))

    # --- memory helpers ---------------------------------------------------------------------

    def _write(self, raw: bytes) -> int:
        addr = int(self._malloc(self._store, len(raw)))
        self._memory.write(self._store, raw, addr)
        return addr

    def _parse(self, raw: bytes) -> int:
        addr = self._write(raw)
        value = int(self._json_parse(self._store, addr, len(raw)))
        if value == 0:
            raise WasmBuildError("the Wasm module could not parse a JSON document")
        return value

    def _read_cstring(self, addr: int) -> bytes:
        """The NUL-terminated string at `addr` (read in C: a document can be kilobytes)."""
        if not 0 <= addr < self._memory.data_len(self._store):
            raise PolicyEngineError(f"the Wasm policy returned an address outside its memory: {addr}")
        base = ctypes.cast(self._memory.data_ptr(self._store), ctypes.c_void_p).value
        assert base is not None
        return ctypes.string_at(base + addr)

    def _read_json(self, addr: int) -> Any:
        return orjson.loads(self._read_cstring(addr))

    # --- imports ------------------------------------------------------------------------------

    def _abort(self, addr: int) -> None:
        message = self._read_cstring(addr).decode(errors="replace")
        raise PolicyEngineError(f"the Wasm policy aborted: {message}")

    def _builtin(self, builtin_id: int, _ctx: int, *args: int) -> int:
        name = self._builtins.get(builtin_id, "?")
        if name == NOW_NS:
            if self._now_ns is None:
                self._now_ns = time.time_ns()
            return self._parse(str(self._now_ns).encode())
        try:
            values = [self._read_json(int(self._json_dump(self._store, a))) for a in args]
            result = HOST_BUILTINS[name](*values)
        except (BuiltinError, KeyError, TypeError, ValueError, OverflowError):
            return 0  # undefined, as a failing builtin is in the OPA server
        return self._parse(orjson.dumps(result))

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(self, input_raw: bytes, now_ns: int | None = None) -> dict[str, Any]:
        """The decision document for `input_raw` (JSON), or PolicyEngineError when undefined.

        `now_ns` fixes the clock, like `with time.now_ns as ...` (tests); None reads the real one.
        """
        need = self._base + len(input_raw) + 1
        size = self._memory.data_len(self._store)
        if need + 4 * _PAGE > size:
            self._memory.grow(self._store, (need + 4 * _PAGE - size) // _PAGE + 1)
        self._memory.write(self._store, input_raw, self._base)
        self._now_ns = now_ns
        try:
            addr = self._eval(
                self._store,
                0,
                self._entrypoint,
                self._data,
                self._base,
                len(input_raw),
                self._base + len(input_raw),
                0,
            )
        except wasmtime.WasmtimeError as exc:
            raise PolicyEngineError(f"the Wasm policy failed: {exc}") from exc
        results = orjson.loads(self._read_cstring(int(addr)))
        if not results or not isinstance(results[0].get("result"), dict):
            raise PolicyEngineError("the Wasm policy has no decision (undefined result)")
        decision: dict[str, Any] = results[0]["result"]
        return decision


def needs_opa_server(input_raw: bytes) -> bool:
    """True when OPA's Wasm glob.match could differ from the server's: a line break in a string."""
    return b"\\n" in input_raw or b"\\r" in input_raw


class _Engine(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]: ...

    async def ready(self) -> bool: ...

    async def bundle_revisions(self) -> dict[str, str]: ...


class WasmEngine:
    """The DecisionEngine that evaluates in-process; reloads on every new bundle revision."""

    def __init__(
        self, source: BundleSource, opa_binary: str, server: _Engine, check_seconds: float = 1.0
    ) -> None:
        self._source = source
        self._server = server
        self._opa = opa_binary
        self._policy: WasmPolicy | None = None
        self._failed_revision: str | None = None
        self._watcher = Periodic("the Wasm bundle watcher", self._check, check_seconds)
        self._lock = threading.Lock()
        self.reloads = 0

    @property
    def revision(self) -> str | None:
        return self._policy.revision if self._policy else None

    async def start(self) -> None:
        await self._server.start()
        await self.refresh()
        self._watcher.start()

    async def close(self) -> None:
        await self._watcher.stop()
        await self._server.close()

    async def refresh(self) -> None:
        """Build and swap in the source's current bundle if its revision is new."""
        current = await self._source()
        if current is None:
            return
        revision, bundle = current
        if revision in (self.revision, self._failed_revision):
            return
        try:
            policy = await asyncio.to_thread(self._load, revision, bundle)
        except (
            WasmBuildError,
            wasmtime.WasmtimeError,
            tarfile.TarError,
            OSError,
            subprocess.SubprocessError,
        ) as exc:
            self._failed_revision = revision
            logger.error(
                "Wasm build of revision %s failed, still deciding with %s: %s", revision, self.revision, exc
            )
            return
        self._policy = policy
        self.reloads += 1
        logger.info("Wasm decision engine loaded revision %s", revision)

    def _load(self, revision: str, bundle: bytes) -> WasmPolicy:
        module, data = wasm_from_bundle(bundle, self._opa)
        return WasmPolicy(module, {"hexarch": {"config": orjson.loads(data)}}, revision)

    async def _check(self) -> None:
        try:
            await self.refresh()
        except Exception:  # a watcher must outlive one bad check; logged with its traceback
            logger.exception("Wasm bundle check failed")

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]:
        policy = self._policy
        if policy is None:
            raise PolicyEngineError("the Wasm decision engine has no bundle loaded yet")
        raw = orjson.dumps(input_doc)
        if needs_opa_server(raw):
            return await self._server.decide(input_doc)
        return policy.evaluate(raw)

    async def bundle_revisions(self) -> dict[str, str]:
        """What the OPA server (which still loads and verifies the bundle) has activated."""
        return await self._server.bundle_revisions()

    async def ready(self) -> bool:
        """A module is loaded, and the OPA server (the bundle's verifier, the fallback) is ready."""
        return self._policy is not None and await self._server.ready()


def default_opa_binary() -> str:
    from compiler.opa_tool import find_opa

    return os.environ.get("HEXARCH_OPA") or find_opa()
