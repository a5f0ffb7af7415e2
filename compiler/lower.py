"""Stage 3: validated model -> the compiled data document `data.hexarch.config`.

The output is plain JSON-able data with exactly the layout of docs/architecture.md ("Compiled
data"); the Rego library reads nothing else. Disabled policies are dropped here. Each rule goes
through its kind's entry of compiler/registry.py (its config list and its lowering).
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict, cast

from compiler.model import DEFAULT_INPUT_PRICE, DEFAULT_OUTPUT_PRICE, PolicyFile
from compiler.registry import RULE_LISTS, kind_of
from compiler.rule_lower import Entry, EntryHead, limit_id, usd_to_micros

__all__ = ["RULE_LISTS", "Config", "config_json", "limit_id", "lower", "usd_to_micros"]


class PriceEntry(TypedDict):
    model: str
    input_per_million_usd: float
    output_per_million_usd: float


class DefaultPrice(TypedDict):
    input_per_million_usd: float
    output_per_million_usd: float


class Config(TypedDict):
    """data.hexarch.config (docs/architecture.md, "Compiled data"). Later passes may add keys."""

    enforcement: str
    timezone: str
    default_max_output_tokens: int
    pricing: list[PriceEntry]
    default_pricing: DefaultPrice
    # One list per rule kind's config_list (compiler/registry.py), each entry naming its policy.
    rate_limits: list[Entry]
    token_limits: list[Entry]
    budgets: list[Entry]
    param_bounds: list[Entry]
    model_rules: list[Entry]
    time_windows: list[Entry]
    access_rules: list[Entry]
    confirmations: list[Entry]
    features: list[Entry]
    # What the decision needs pre-digested (compiler/precompute.py); not written by lower().
    index: NotRequired[dict[str, Any]]


def lower(model: PolicyFile) -> Config:
    lists: dict[str, list[Entry]] = {name: [] for name in RULE_LISTS}
    for policy in model.enabled_policies:
        for rule in policy.rules:
            kind = kind_of(rule)
            head: EntryHead = {"policy": policy.id, "rule": rule.index}
            entries = kind.lower(rule, head)
            if rule.description is not None:
                # A rule's description travels with its entries, for whoever reads the bundle's data.
                entries = [{**entry, "description": rule.description} for entry in entries]
            lists[kind.config_list].extend(entries)
    config = {
        "enforcement": model.enforcement,
        "timezone": model.timezone,
        "default_max_output_tokens": model.default_max_output_tokens,
        "pricing": [
            {
                "model": p.model,
                "input_per_million_usd": p.input_per_million_usd,
                "output_per_million_usd": p.output_per_million_usd,
            }
            for p in model.pricing
        ],
        "default_pricing": {
            "input_per_million_usd": DEFAULT_INPUT_PRICE,
            "output_per_million_usd": DEFAULT_OUTPUT_PRICE,
        },
        **lists,
    }
    return cast(Config, config)


def config_json(config: Config | dict[str, object]) -> bytes:
    """The canonical bytes of data.json: sorted keys, so equal configs give equal bundles."""
    return (json.dumps(config, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
