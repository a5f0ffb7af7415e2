"""In-process counters: the `fail_open` stand-in while Redis is unreachable.

Same interface and the same semantics as `sidecar.counters.Counters` (the scripts in sidecar/lua/
are mirrored here step by step), but the state lives in this process only: with N sidecar replicas
each one enforces the full limit, so up to N times the limit can pass while Redis is down. Memory is
bounded by key TTLs (swept as the clock moves) and by `max_keys` (oldest-expiring keys go first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.counters import AdmitReply, _Engine


@dataclass
class _Window:
    hi: int
    total: int
    buckets: dict[int, int] = field(default_factory=dict)


@dataclass
class _Record:
    entries: dict[str, tuple[str, int, int, int]]  # key -> (kind, reserved, bucket, n)


class LocalCounters(_Engine):
    def __init__(
        self,
        *,
        timezone: str = "UTC",
        clock: Callable[[], float] = time.time,
        reservation_ttl_seconds: int = 900,
        max_keys: int = 100_000,
    ) -> None:
        super().__init__(timezone=timezone, clock=clock, reservation_ttl_seconds=reservation_ttl_seconds)
        self._max_keys = max_keys
        self._values: dict[str, _Window | int | _Record] = {}
        self._expires: dict[str, int] = {}
        self._next_sweep = 0

    async def load_scripts(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._values.clear()
        self._expires.clear()

    # -- store primitives (TTL on the injected clock, like Redis PEXPIRE on its own)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _get(self, key: str) -> Any:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self._now_ms():
            self._delete(key)
        return self._values.get(key)

    def _put(self, key: str, value: _Window | int | _Record, ttl_ms: int) -> None:
        self._values[key] = value
        self._expires[key] = self._now_ms() + ttl_ms

    def _delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._expires.pop(key, None)

    def _sweep(self, now_ms: int) -> None:
        if now_ms < self._next_sweep and len(self._values) <= self._max_keys:
            return
        self._next_sweep = now_ms + 1000
        for key in [k for k, deadline in self._expires.items() if deadline <= now_ms]:
            self._delete(key)
        if len(self._values) > self._max_keys:
            excess = len(self._values) - self._max_keys
            for key in sorted(self._expires, key=self._expires.__getitem__)[:excess]:
                self._delete(key)

    # -- admit.lua and settle.lua, in Python

    async def _run_admit(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[AdmitReply]:
        self._sweep(self._now_ms())
        return [self._admit(keys, args) for keys, args in calls]

    async def _run_settle(self, calls: Sequence[tuple[list[str], list[Any]]]) -> None:
        for keys, args in calls:
            self._settle(keys, args)

    def _window(self, key: str, now: int, b: int, n: int, write: bool) -> tuple[int, int, _Window | None]:
        state = self._get(key)
        cur = now // b
        if not isinstance(state, _Window):
            return cur, 0, None
        cur = max(cur, state.hi)
        total = state.total
        if cur > state.hi:
            if cur - state.hi > n:
                if write:
                    self._delete(key)
                return cur, 0, None
            stale = [j for j in state.buckets if j < cur - n]
            total -= sum(state.buckets[j] for j in stale)
            if write:
                for j in stale:
                    del state.buckets[j]
                state.hi, state.total = cur, total
        return cur, total, state

    def _admit(self, keys: list[str], args: list[Any]) -> list[int]:
        mode, now, rsv_ttl = args[0], int(args[1]), int(args[2])
        write = mode == "a"
        status = 1
        if write and self._get(keys[0]) is not None:
            write, status = False, 2
        out = [status]
        curs: dict[int, int] = {}
        views: dict[int, _Window | None] = {}
        refused = False
        items = len(keys) - 1
        spec = [str(args[3 + i]).split(":") for i in range(items)]
        for i in range(items):
            key = keys[i + 1]
            kind, limit, cost = spec[i][0], int(spec[i][1]), int(spec[i][2])
            block = spec[i][3] == "1" and status == 1
            used, retry_ms = 0, -1
            if kind == "w":
                b, n = int(spec[i][4]), int(spec[i][5])
                cur, used, view = self._window(key, now, b, n, write)
                curs[i], views[i] = cur, view
                if block and used + cost > limit:
                    refused = True
                    if cost <= limit and view is not None:
                        need, freed = used + cost - limit, 0
                        for j in range(cur - n, cur + 1):
                            freed += view.buckets.get(j, 0)
                            if freed >= need:
                                retry_ms = (j + n + 1) * b - now
                                break
            else:
                value = self._get(key)
                used = value if isinstance(value, int) else 0
                if block and used + cost > limit:
                    refused = True
            out += [used, 0, retry_ms]
        if refused or not write:
            for i in range(items):
                view = views.get(i)
                if spec[i][0] == "w" and out[1 + i * 3] > 0 and view is not None:
                    b, n = int(spec[i][4]), int(spec[i][5])
                    newest = max(
                        (j for j, v in view.buckets.items() if v > 0 and j >= curs[i] - n), default=None
                    )
                    if newest is not None:
                        out[2 + i * 3] = (newest + n + 1) * b - now
        if refused:
            out[0] = 0
            return out
        if not write:
            return out
        record = _Record({})
        for i in range(items):
            key = keys[i + 1]
            kind, cost = spec[i][0], int(spec[i][2])
            if kind == "w":
                b, n = int(spec[i][4]), int(spec[i][5])
                cur = curs[i]
                window = views.get(i) or _Window(hi=cur, total=0)
                window.buckets[cur] = window.buckets.get(cur, 0) + cost
                window.hi, window.total = cur, out[1 + i * 3] + cost
                self._put(key, window, (cur + n + 1) * b - now + 1000)
                out[2 + i * 3] = (cur + n + 1) * b - now
                record.entries[key] = ("w", cost, cur, n)
            else:
                value = self._get(key)
                self._put(key, (value if isinstance(value, int) else 0) + cost, int(spec[i][4]))
                record.entries[key] = ("c", cost, 0, 0)
        if record.entries:
            self._put(keys[0], record, rsv_ttl)
        return out

    def _settle(self, keys: list[str], args: list[Any]) -> None:
        record = self._get(keys[0])
        if not isinstance(record, _Record):
            return
        for key, actual_raw in zip(keys[1:], args, strict=True):
            actual = int(actual_raw)
            entry = record.entries.get(key)
            current = self._get(key)
            if entry is None or actual < 0 or current is None:
                continue
            kind, reserved, bucket, n = entry
            delta = actual - reserved
            if delta == 0:
                continue
            if kind == "w" and isinstance(current, _Window):
                if bucket >= current.hi - n:
                    value = current.buckets.get(bucket, 0) + delta
                    if value < 0:
                        delta -= value
                        value = 0
                    current.buckets[bucket] = value
                    current.total = max(0, current.total + delta)
            elif kind == "c" and isinstance(current, int):
                self._values[key] = max(0, current + delta)
        self._delete(keys[0])
