"""`Guardian`: the seed library's API on top of a Hexarch sidecar's `/hexarch/v1/` endpoints.

One pooled HTTP client per Guardian: an `httpx.Client` for sync code and, on first async use, an
`httpx.AsyncClient` (one per event loop). Nothing connects until the first call, so a module-level
`guardian = Guardian()` costs nothing at import.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import httpx
import yaml

from hexarch_guardrails.exceptions import (
    OPAConnectionError,
    OPAPolicyError,
    PolicyConfigError,
    PolicyViolation,
    PolicyWarning,
)

logger = logging.getLogger("hexarch_guardrails")

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/hexarch/v1"
P = ParamSpec("P")
R = TypeVar("R")

# Context keys that describe the operation; the rest become its parameters.
_RESOURCE_KEYS = ("resource", "service", "api")
_NOT_PARAMS = frozenset(
    {
        *_RESOURCE_KEYS,
        "model",
        "tokens",
        "operation",
        "user",
        "params",
        "function",
        "policy_id",
        "max_output_tokens",
    }
)
_SEVERITY = {400: "medium", 403: "high", 428: "medium", 429: "medium"}


def _described(policy_id: str | None, context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The check request for `policy_id` and a seed-style context."""
    ctx = dict(context or {})
    body: dict[str, Any] = {}
    if policy_id is not None:
        body["policy_id"] = policy_id
    for key in _RESOURCE_KEYS:
        if isinstance(ctx.get(key), str):
            body["resource"] = ctx[key]
            break
    for key in ("model", "operation", "user"):
        if isinstance(ctx.get(key), str):
            body[key] = ctx[key]
    for key in ("tokens", "max_output_tokens"):
        value = ctx.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            body[key] = value
    params = dict(ctx["params"]) if isinstance(ctx.get("params"), Mapping) else {}
    for key, value in ctx.items():
        if key not in _NOT_PARAMS and isinstance(value, str | int | float | bool):
            params.setdefault(key, value)
    body["params"] = params
    return body


def _decision(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's decision shape ({allowed, reason, action, severity}) plus Hexarch's details."""
    allowed = reply.get("allow") is True
    notes = [f"{w.get('policy')}: {w.get('message')}" for w in reply.get("warnings") or ()]
    notes += [
        f"{lim['policy']}: {lim['used']} of {lim['limit']} {lim['unit']} per {lim['window']} used"
        for lim in reply.get("limits") or ()
        if lim.get("warn") and lim.get("window") != "0s"  # a per-request cap is not a running total
    ]
    warned = bool(notes)
    denial = str(reply.get("message") or "denied by policy")
    reason = ("; ".join(notes) or "allowed") if allowed else denial
    status = reply.get("status")
    return {
        "allowed": allowed,
        "reason": reason,
        "action": ("warn" if warned else "allow") if allowed else "block",
        "severity": "low" if allowed else _SEVERITY.get(status if isinstance(status, int) else 0, "high"),
        **dict(reply),
    }


class Guardian:
    """Guard functions with the policies of a Hexarch sidecar.

    Args:
        policy_file: a hexarch.yaml; when given, policy ids are checked against it before any call.
        opa_url: the OPA server's URL; when given, `health_check()` asks it too.
        enforce: True raises PolicyViolation; False warns (warnings + logging) and runs the function.
        runtime_mode: the seed's engine choice; only ``"sidecar"`` (the default) exists here.
        url: the sidecar (default $HEXARCH_URL, else http://127.0.0.1:8080).
        api_key: the caller's key (default $HEXARCH_API_KEY); sent as `Authorization: Bearer`.
        timeout: seconds per HTTP call.
    """

    def __init__(
        self,
        policy_file: str | None = None,
        opa_url: str | None = None,
        enforce: bool = True,
        runtime_mode: str | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if runtime_mode not in (None, "sidecar"):
            raise PolicyConfigError(
                f"runtime_mode {runtime_mode!r} is not available: Hexarch decides in the sidecar ('sidecar')"
            )
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise PolicyConfigError("timeout must be a positive number of seconds")
        self.url = (url or os.environ.get("HEXARCH_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise PolicyConfigError(f"url must start with http:// or https://, got {self.url!r}")
        self.enforce = enforce
        self.runtime_mode = "sidecar"
        self.opa_url = opa_url.rstrip("/") if opa_url else None
        self.timeout = float(timeout)
        self.policy_file = policy_file
        self._local_ids = _policy_ids(policy_file) if policy_file else None
        key = api_key if api_key is not None else os.environ.get("HEXARCH_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self.timeout)
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never the key
        return f"Guardian(url={self.url!r}, enforce={self.enforce})"

    # -------------------------------------------------------------------------------- plumbing
    def _aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self.timeout)
            self._async_loop = loop
        return self._async

    def close(self) -> None:
        self.http.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.http.close()

    def __enter__(self) -> Guardian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _known(self, policy_id: str) -> None:
        if self._local_ids is not None and policy_id not in self._local_ids:
            raise PolicyConfigError(f"Unknown policy: {policy_id} (not in {self.policy_file})")

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One API call (sync); errors become the SDK's exceptions."""
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise OPAConnectionError(f"cannot reach the Hexarch sidecar at {self.url}: {exc}") from exc
        return _answer(response)

    async def acall(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One API call (async)."""
        try:
            response = await self._aclient().request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise OPAConnectionError(f"cannot reach the Hexarch sidecar at {self.url}: {exc}") from exc
        return _answer(response)

    # -------------------------------------------------------------------------------- decisions
    def evaluate_policy(self, policy_id: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Decision plus admission for the operation `context` describes (seed shape + Hexarch's)."""
        self._known(policy_id)
        return _decision(self.call("POST", f"{API}/check", json=_described(policy_id, context)))

    async def aevaluate_policy(
        self, policy_id: str, context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        self._known(policy_id)
        return _decision(await self.acall("POST", f"{API}/check", json=_described(policy_id, context)))

    def settle(
        self, reservation_id: str, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> dict[str, Any]:
        """Report what an admitted operation really used (idempotent)."""
        body = {
            "reservation_id": reservation_id,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        return self.call("POST", f"{API}/settle", json=body)

    async def asettle(
        self, reservation_id: str, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> dict[str, Any]:
        body = {
            "reservation_id": reservation_id,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        return await self.acall("POST", f"{API}/settle", json=body)

    def apply_decision(self, decision: dict[str, Any], what: str) -> bool:
        """True when the guarded work may run; raises or warns on a refusal per `enforce`."""
        if decision["allowed"]:
            if decision["action"] == "warn":
                _warn(f"{what}: {decision['reason']}")
            return True
        violation = _violation(decision)
        if self.enforce:
            raise violation
        _warn(f"{what} would be blocked (enforce=False): {violation}")
        return True

    def check(
        self, policy_id: str, context: dict[str, Any] | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: check `policy_id` before each call of a sync or async function.

        An admitted call's reservation is settled when the function returns (or raises) with the
        context's `tokens` as its prompt tokens.
        """

        def decorator(func: Callable[P, R]) -> Callable[P, R]:
            ctx = {
                "function": getattr(func, "__name__", "function"),
                "policy_id": policy_id,
                **(context or {}),
            }
            tokens = ctx.get("tokens") if isinstance(ctx.get("tokens"), int) else 0
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    decision = await self.aevaluate_policy(policy_id, ctx)
                    self.apply_decision(decision, f"policy {policy_id!r}")
                    try:
                        return await cast(Callable[..., Awaitable[Any]], func)(*args, **kwargs)
                    finally:
                        if decision.get("reservation_id"):
                            await self.asettle(decision["reservation_id"], tokens or 0, 0)

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                decision = self.evaluate_policy(policy_id, ctx)
                self.apply_decision(decision, f"policy {policy_id!r}")
                try:
                    return func(*args, **kwargs)
                finally:
                    if decision.get("reservation_id"):
                        self.settle(decision["reservation_id"], tokens or 0, 0)

            return wrapper

        return decorator

    def guard_function(
        self, func: Callable[P, R], policy_id: str, context: dict[str, Any] | None = None
    ) -> Callable[P, R]:
        """`check` without the decorator syntax."""
        return self.check(policy_id, context)(func)

    def reserve(
        self,
        policy_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Reservation:
        """`with guardian.reserve("api_budget", model="tinyllama", tokens=40) as r: ...; r.report(...)`

        Checks on entry (raising PolicyViolation when refused and enforcing); settles the usage
        reported with `r.report(prompt_tokens, completion_tokens)` on exit. Also `async with`.
        """
        if policy_id is not None:
            self._known(policy_id)
        return Reservation(self, policy_id, {**(context or {}), **fields})

    # -------------------------------------------------------------------------------- reading
    def _policies(self) -> list[dict[str, Any]]:
        return list(self.call("GET", f"{API}/policies").get("policies") or [])

    def list_policies(self) -> list[str]:
        """The ids of the policies the sidecar has loaded."""
        return [str(p["id"]) for p in self._policies()]

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        """One loaded policy: id, description, enabled, rules."""
        for policy in self._policies():
            if policy.get("id") == policy_id:
                return policy
        raise PolicyConfigError(f"Unknown policy: {policy_id}")

    def get_stats(self, principal: str | None = None) -> dict[str, Any]:
        """Requests, tokens and spend today and this month (admins see everyone's)."""
        params = {"principal": principal} if principal else None
        return self.call("GET", f"{API}/stats", params=params)

    def usage(
        self, principal: str | None = None, team: str | None = None, resource: str | None = None
    ) -> dict[str, Any]:
        """Each limit's used/limit/remaining/reset and each budget in USD."""
        params = {k: v for k, v in (("principal", principal), ("team", team), ("resource", resource)) if v}
        return self.call("GET", f"{API}/usage", params=params)

    def health_check(self) -> dict[str, Any]:
        """The sidecar's readiness (OPA has its bundle, Redis answers), and OPA's own when opa_url is set."""
        out: dict[str, Any] = {"url": self.url}
        try:
            response = self.http.get("/readyz")
            body = response.json()
            out["status"] = "ok" if response.status_code == 200 else "unavailable"
            out["checks"] = body.get("checks", {}) if isinstance(body, dict) else {}
        except (httpx.HTTPError, ValueError) as exc:
            out.update(status="unreachable", error=str(exc))
        if self.opa_url:
            try:
                opa = self.http.get(f"{self.opa_url}/health")
                out["opa"] = "ok" if opa.status_code == 200 else f"status {opa.status_code}"
            except httpx.HTTPError as exc:
                out["opa"] = f"unreachable: {exc}"
        return out


class Reservation:
    """An admitted operation whose real usage is settled when the block ends."""

    def __init__(self, guardian: Guardian, policy_id: str | None, context: dict[str, Any]) -> None:
        self._g = guardian
        self._policy_id = policy_id
        self._context = context
        self.decision: dict[str, Any] = {}
        self.prompt_tokens = int(context.get("tokens") or 0)
        self.completion_tokens = 0
        self.settlement: dict[str, Any] | None = None

    @property
    def reservation_id(self) -> str | None:
        rid = self.decision.get("reservation_id")
        return str(rid) if rid else None

    def report(self, prompt_tokens: int, completion_tokens: int = 0) -> None:
        """What the operation really used (settled on exit)."""
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens

    def _body(self) -> dict[str, Any]:
        return _described(self._policy_id, self._context)

    def __enter__(self) -> Reservation:
        reply = self._g.call("POST", f"{API}/check", json=self._body())
        self.decision = _decision(reply)
        self._g.apply_decision(self.decision, f"policy {self._policy_id!r}")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.reservation_id:
            self.settlement = self._g.settle(self.reservation_id, self.prompt_tokens, self.completion_tokens)

    async def __aenter__(self) -> Reservation:
        reply = await self._g.acall("POST", f"{API}/check", json=self._body())
        self.decision = _decision(reply)
        self._g.apply_decision(self.decision, f"policy {self._policy_id!r}")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.reservation_id:
            self.settlement = await self._g.asettle(
                self.reservation_id, self.prompt_tokens, self.completion_tokens
            )


# ------------------------------------------------------------------------------------------------


def _warn(text: str) -> None:
    logger.warning(text)
    warnings.warn(text, PolicyWarning, stacklevel=4)


def _violation(decision: Mapping[str, Any]) -> PolicyViolation:
    retry = decision.get("retry_after")
    status = decision.get("status")
    return PolicyViolation(
        str(decision.get("message") or decision.get("reason") or "denied by policy"),
        policy=decision.get("policy"),
        code=decision.get("code"),
        status=status if isinstance(status, int) else None,
        retry_after=retry if isinstance(retry, int) else None,
        decision=dict(decision),
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The DESIGN.md error object of a refused response (empty when it has none)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def raise_for(response: httpx.Response) -> None:
    """Turn a sidecar refusal (the DESIGN.md error shape) into the SDK's exception."""
    if response.status_code < 400:
        return
    error = error_of(response)
    message = str(error.get("message") or f"the sidecar answered {response.status_code}")
    status = response.status_code
    if status == 401 or error.get("code") == "unknown_policy":
        raise PolicyConfigError(message)
    if status in (502, 503, 504):
        raise OPAConnectionError(message)
    if 400 <= status < 500 and status != 404:
        details = error.get("details") or {}
        retry = details.get("retry_after") if isinstance(details, dict) else None
        if retry is None and response.headers.get("Retry-After", "").isdigit():
            retry = int(response.headers["Retry-After"])
        raise PolicyViolation(
            message,
            policy=error.get("policy"),
            code=error.get("code"),
            status=status,
            retry_after=retry if isinstance(retry, int) else None,
            decision={"error": error},
        )
    raise OPAPolicyError(message)


def _answer(response: httpx.Response) -> dict[str, Any]:
    raise_for(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise OPAPolicyError(f"the sidecar's answer is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise OPAPolicyError("the sidecar's answer is not a JSON object")
    return body


def _policy_ids(policy_file: str) -> frozenset[str]:
    path = Path(policy_file)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyConfigError(f"cannot read policy file {policy_file}: {exc}") from exc
    policies = doc.get("policies") if isinstance(doc, dict) else None
    if not isinstance(policies, list):
        raise PolicyConfigError(f"{policy_file} has no `policies` list")
    return frozenset(str(p["id"]) for p in policies if isinstance(p, dict) and "id" in p)
