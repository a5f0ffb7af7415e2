"""What an admitted request may spend: the output tokens its reservations cover, and its USD cost.

Admission reserves each limit's `cost` as OPA computed it: for windowed token limits the prompt
estimate plus an output reservation, for budgets the price of both. A reply longer than that
reservation would settle past what was admitted, and 200 such replies at once could spend past a
budget. So when a request names no maximum of its own, the sidecar writes the largest output the
blocking reservations still cover into the forwarded body (`output_allowance`), and an upstream
that honours it cannot overspend (docs/counters.md says what remains: a prompt longer than its
estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sidecar.counters import Limit
from sidecar.reply_usage import TokenCounts


def _prices(pricing: Mapping[str, Any] | None) -> tuple[Decimal, Decimal]:
    """(input, output) price in micro-USD per token: USD per million tokens, read exactly."""
    if not pricing:
        return Decimal(0), Decimal(0)
    price_in = Decimal(str(pricing.get("input_per_million_usd", 0) or 0))
    price_out = Decimal(str(pricing.get("output_per_million_usd", 0) or 0))
    return price_in, price_out


def cost_micros(pricing: Mapping[str, Any] | None, counts: TokenCounts) -> int:
    """What `counts` cost at `pricing`, in whole micro-USD rounded up (as OPA rounds a reservation)."""
    price_in, price_out = _prices(pricing)
    return max(0, math.ceil(price_in * counts.prompt_tokens + price_out * counts.completion_tokens))


def output_allowance(
    limits: Sequence[Limit], pricing: Mapping[str, Any] | None, prompt_tokens: int
) -> int | None:
    """The most output tokens every blocking reservation covers, or None when none bounds it.

    A per-request token cap allows its limit; a windowed token limit its cost less the prompt
    estimate; a budget whatever its reserved micro-USD still buy at the output price once the
    prompt is paid. Limits that only warn bound nothing: nothing is enforced for them.
    """
    bounds: list[int] = []
    price_in, price_out = _prices(pricing)
    for lim in limits:
        if not lim.blocks:
            continue
        if lim.is_request_cap:
            bounds.append(lim.limit)
        elif lim.unit == "tokens":
            bounds.append(lim.cost - prompt_tokens)
        elif lim.unit == "usd_micros" and price_out > 0:
            bounds.append(math.floor((lim.cost - price_in * prompt_tokens) / price_out))
    return max(0, min(bounds)) if bounds else None


def reserved_output(
    named_max: int | None, limits: Sequence[Limit], pricing: Mapping[str, Any] | None, prompt_tokens: int
) -> int:
    """Output tokens the admission counted on: what settles when the upstream reports no usage."""
    if named_max is not None:
        return named_max
    allowance = output_allowance(limits, pricing, prompt_tokens)
    if allowance is not None:
        return allowance
    caps = [lim.limit for lim in limits if lim.is_request_cap]
    if caps:
        return min(caps)
    windowed = [lim.cost - prompt_tokens for lim in limits if lim.unit == "tokens"]
    return max(0, max(windowed)) if windowed else 0
