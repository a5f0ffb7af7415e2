"""Who decides a request: the `decision_engine` setting and the engines it names.

    DecisionEngine (protocol)   start() / close() / decide(input) -> decision / ready() / bundle_revisions()
    ├── "opa"   OpaClient        the OPA server decides (POST /v1/data/hexarch/decision); default
    └── "wasm"  WasmEngine       OPA's Wasm build of the same bundle, evaluated in-process

Both answer the DESIGN.md decision document for the DESIGN.md input document, and both raise
PolicyEngineError when they cannot (the caller applies the fail mode). `ENGINES` is the registry the
app builds from: settings validate `decision_engine` against its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sidecar.bundle_server import BundleServer
from sidecar.opa_client import OpaClient
from sidecar.settings import DECISION_ENGINES, Settings


class DecisionEngine(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, input_doc: dict[str, Any]) -> dict[str, Any]: ...

    async def ready(self) -> bool: ...

    async def bundle_revisions(self) -> dict[str, str]: ...


def _opa(settings: Settings, bundle: BundleServer | None) -> DecisionEngine:
    return OpaClient(settings.opa_url, settings.opa_timeout_ms, settings.opa_decision_path)


def _wasm(settings: Settings, bundle: BundleServer | None) -> DecisionEngine:
    from sidecar.wasm_engine import WasmEngine, default_opa_binary

    # settings guarantee a policy file with the wasm engine, so the app always has a bundle here
    assert bundle is not None, "decision_engine: wasm needs the sidecar's own bundle"
    server = OpaClient(settings.opa_url, settings.opa_timeout_ms, settings.opa_decision_path)
    return WasmEngine(bundle.current, default_opa_binary(), server, settings.bundle_check_seconds)


ENGINES: dict[str, Callable[[Settings, BundleServer | None], DecisionEngine]] = {"opa": _opa, "wasm": _wasm}
assert tuple(ENGINES) == DECISION_ENGINES


def create_engine(settings: Settings, bundle: BundleServer | None) -> DecisionEngine:
    return ENGINES[settings.decision_engine](settings, bundle)
