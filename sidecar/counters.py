"""Atomic admission, settlement and refund of rate, token and budget limits in Redis.

One admission runs one Lua script per hash-tag group (one subject) and consumes every limit of the
group or none. Groups are sent in one pipelined round trip; when one group refuses, the groups that
were admitted by the same call are refunded, so the call as a whole is all-or-nothing. The rate
algorithm (bucketed sliding window), its error bound, key layout, TTLs and failure behaviour are in
docs/counters.md.

`Counters` (Redis) and `sidecar.local_counters.LocalCounters` (in-process fail-open stand-in) share
everything but the store: planning, result decoding and the public models live here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from sidecar import redis_keys
from sidecar.errors import CounterStoreError, PolicyEngineError
from sidecar.redis_client import DEFAULT_MAX_CONNECTIONS
from sidecar.script_batch import BatchFull, Script, create_batcher

UNITS = ("requests", "tokens", "usd_micros")
ACTIONS = ("block", "warn")
PERIODS = ("day", "month")
# Each window is cut into this many buckets (or the largest smaller count that divides it in whole
# milliseconds); the bucket width is the algorithm's error bound (docs/counters.md).
BUCKETS_PER_WINDOW = 60
# Budget keys expire when their period ends. (They used to outlive it by a day "so late settlements
# find the closed period"; but settle.lua never writes to a key that is gone, `hexarch usage` reads
# the current period only, and a day of margin kept a whole extra period of keys per subject in
# Redis: with many subjects that filled maxmemory. docs/counters.md, docs/hardening.md.)
BUDGET_TTL_MARGIN_SECONDS = 0
_MAX_REQUEST_ID_CHARS = 64
# Validated limits by their decision entry's JSON text: the same few entries come back on every
# request, and validating one costs more than encoding it (cleared when full).
_LIMIT_CACHE_SIZE = 4096
_limit_cache: dict[bytes, Limit] = {}
logger = logging.getLogger(__name__)

RedisClient: TypeAlias = "Redis | RedisCluster"


@dataclass(frozen=True)
class Limit:
    """One entry of the decision's `limits` (DESIGN.md, docs/architecture.md "Limits")."""

    id: str
    policy: str
    unit: str
    scope: str
    subject: str
    limit: int
    cost: int
    action: str
    warn_at: float | None = None
    window_seconds: int | None = None
    period: str | None = None

    @property
    def is_request_cap(self) -> bool:
        """A per-request token cap: checked in process against `cost`, never stored."""
        return self.unit == "tokens" and self.window_seconds == 0

    @property
    def blocks(self) -> bool:
        return self.action == "block"

    @classmethod
    def from_decision(cls, doc: Mapping[str, Any]) -> Limit:
        """Validate one decision entry; a malformed one is the policy engine's fault."""
        if not isinstance(doc, Mapping):
            raise PolicyEngineError(f"limit entry must be an object, got {type(doc).__name__}")
        where = f"limit {doc.get('id')!r}"
        ident = _text(doc, "id", where)
        unit = _choice(doc, "unit", UNITS, where)
        action = _choice(doc, "action", ACTIONS, where)
        limit = _whole(doc, "limit", where)
        cost = _whole(doc, "cost", where)
        warn_at_raw = doc.get("warn_at")
        warn_at: float | None = None
        if warn_at_raw is not None:
            if isinstance(warn_at_raw, bool) or not isinstance(warn_at_raw, int | float):
                raise PolicyEngineError(f"{where}: warn_at must be a number or null")
            warn_at = float(warn_at_raw)
            if not 0.0 <= warn_at <= 1.0:
                raise PolicyEngineError(f"{where}: warn_at {warn_at} is outside [0, 1]")
        window_seconds: int | None = None
        period: str | None = None
        if unit == "usd_micros":
            period = _choice(doc, "period", PERIODS, where)
        else:
            window_seconds = _whole(doc, "window_seconds", where)
            if window_seconds == 0 and unit == "requests":
                raise PolicyEngineError(f"{where}: a request-rate limit needs window_seconds > 0")
        return cls(
            id=ident,
            policy=_text(doc, "policy", where),
            unit=unit,
            scope=_text(doc, "scope", where),
            subject=_text(doc, "subject", where, allow_empty=True),
            limit=limit,
            cost=cost,
            action=action,
            warn_at=warn_at,
            window_seconds=window_seconds,
            period=period,
        )


def limits_from_decision(entries: Iterable[Any]) -> list[Limit]:
    """`Limit.from_decision` of each entry, remembered by the entry's exact JSON text (so `true`
    and `1`, or `1` and `1.0`, never share a cache slot)."""
    limits: list[Limit] = []
    for entry in entries:
        try:
            text = orjson.dumps(entry)
        except TypeError:
            text = b""
        found = _limit_cache.get(text) if text else None
        if found is None:
            found = Limit.from_decision(entry)
            if text:
                if len(_limit_cache) >= _LIMIT_CACHE_SIZE:
                    _limit_cache.clear()
                _limit_cache[text] = found
        limits.append(found)
    return limits


@dataclass(frozen=True)
class LimitState:
    """A limit as seen by one admission.

    `used`/`remaining` are after this request when admitted, before it when refused. `reset_seconds`:
    until everything now counted has left the window (budgets: until the period ends; 0 when nothing
    is counted). `retry_after` is set on refusing block limits only: seconds until the refused cost
    could fit (budgets: until the period ends); None when it never can (cost above the limit).
    """

    limit: Limit
    used: int
    remaining: int
    reset_seconds: int
    retry_after: int | None
    warn: bool
    refused: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cost_usd_micros: int


@dataclass(frozen=True)
class ReservedGroup:
    """What settle/refund need to find one group's reservation (the record itself is in the store)."""

    subject: str
    reservation_key: str
    keys: tuple[str, ...]
    units: tuple[str, ...]


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reservation_id: str
    states: tuple[LimitState, ...]
    blocking: LimitState | None
    groups: tuple[ReservedGroup, ...] = field(default=(), repr=False, compare=False)

    @property
    def warnings(self) -> tuple[LimitState, ...]:
        return tuple(state for state in self.states if state.warn)


class CounterStore(Protocol):
    """What the sidecar app uses; `Counters` (Redis) and `LocalCounters` (fail-open) both provide it."""

    async def load_scripts(self) -> None: ...
    async def admit(self, request_id: str, limits: Sequence[Limit]) -> Admission: ...
    async def settle(self, admission: Admission, usage: Usage) -> None: ...
    async def refund(self, admission: Admission) -> None: ...
    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Planning: pure functions shared by the Redis and in-process stores.


@functools.lru_cache(maxsize=256)
def window_geometry(window_seconds: int) -> tuple[int, int]:
    """(bucket width ms, buckets per window) for a sliding window; the width divides the window."""
    window_ms = window_seconds * 1000
    for buckets in range(BUCKETS_PER_WINDOW, 0, -1):
        if window_ms % buckets == 0:
            return window_ms // buckets, buckets
    raise AssertionError("unreachable: 1 divides every window")


def budget_period(period: str, now: float, tz: ZoneInfo) -> tuple[str, float]:
    """(key window label, period end as epoch seconds) of the calendar day/month holding `now`."""
    local = datetime.fromtimestamp(now, tz)
    if period == "day":
        label = local.strftime("%Y-%m-%d")
        nxt = local.date() + timedelta(days=1)
    else:
        label = local.strftime("%Y-%m")
        nxt = date(local.year + 1, 1, 1) if local.month == 12 else date(local.year, local.month + 1, 1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
    return label, end


@functools.lru_cache(maxsize=1024)
def _budget_period_of_minute(period: str, minute: int, tz: ZoneInfo) -> tuple[str, float]:
    # Period boundaries fall on whole minutes in every current time zone, so one answer per minute.
    return budget_period(period, minute * 60, tz)


def period_label(period: str, now: float, tz: ZoneInfo) -> str:
    """The key window label of the day/month holding `now` (`budget_period`, cached per minute)."""
    return _budget_period_of_minute(period, int(now // 60), tz)[0]


@functools.lru_cache(maxsize=4096)
def _counter_key(subject: str, limit_id: str, window: str) -> str:
    return redis_keys.counter_key(subject, limit_id, window)


@dataclass(frozen=True)
class _Planned:
    """One stored limit inside a group: its key and the script arguments that describe it."""

    index: int
    limit: Limit
    key: str
    kind: str  # "w" sliding window, "c" calendar budget
    p1: int  # w: bucket width ms; c: key TTL ms
    p2: int  # w: buckets per window; c: 0
    period_end: float  # c only


@dataclass(frozen=True)
class GroupPlan:
    subject: str
    reservation_key: str
    items: tuple[_Planned, ...]

    def script_args(self, mode: str, now_ms: int, reservation_ttl_ms: int) -> tuple[list[str], list[Any]]:
        keys = [self.reservation_key, *(item.key for item in self.items)]
        args: list[Any] = [mode, now_ms, reservation_ttl_ms]
        for item in self.items:
            lim = item.limit
            args.append(f"{item.kind}:{lim.limit}:{lim.cost}:{1 if lim.blocks else 0}:{item.p1}:{item.p2}")
        return keys, args

    def reserved(self) -> ReservedGroup:
        return ReservedGroup(
            subject=self.subject,
            reservation_key=self.reservation_key,
            keys=tuple(item.key for item in self.items),
            units=tuple(item.limit.unit for item in self.items),
        )


def _plan(
    reservation_id: str, limits: Sequence[Limit], now: float, tz: ZoneInfo
) -> tuple[dict[int, LimitState], list[GroupPlan]]:
    """Per-request caps evaluated in process; every stored limit grouped by subject (hash tag)."""
    caps: dict[int, LimitState] = {}
    grouped: dict[str, list[_Planned]] = {}
    seen: set[str] = set()
    for index, lim in enumerate(limits):
        if lim.is_request_cap:
            over = lim.cost > lim.limit
            caps[index] = _state(lim, lim.cost, 0, None if over and lim.blocks else -1, over and lim.blocks)
            continue
        if lim.unit == "usd_micros":
            if lim.period not in PERIODS:
                raise PolicyEngineError(f"limit {lim.id!r}: a budget needs period day or month")
            label, end = _budget_period_of_minute(lim.period, int(now // 60), tz)
            ttl_ms = max(1000, int((end - now + BUDGET_TTL_MARGIN_SECONDS) * 1000))
            key = _counter_key(lim.subject, lim.id, label)
            item = _Planned(index, lim, key, "c", ttl_ms, 0, end)
        else:
            window = lim.window_seconds or 0
            if window <= 0:
                raise PolicyEngineError(f"limit {lim.id!r}: a rate needs window_seconds > 0")
            bucket_ms, buckets = window_geometry(window)
            key = _counter_key(lim.subject, lim.id, redis_keys.window_label(window))
            item = _Planned(index, lim, key, "w", bucket_ms, buckets, 0.0)
        if key in seen:
            raise PolicyEngineError(f"limit {lim.id!r} appears twice for subject {lim.subject!r}")
        seen.add(key)
        grouped.setdefault(lim.subject, []).append(item)
    groups = [
        GroupPlan(subject, redis_keys.reservation_key(subject, reservation_id), tuple(items))
        for subject, items in grouped.items()
    ]
    return caps, groups


def _ceil_seconds(ms: float) -> int:
    return max(0, math.ceil(ms / 1000))


def _warns(lim: Limit, used: int) -> bool:
    if lim.action == "warn" and used > lim.limit:
        return True
    if lim.warn_at is None or used <= 0:
        return False
    # integer parts-per-million keep 0.7 * 10 from becoming 7.000000000000001
    return used * 1_000_000 >= round(lim.warn_at * 1_000_000) * lim.limit


def _state(lim: Limit, used: int, reset_ms: float, retry_ms: float | None, refused: bool) -> LimitState:
    """`retry_ms` -1 means "not refused here"; None means "can never fit"."""
    retry_after: int | None = None
    if refused and retry_ms is not None and retry_ms >= 0:
        retry_after = max(1, _ceil_seconds(retry_ms))
    return LimitState(
        limit=lim,
        used=used,
        remaining=max(0, lim.limit - used),
        reset_seconds=_ceil_seconds(reset_ms),
        retry_after=retry_after,
        warn=_warns(lim, used),
        refused=refused,
    )


def _group_states(group: GroupPlan, raw: Sequence[int], now: float, admitted: bool) -> dict[int, LimitState]:
    """Decode one admit.lua reply. `admitted`: the whole call consumed (report usage after it)."""
    status = int(raw[0])
    states: dict[int, LimitState] = {}
    for pos, item in enumerate(group.items):
        lim = item.limit
        used = int(raw[1 + pos * 3])
        reset_ms = float(raw[2 + pos * 3])
        retry_ms = float(raw[3 + pos * 3])
        if admitted and status == 1:
            used += lim.cost
        refused = not admitted and lim.blocks and used + lim.cost > lim.limit
        if item.kind == "c":
            reset_ms = (item.period_end - now) * 1000
            retry_ms = reset_ms
        never = refused and lim.cost > lim.limit
        states[item.index] = _state(lim, used, reset_ms, None if never else retry_ms, refused)
    return states


def _blocking(states: Sequence[LimitState]) -> LimitState | None:
    """The refusing limit that keeps the request out longest (None = never counts as longest)."""
    refusing = [s for s in states if s.refused]
    if not refusing:
        return None
    return max(refusing, key=lambda s: math.inf if s.retry_after is None else s.retry_after)


def new_reservation_id(request_id: str) -> str:
    # request ids come from clients; a random suffix keeps two requests with one id apart
    return f"{request_id[:_MAX_REQUEST_ID_CHARS]}.{secrets.token_hex(6)}"


def settle_amounts(group: ReservedGroup, usage: Usage | None) -> list[int]:
    """Per key: actual usage to replace the reservation with; -1 keeps it (requests stay consumed)."""
    amounts: list[int] = []
    for unit in group.units:
        if usage is None:
            amounts.append(0)
        elif unit == "tokens":
            amounts.append(max(0, usage.prompt_tokens) + max(0, usage.completion_tokens))
        elif unit == "usd_micros":
            amounts.append(max(0, usage.cost_usd_micros))
        else:
            amounts.append(-1)
    return amounts


class _Engine:
    """The admission protocol over an abstract store of atomic group scripts."""

    def __init__(self, *, timezone: str, clock: Callable[[], float], reservation_ttl_seconds: int) -> None:
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {timezone!r}") from exc
        self._clock = clock
        self._reservation_ttl_ms = reservation_ttl_seconds * 1000
        self._background: set[asyncio.Future[None]] = set()

    async def _run_admit(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[AdmitReply]:
        """One reply per call; a call that failed comes back as its error, so what the other calls
        consumed can be given back."""
        raise NotImplementedError

    async def _run_settle(self, calls: Sequence[tuple[list[str], list[Any]]]) -> None:
        raise NotImplementedError

    async def admit(self, request_id: str, limits: Sequence[Limit]) -> Admission:
        now = self._clock()
        now_ms = int(now * 1000)
        reservation_id = new_reservation_id(request_id)
        caps, groups = _plan(reservation_id, limits, now, self._tz)
        cap_refused = any(state.refused for state in caps.values())
        calls = [g.script_args("p" if cap_refused else "a", now_ms, self._reservation_ttl_ms) for g in groups]
        if cap_refused:
            # the refusal stands without the store; the peek only fills in the other states
            try:
                replies = _all_answered(await self._run_admit(calls))
            except CounterStoreError:
                replies = [[0, *([0, 0, -1] * len(g.items))] for g in groups]
        else:
            answered = await self._admit_or_release(groups, calls)
            try:
                replies = _all_answered(answered)
            except CounterStoreError:
                # What the answered calls consumed is given back; a failed call may or may not have
                # run, and stays counted if it did (never under-counted; docs/counters.md).
                await self._roll_back(groups, answered)
                raise
        admitted = not cap_refused and all(int(reply[0]) != 0 for reply in replies)
        if not admitted and not cap_refused:
            await self._roll_back(groups, replies)
        states: dict[int, LimitState] = dict(caps)
        for group, reply in zip(groups, replies, strict=True):
            states.update(_group_states(group, reply, now, admitted))
        ordered = tuple(states[i] for i in range(len(limits)))
        return Admission(
            admitted=admitted,
            reservation_id=reservation_id,
            states=ordered,
            blocking=None if admitted else _blocking(ordered),
            groups=tuple(g.reserved() for g in groups) if admitted else (),
        )

    async def _roll_back(self, groups: Sequence[GroupPlan], replies: Sequence[AdmitReply]) -> None:
        """Refund the groups an unsuccessful admission did take.

        Status 2 (a replay: redis-py resent the call after a dropped connection, and its first run
        had consumed) is taken as much as status 1. Shielded: a cancelled caller must not leave the
        rollback half done. If Redis fails meanwhile, the groups stay counted until their window
        passes or their period ends.
        """
        taken = [g.reserved() for g, reply in zip(groups, replies, strict=True) if _took(reply)]
        if not taken:
            return
        try:
            await asyncio.shield(self._settle_groups(taken, None))
        except CounterStoreError as exc:
            logger.warning("rolling back a refused admission failed (it stays counted): %s", exc)

    async def _admit_or_release(
        self, groups: Sequence[GroupPlan], calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[AdmitReply]:
        """Run the admit calls; if the caller is cancelled meanwhile (client gone, shutdown), let them
        finish and refund whatever they consumed, since nobody will ever settle it."""
        task = asyncio.ensure_future(self._run_admit(calls))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(self._release_orphan, groups))
            raise

    def _release_orphan(self, groups: Sequence[GroupPlan], task: asyncio.Future[list[AdmitReply]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        taken = [g.reserved() for g, reply in zip(groups, task.result(), strict=True) if _took(reply)]
        if taken:
            refund = asyncio.ensure_future(self._settle_groups(taken, None))
            self._background.add(refund)
            refund.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the reservation then stays counted until its window or period ends (docs/counters.md)
            logger.warning("refunding a cancelled admission failed: %s", task.exception())

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        """The states `admit` would report for a refusal, consuming nothing (operator tooling)."""
        now = self._clock()
        caps, groups = _plan(new_reservation_id("peek"), limits, now, self._tz)
        replies = _all_answered(
            await self._run_admit([g.script_args("p", int(now * 1000), 0) for g in groups])
        )
        states: dict[int, LimitState] = dict(caps)
        for group, reply in zip(groups, replies, strict=True):
            states.update(_group_states(group, reply, now, admitted=False))
        return tuple(states[i] for i in range(len(limits)))

    async def settle(self, admission: Admission, usage: Usage) -> None:
        if admission.admitted and admission.groups:
            await self._settle_groups(admission.groups, usage)

    async def refund(self, admission: Admission) -> None:
        if admission.admitted and admission.groups:
            await self._settle_groups(admission.groups, None)

    async def _settle_groups(self, groups: Sequence[ReservedGroup], usage: Usage | None) -> None:
        calls = [([g.reservation_key, *g.keys], list(settle_amounts(g, usage))) for g in groups]
        await self._run_settle(calls)


AdmitReply = list[int] | CounterStoreError  # admit.lua's numbers, or why the call failed


def _took(reply: AdmitReply) -> bool:
    """The call consumed under this reservation: admitted now (1) or by an earlier run (2)."""
    return not isinstance(reply, CounterStoreError) and reply[0] != 0


def _text_of(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _all_answered(replies: Sequence[AdmitReply]) -> list[list[int]]:
    """The replies when every call answered; else the first failure, raised."""
    answered: list[list[int]] = []
    for reply in replies:
        if isinstance(reply, CounterStoreError):
            raise reply
        answered.append(reply)
    return answered


# What a call through redis-py raises when Redis fails (the counters' and the statistics' own).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def _converted(replies: Sequence[Any]) -> list[Any]:
    """Script replies with each Redis failure as the CounterStoreError it stands for (a call whose
    reply is lost may still have run: only the caller knows what to undo); anything else raised."""
    out: list[Any] = []
    for reply in replies:
        if isinstance(reply, REDIS_FAILURES):
            error = CounterStoreError(f"Redis counter script failed: {reply}")
            error.__cause__ = reply
            reply = error
        elif isinstance(reply, BaseException):
            raise reply
        out.append(reply)
    return out


# Unbatched calls (Redis Cluster, or batch=False; a standalone client batches per tick instead, with
# its own bounds in sidecar/script_batch.py):
# script calls on the wire at once, and how many may wait for a turn (the admission queue). Half the
# client's pool (sidecar/redis_client.py) for admissions, half for settlements, so a settlement (which
# frees budget for the next admission) never queues behind a burst of admissions and no call ever
# waits in redis-py's pool,
# whose wait is capped (`pool_timeout`, 1 s) and under a burst answered `counter_store_unavailable`
# (27 of 400 simultaneous requests with the Wasm engine, which has no decision queue in front of
# Redis). Waiting here has no deadline; beyond `SCRIPT_QUEUE_LIMIT` waiting calls a call fails at once.
SCRIPTS_IN_FLIGHT = DEFAULT_MAX_CONNECTIONS // 2  # per script
SCRIPT_QUEUE_LIMIT = 4096


class Counters(_Engine):
    """Counters in Redis (standalone or Cluster), one EVALSHA per hash-tag group."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        timezone: str = "UTC",
        clock: Callable[[], float] = time.time,
        reservation_ttl_seconds: int = 900,
        batch: bool = True,
    ) -> None:
        super().__init__(timezone=timezone, clock=clock, reservation_ttl_seconds=reservation_ttl_seconds)
        self._redis = redis
        # Every script call goes through it: the calls of one event-loop tick (admissions and
        # settlements of all requests) share one pipeline (sidecar/script_batch.py). None on a
        # cluster, or with batch=False: one EVALSHA per call, as `_evalsha` sends it.
        self.batcher = create_batcher(redis) if batch else None
        self._admit = Script.load("admit")
        self._settle = Script.load("settle")
        # Only a cluster client needs the one-time initialisation of `_ready`.
        self._initialised = not isinstance(redis, RedisCluster)
        self._init_lock = asyncio.Lock()
        self._pending = 0  # script calls on the wire or waiting for a slot
        self._slots = {s.sha: asyncio.Semaphore(SCRIPTS_IN_FLIGHT) for s in (self._admit, self._settle)}

    async def load_scripts(self) -> None:
        """SCRIPT LOAD both scripts (on every primary of a cluster); EVALSHA reloads on NOSCRIPT too."""
        try:
            await self._ready()
            for script in (self._admit, self._settle):
                sha = script.sha
                loaded = await self._redis.script_load(script.source)
                if isinstance(loaded, bytes):
                    loaded = loaded.decode()
                if isinstance(loaded, str) and loaded != sha:
                    raise CounterStoreError(f"Redis returned SHA {loaded} for a script hashed {sha}")
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"loading counter scripts into Redis failed: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except REDIS_FAILURES:
            return False

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.drain()
        await self._redis.aclose()

    async def _run_admit(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[AdmitReply]:
        if self.batcher is None:
            replies = await self._evalsha(self._admit.sha, calls)
        else:
            replies = await self._batched(self._admit, calls)
        # admit.lua answers one comma-separated string: far cheaper to parse than a nested reply
        return [
            r if isinstance(r, CounterStoreError) else [int(x) for x in _text_of(r).split(",")]
            for r in replies
        ]

    async def _run_settle(self, calls: Sequence[tuple[list[str], list[Any]]]) -> None:
        if self.batcher is None:
            replies = await self._evalsha(self._settle.sha, calls)
        else:
            replies = await self._batched(self._settle, calls)
        for reply in replies:
            if isinstance(reply, CounterStoreError):
                raise reply

    async def _batched(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """`_evalsha` through the per-tick batcher: each call's reply, or the CounterStoreError it
        failed with (a whole pipeline lost fails each of its calls)."""
        assert self.batcher is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            for keys, args in calls:
                futures.append(self.batcher.submit(script, keys, args))
        except BatchFull as exc:
            for future in futures:
                future.cancel()  # queued already: the batch skips a cancelled call's reply
            raise CounterStoreError(f"counter queue full: {exc}") from exc
        return _converted(await asyncio.gather(*futures, return_exceptions=True))

    async def _evalsha(self, sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Each call's reply, or the CounterStoreError it failed with (a call whose reply is lost may
        still have run: only the caller knows what to undo)."""
        if not calls:
            return []
        if self._pending >= SCRIPTS_IN_FLIGHT + SCRIPT_QUEUE_LIMIT:
            raise CounterStoreError(f"counter queue full ({SCRIPT_QUEUE_LIMIT} calls waiting for Redis)")
        self._pending += 1
        try:
            async with self._slots[sha]:
                return await self._evalsha_now(sha, calls)
        finally:
            self._pending -= 1

    async def _evalsha_now(self, sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        try:
            replies = await self._send(sha, calls)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # SCRIPT FLUSH or a restarted Redis: the script did not run, so running it again is safe
                await self.load_scripts()
                retried = await self._send(sha, [calls[i] for i in missing])
                for i, reply in zip(missing, retried, strict=True):
                    replies[i] = reply
        except REDIS_FAILURES as exc:
            raise CounterStoreError(f"Redis counter script failed: {exc}") from exc
        return _converted(replies)

    async def _ready(self) -> None:
        """Initialise a cluster client once, before its first burst (see `_send`)."""
        if not self._initialised:
            async with self._init_lock:
                if not self._initialised:
                    assert isinstance(self._redis, RedisCluster)
                    await self._redis.initialize()
                    self._initialised = True

    async def _send(self, sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """One round trip for all groups: a pipeline, or concurrent calls on a cluster (which refuses
        EVALSHA in pipelines). Errors come back as values so NOSCRIPT can be retried per call.

        A cold cluster client hit by concurrent first calls lets some go to the wrong node (MOVED)
        and, re-reading the slots, drops connections other calls are using (seen with redis-py
        8.1 on a three-primary cluster); so it is initialised once, alone, first."""
        await self._ready()
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self._redis.evalsha(sha, len(keys), *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        if isinstance(self._redis, RedisCluster):
            replies = await asyncio.gather(
                *(self._redis.evalsha(sha, len(keys), *keys, *args) for keys, args in calls),
                return_exceptions=True,
            )
            return list(replies)
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


# ---------------------------------------------------------------------------------------------
# Decision-entry validation helpers


def _text(doc: Mapping[str, Any], name: str, where: str, *, allow_empty: bool = False) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise PolicyEngineError(f"{where}: {name} must be a non-empty string")
    return value


def _choice(doc: Mapping[str, Any], name: str, options: Sequence[str], where: str) -> str:
    value = doc.get(name)
    if value not in options:
        raise PolicyEngineError(f"{where}: {name} must be one of {', '.join(options)}, got {value!r}")
    return str(value)


def _whole(doc: Mapping[str, Any], name: str, where: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyEngineError(f"{where}: {name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise PolicyEngineError(f"{where}: {name} must be a whole number, got {value!r}")
    if value < 0:
        raise PolicyEngineError(f"{where}: {name} must not be negative, got {value!r}")
    return int(value)
