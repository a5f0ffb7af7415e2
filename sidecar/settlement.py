"""Settlement: after an admitted request, its reservation is replaced by the real usage, or given
back, exactly once.

* a reply with usage (whole or streamed) settles those counts;
* a reply refused by the upstream (4xx/5xx without usage) settles zero;
* a stream the sidecar cut at its reservation, that the provider broke off, or that the client
  left settles what was relayed (counted by sidecar/stream_guard.py), not the whole reservation; a
  provider that broke off having produced nothing is a failed call, refunded;
* any other reply that reported no usage settles the prompt estimate plus the output reserved;
* an upstream failure before the first byte, a cancellation or anything unforeseen refunds;
* a request cancelled while its admission is on the way to Redis gets that admission refunded once
  it lands (`admit`), so no reservation outlives a client that hung up or a shutdown.

Settling is bookkeeping the client need not wait for: it runs as a background job after the
handler returns (sidecar/background.py), and the decision log line is written once it is done.
The settlement and the usage statistics are started together, so their two script calls share the
per-tick pipeline of sidecar/script_batch.py (one Redis round trip, sent in the tick after the reply's
last byte was written).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.counters import Admission, CounterStore, Limit, Usage
from sidecar.decision_log import DecisionRecord
from sidecar.errors import CounterStoreError
from sidecar.ingress import Normalised
from sidecar.reply_usage import TokenCounts
from sidecar.reservation import cost_micros
from sidecar.services import Services
from sidecar.stats import StatsTags
from sidecar.stream_guard import StreamGuard
from sidecar.upstream import Reply

logger = logging.getLogger("hexarch.sidecar")


@dataclass(frozen=True)
class Ticket:
    """What an admitted request carries to settlement."""

    admission: Admission
    store: CounterStore
    pricing: Mapping[str, Any] | None
    reservation: int  # output tokens reserved: charged when the upstream reports no usage
    hide_usage_chunk: bool  # the sidecar asked for the stream's usage event; the client did not
    tags: StatsTags | None = None  # who and what, for the usage statistics (sidecar/stats.py)


def price(counts: TokenCounts, pricing: Mapping[str, Any] | None) -> Usage:
    """What `counts` cost at the decision's `pricing` (sidecar/reservation.py `cost_micros`)."""
    return Usage(counts.prompt_tokens, counts.completion_tokens, cost_micros(pricing, counts))


class Settlement:
    def __init__(self, services: Services) -> None:
        self._s = services
        self._log = services.settings.log_decisions

    async def admit(self, store: CounterStore, request_id: str, limits: Sequence[Limit]) -> Admission:
        call = asyncio.ensure_future(store.admit(request_id, limits))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            self._s.background.spawn(self._refund_when_admitted(call, store))
            raise

    async def _refund_when_admitted(self, call: asyncio.Future[Admission], store: CounterStore) -> None:
        try:
            admission = await call
        except CounterStoreError:
            return  # nothing was consumed
        if admission.admitted:
            await self.refund(Ticket(admission, store, None, 0, False))

    async def close(
        self,
        reply: Reply,
        norm: Normalised,
        ticket: Ticket,
        rec: DecisionRecord,
        guard: StreamGuard | None = None,
    ) -> None:
        """Settle or refund the call that produced `reply` (queued behind the response)."""
        if reply.upstream_broke:
            rec.outcome, rec.code = "upstream_error", "upstream_broke"
        produced = guard.produced if guard is not None else 0
        if reply.upstream_broke and reply.counts is None and produced == 0:
            # The provider failed mid-reply having produced nothing: a failed call, refunded.
            await self._s.background.run(self.refund(ticket))
            return
        usage = self.usage(reply, norm, ticket, rec, guard)
        rec.settling = True
        await self._s.background.run(self._settle(ticket, usage, rec))

    async def refund_now(self, ticket: Ticket) -> None:
        await self._s.background.run(self.refund(ticket))

    def refund_later(self, ticket: Ticket) -> None:
        """For a cancelled call: the app drains background jobs before it stops."""
        self._s.background.spawn(self.refund(ticket))

    def usage(
        self,
        reply: Reply,
        norm: Normalised,
        ticket: Ticket,
        rec: DecisionRecord,
        guard: StreamGuard | None = None,
    ) -> Usage:
        if reply.status >= 400 and reply.counts is None:
            counts = TokenCounts(0, 0)  # refused by the upstream: nothing was generated
        elif guard is not None and (guard.capped or not reply.complete):
            # a stream cut at its reservation, broken off, or left by the client: charge what was
            # relayed (counted by the guard), not the whole reservation (sidecar/stream_guard.py)
            seen = reply.counts
            prompt = seen.prompt_tokens if seen is not None and seen.prompt_tokens else norm.prompt_tokens
            completion = max(seen.completion_tokens if seen is not None else 0, guard.produced)
            counts = TokenCounts(prompt, completion)
        elif reply.counts is not None:
            counts = reply.counts
        elif not norm.body:
            counts = TokenCounts(0, 0)
        else:
            # No usage reported (or the client left before it): the reservation stands.
            counts = TokenCounts(norm.prompt_tokens, ticket.reservation)
        usage = price(counts, ticket.pricing)
        self.charge(usage, rec)
        return usage

    def charge(self, usage: Usage, rec: DecisionRecord | None = None) -> None:
        """Count settled usage in the token and cost metrics (and the decision record): a proxied
        reply (`usage`) and `POST /hexarch/v1/settle` both, once each."""
        if rec is not None:
            rec.prompt_tokens, rec.completion_tokens, rec.cost_usd_micros = (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cost_usd_micros,
            )
        metrics = self._s.metrics
        metrics.child(metrics.tokens, "prompt").inc(usage.prompt_tokens)
        metrics.child(metrics.tokens, "completion").inc(usage.completion_tokens)
        metrics.cost.inc(usage.cost_usd_micros)

    async def _settle(self, ticket: Ticket, usage: Usage, rec: DecisionRecord) -> None:
        try:
            hooks = self._s.settled_hooks if ticket.tags is not None else ()
            if not hooks:
                await ticket.store.settle(ticket.admission, usage)
            else:
                # Started together, so settle.lua and stats.lua leave in the same per-tick pipeline
                # (sidecar/script_batch.py): one round trip instead of two. Each is idempotent per
                # reservation; the statistics no longer wait for the counters' answer.
                assert ticket.tags is not None
                rid, tags = ticket.admission.reservation_id, ticket.tags
                done = await asyncio.gather(
                    ticket.store.settle(ticket.admission, usage),
                    *(hook(rid, tags, usage) for hook in hooks),
                    return_exceptions=True,
                )
                for outcome in done:
                    if isinstance(outcome, BaseException):
                        raise outcome
        except CounterStoreError as exc:
            self._s.metrics.redis_errors.inc()
            logger.warning("settling %s failed (its reservation expires by TTL): %s", rec.decision_id, exc)
        finally:
            rec.settling = False
            # status 0: the handler has not finished (the job ran inline) or never will (cancelled)
            if self._log and rec.status:
                self._s.decision_log.write(rec)

    async def refund(self, ticket: Ticket) -> None:
        try:
            await ticket.store.refund(ticket.admission)
        except CounterStoreError as exc:
            self._s.metrics.redis_errors.inc()
            logger.warning("refund failed (the reservation expires by TTL): %s", exc)
