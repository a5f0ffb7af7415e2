"""Usage statistics: requests, tokens and spend today and this month, by model, principal, team and
policy, exact across any number of sidecar processes.

Every settled request (through the proxy or through `POST /hexarch/v1/settle`) runs `lua/stats.lua`
once: it adds the request to a day hash and a month hash (integers; money in micro-USD) and sets a
per-reservation marker, so a settlement that is retried or raced is counted once. Fields are
``<measure>|<dimension>|<value>``: measure ``requests``, ``prompt_tokens``, ``completion_tokens`` or
``cost_usd_micros``; dimension ``all`` (value ``*``), ``model``, ``principal``, ``team`` or ``policy``.
A request counts once under each policy that put a limit on it. Periods follow the sidecar's
timezone; a day hash lives 3 days, a month hash 62 days (docs/api.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from redis.exceptions import NoScriptError

from sidecar import redis_keys
from sidecar.counters import REDIS_FAILURES, RedisClient, Usage, period_label
from sidecar.errors import CounterStoreError
from sidecar.script_batch import BatchFull, Script, ScriptBatcher

DIMENSIONS = ("model", "principal", "team", "policy")
MEASURES = ("requests", "prompt_tokens", "completion_tokens", "cost_usd_micros")
DAY_TTL_SECONDS = 3 * 86_400
MONTH_TTL_SECONDS = 62 * 86_400
# A reservation's "counted" marker outlives any settle deadline (tickets live at most 900 s).
MARKER_TTL_SECONDS = 86_400
_STATS = Script.load("stats")


@dataclass(frozen=True)
class StatsTags:
    """Who and what one request was, for the statistics."""

    principal: str | None
    team: str | None
    model: str | None
    policies: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "team": self.team,
            "model": self.model,
            "policies": self.policies,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> StatsTags:
        return cls(doc.get("principal"), doc.get("team"), doc.get("model"), tuple(doc.get("policies") or ()))


def _increments(tags: StatsTags, usage: Usage) -> list[Any]:
    """stats.lua's ARGV[6..]: the four increments (MEASURES order), then each subject counted as
    ``<dimension>|<value>``; the script builds the ``<measure>|<dimension>|<value>`` fields."""
    args: list[Any] = [
        1,
        max(0, usage.prompt_tokens),
        max(0, usage.completion_tokens),
        max(0, usage.cost_usd_micros),
        "all|*",
    ]
    for dim, value in (("model", tags.model), ("principal", tags.principal), ("team", tags.team)):
        if value:
            args.append(f"{dim}|{value}")
    args += [f"policy|{p}" for p in sorted(set(tags.policies))]
    return args


def _empty() -> dict[str, Any]:
    return {m: 0 for m in MEASURES}


def summarise(raw: Mapping[str, int], label: str, principal: str | None = None) -> dict[str, Any]:
    """A period's hash as the API reports it; `principal` limits it to that principal's own figures."""
    totals = _empty()
    by: dict[str, dict[str, dict[str, Any]]] = {dim: {} for dim in DIMENSIONS}
    for field_name, n in raw.items():
        measure, _, rest = field_name.partition("|")
        dim, _, value = rest.partition("|")
        if measure not in MEASURES:
            continue
        if dim == "all":
            totals[measure] = n
        elif dim in by:
            by[dim].setdefault(value, _empty())[measure] = n
    if principal is not None:
        totals = by["principal"].get(principal, _empty())
        by = {"principal": {principal: totals}} if principal in by["principal"] else {"principal": {}}
    out: dict[str, Any] = {"period": label, **_decorate(totals)}
    for dim, rows in by.items():
        out[f"by_{dim}"] = {value: _decorate(row) for value, row in sorted(rows.items())}
    return out


def _decorate(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    out["cost_usd"] = row["cost_usd_micros"] / 1_000_000
    return out


class StatsStore:
    def __init__(
        self,
        redis: RedisClient,
        timezone: str,
        clock: Callable[[], float] = time.time,
        batcher: ScriptBatcher | None = None,
    ) -> None:
        self._redis = redis
        # `record` goes in the same per-tick pipeline as the settlement (sidecar/script_batch.py)
        self._batcher = batcher
        self._tz = ZoneInfo(timezone)
        self._clock = clock

    def _labels(self) -> tuple[str, str]:
        now = self._clock()
        # cached per minute: two datetime conversions per settled request were 2% of the sidecar's CPU
        return period_label("day", now, self._tz), period_label("month", now, self._tz)

    async def record(
        self,
        reservation_id: str,
        tags: StatsTags,
        usage: Usage,
        *,
        drop_ticket: bool = False,
        expired: bool = False,
    ) -> bool:
        """Count one settled request; False when this reservation was counted before."""
        day, month = self._labels()
        keys = [
            redis_keys.stats_key("day", day),
            redis_keys.stats_key("month", month),
            redis_keys.stats_marker_key(reservation_id),
        ]
        if drop_ticket:
            keys += [redis_keys.api_ticket_key(reservation_id), redis_keys.api_ticket_index()]
        args = [
            DAY_TTL_SECONDS,
            MONTH_TTL_SECONDS,
            MARKER_TTL_SECONDS,
            reservation_id,
            "expired" if expired else "settled",
            *_increments(tags, usage),
        ]
        try:
            if self._batcher is not None:
                done = await self._batcher.submit(_STATS, keys, args)
                if isinstance(done, Exception):  # Redis's error for this call alone
                    raise done
            else:
                try:
                    done = await self._redis.evalsha(_STATS.sha, len(keys), *keys, *args)
                except NoScriptError:
                    done = await self._redis.eval(_STATS.source, len(keys), *keys, *args)
        except (*REDIS_FAILURES, BatchFull) as exc:
            raise CounterStoreError(f"recording usage statistics failed: {exc}") from exc
        return bool(int(done))

    async def counted(self, reservation_id: str) -> str | None:
        """How a reservation was counted: "settled", "expired" (released by the sweeper) or None."""
        try:
            value = await self._redis.get(redis_keys.stats_marker_key(reservation_id))
            return value.decode() if isinstance(value, bytes) else value
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"reading usage statistics failed: {exc}") from exc

    async def read(self, principal: str | None = None) -> dict[str, Any]:
        """Today's and this month's figures (all of them, or one principal's)."""
        day, month = self._labels()
        out: dict[str, Any] = {}
        try:
            for name, period, label in (("today", "day", day), ("month", "month", month)):
                raw = await self._redis.hgetall(redis_keys.stats_key(period, label))
                out[name] = summarise(_decode(raw.items()), label, principal)
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"reading usage statistics failed: {exc}") from exc
        return out


def _decode(items: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): int(v) for k, v in items}
