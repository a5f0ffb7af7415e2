"""Stage 3b: the compiled data -> the same data plus `index`, what a decision needs pre-digested.

OPA evaluates `data.hexarch.decision` on every request, and re-derives on each one whatever the
Rego library computes from the compiled lists: which limits apply to a resource, their fixed
fields, their order. None of that depends on the request, so it is computed here once, and the
library's fast paths (rego/hexarch/decision.rego's one-body branch, limits.rego) only pick the
templates for the request's resource, fill in what depends on the request, and look the model up
(docs/performance.md, "The decision in OPA").

`index` (data.hexarch.config.index):

- `enforcement`: the enforcement mode as compiled.rego normalises it.
- `by_resource`: resource name -> entry, one key per resource the lists name, "*" included.
  An entry's `limits` are the templates of the limits whose resource is that name or "*", already
  sorted by policy, rule and id (the decision's order); `scoped` says whether one of them is
  principal- or team-scoped; `reservation` is the smallest applying per-request token limit (the
  output reservation when the request states none).
- `any`: the same for a resource no rule names (only "*" rules apply).
  Each entry also has `params` (parameter -> its bounds that may apply there: {"lo", "hi"} for a
  plain numeric range, {} for any other; params.rego's fast path), the same bounds as
  decision.rego's one-body branch reads them (`ranges`, `lengths`, `unchecked`, see
  _param_lists), `checks` (operation -> true for every operation a time window, access rule or
  confirmation of that resource names, "*" included) and, unless a deny-list applies there,
  `models` (policy -> its allow-list patterns) and `models_ok` (literal model name -> true for
  each name every allow-list policy lets through).
- `features`: feature name -> true, every feature a rule names.
- `prices` and `default_price`: pricing.rego's candidates (valid entries, file order) with the
  price in USD ("usd") and as whole numbers "i" and "o" (input and output USD per million tokens,
  i.e. micro-USD per token, times "d", the smallest power of ten making both whole);
  `exact_prices`: literal model name -> its price (the first candidate whose glob matches it, or
  the default), for each name written literally in the pricing table or an allow-list whose
  price the compiler can decide (it matches globs of "*" and "?" only; see _glob_regex).

A template is {"item": the limit with every fixed field (a global limit's subject, a request
limit's cost), "k": the key of what the request adds}: "" nothing, "out", "tokens" or "usd" a
cost, "<scope>:<cost>" a principal's or team's subject and that cost. The Rego fast paths apply
only when the request names at most one resource; every other request, and every bundle without
`index` (hand-written data, older compilers), takes the generic path over the lists, which the
generated tests compare with the fast path on every decision.

Every rule here mirrors the generic Rego path exactly (an entry the generic path would drop is
dropped here too); when the lists hold something the index cannot express (a non-string
resource), no index is written and OPA takes the generic path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

from compiler.lower import Config

_SCOPES = ("global", "principal", "team")
# (config list, unit, the period field the item carries)
_LIMIT_LISTS = (
    ("rate_limits", "requests", "window_seconds"),
    ("token_limits", "tokens", "window_seconds"),
    ("budgets", "usd_micros", "period"),
)


def precompute(config: Config) -> Config:
    """`config` with `index` added (or unchanged when the lists defeat the index)."""
    index = _index(config)
    return cast(Config, {**config, "index": index}) if index is not None else config


def _enforcement(config: Mapping[str, Any]) -> str:
    mode = config.get("enforcement")
    return mode if mode in ("strict", "warn", "monitor") else "strict"


def _action(entry: Mapping[str, Any], enforcement: str) -> str:
    # limits.rego `_actions`: strict keeps warn and blocks everything else; warn and monitor never
    # block on a known action. An unknown action always blocks.
    action = entry.get("action", "block")
    if enforcement == "strict":
        return "warn" if action == "warn" else "block"
    return "warn" if action in ("block", "warn", "require_confirmation") else "block"


def _is_zero(value: Any) -> bool:
    """A Rego number equal to 0 (a JSON boolean is no number there)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _template(
    entry: Mapping[str, Any], unit: str, period_key: str, enforcement: str
) -> dict[str, Any] | None:
    required = ("id", "policy", "rule", period_key, "limit", "warn_at", "scope")
    if any(key not in entry for key in required):
        return None  # the generic path's item would be undefined: the entry is dropped there too
    resource = entry.get("resource", "*")
    scope = entry["scope"] if entry["scope"] in _SCOPES else "global"
    item = {
        "id": entry["id"],
        "policy": entry["policy"],
        "unit": unit,
        period_key: entry[period_key],
        "scope": scope,
        "limit": entry["limit"],
        "warn_at": entry["warn_at"],
        "action": _action(entry, enforcement),
    }
    if unit == "requests":
        item["cost"] = 1  # the same for every request: no patch
        cost = ""
    elif unit == "tokens":
        # Per-request token limits (window 0) cost the output reservation, windowed ones everything.
        cost = "out" if _is_zero(entry[period_key]) else "tokens"
    else:
        cost = "usd"
    if scope == "global":
        item["subject"] = resource  # a global limit's counter is the rule's resource
        key = cost
    else:
        key = f"{scope}:{cost}"
    return {"item": item, "k": key, "_key": (entry["policy"], entry["rule"], entry["id"])}


def _dict_entries(config: Mapping[str, Any], name: str) -> list[dict[str, Any]] | None:
    """The compiled list `name` (empty when absent); None when it is not a list of objects, which
    only the generic Rego path reads as it must."""
    entries = config.get(name, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    return entries


def _index(config: Mapping[str, Any]) -> dict[str, Any] | None:
    enforcement = _enforcement(config)
    templates: list[tuple[str, dict[str, Any]]] = []
    reservations: list[tuple[str, Any]] = []
    for name, unit, period_key in _LIMIT_LISTS:
        entries = _dict_entries(config, name)
        if entries is None:
            return None
        for entry in entries:
            resource = entry.get("resource", "*")
            if not isinstance(resource, str):
                return None
            if entry.get("action", "block") == "allow":
                continue
            if name == "token_limits" and _is_zero(entry.get("window_seconds")):
                limit = entry.get("limit")
                if isinstance(limit, (int, float)) and not isinstance(limit, bool):
                    reservations.append((resource, limit))
            template = _template(entry, unit, period_key, enforcement)
            if template is not None:
                templates.append((resource, template))
    try:
        templates.sort(key=lambda pair: pair[1]["_key"])
    except TypeError:
        return None  # mixed key types: let OPA's own ordering decide, on the generic path
    checks = _check_entries(config)
    model_rules = _dict_entries(config, "model_rules")
    if checks is None or model_rules is None:
        return None
    model_resources = {e.get("resource", "*") for e in model_rules}
    if not all(isinstance(r, str) for r in model_resources):
        return None
    names = sorted(
        {r for r, _ in templates}
        | {r for r, _ in reservations}
        | {r for r, _ in checks}
        | model_resources
        | {"*"}
    )
    bounds = config.get("param_bounds", [])
    if not isinstance(bounds, list) or not all(
        isinstance(b, dict)
        and isinstance(b.get("resource", "*"), str)
        and isinstance(b.get("parameter"), str)
        for b in bounds
    ):
        return None
    names = sorted(set(names) | {b.get("resource", "*") for b in bounds})
    by_resource = {name: _for_resource(name, templates, reservations) for name in names}
    prices = _prices(config)
    if prices is None:
        return None
    literal_names = _literal_models(model_rules, prices[0])
    for name, entry in by_resource.items():
        entry["params"] = _params(name, bounds)
        entry.update(_param_lists(name, bounds))
        entry["checks"] = {op: True for r, op in checks if r in (name, "*")}
        models = _models(name, model_rules)
        if models is not None:
            entry["models"] = models
            entry["models_ok"] = _allowed_names(models, literal_names)
    # features.rego: a feature rule concerns a request whose feature equals its own; the fast path
    # skips the package when the request states a feature (null included) no rule names.
    feature_rules = config.get("features", [])
    if not isinstance(feature_rules, list) or not all(
        isinstance(e, dict) and isinstance(e.get("feature"), str) for e in feature_rules
    ):
        return None
    features = {e["feature"]: True for e in feature_rules}
    return {
        "enforcement": enforcement,
        "by_resource": by_resource,
        "any": by_resource["*"],
        "features": features,
        "prices": prices[0],
        "default_price": prices[1],
        "exact_prices": _exact_prices(literal_names, prices[0], prices[1]),
    }


def _params(name: str, bounds: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per parameter, the bounds that may apply to the resource (any operation, action not allow).

    A bound with exactly a numeric min and max (no max_length, no allowed_values) becomes
    {"lo": min, "hi": max}, which params.rego checks inline; any other bound becomes {}, which
    its fast path cannot pass, so the request goes through the generic checks.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for bound in bounds:
        if bound.get("resource", "*") not in (name, "*") or bound.get("action", "block") == "allow":
            continue
        lo, hi = bound.get("min"), bound.get("max")
        plain = bound.get("max_length") is None and bound.get("allowed_values") is None
        out.setdefault(bound["parameter"], []).append(
            {"lo": lo, "hi": hi} if plain and _number(lo) and _number(hi) else {}
        )
    return out


def _param_lists(name: str, bounds: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The bounds that may apply to the resource as decision.rego's one-body fast path reads them.

    "ranges": {"p": parameter, "lo": min, "hi": max} for a plain numeric range (an absent parameter
    reads as "lo", which passes); "lengths": {"p": parameter, "n": max_length} for a bound that is
    only a numeric max_length, passed by a string at most that long (an absent parameter reads as
    ""); "unchecked": the parameters with any other bound, which the fast path passes only when
    the request does not send them. Whatever fails there is decided by params.rego.
    """
    ranges: list[dict[str, Any]] = []
    lengths: list[dict[str, Any]] = []
    unchecked: set[str] = set()
    for bound in bounds:
        if bound.get("resource", "*") not in (name, "*") or bound.get("action", "block") == "allow":
            continue
        lo, hi, n = bound.get("min"), bound.get("max"), bound.get("max_length")
        values = bound.get("allowed_values")
        if values is None and n is None and _number(lo) and _number(hi):
            ranges.append({"p": bound["parameter"], "lo": lo, "hi": hi})
        elif values is None and lo is None and hi is None and _number(n):
            lengths.append({"p": bound["parameter"], "n": n})
        else:
            unchecked.add(bound["parameter"])
    return {"ranges": ranges, "lengths": lengths, "unchecked": sorted(unchecked)}


# glob.match's syntax (OPA's gobwas/glob); the compiler decides a match itself only for patterns
# whose special characters are "*" and "?" (with no delimiters: any run, any one character).
_GLOB_SPECIAL = frozenset("*?[]{}\\!")


def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """A regular expression matching what glob.match(pattern, null, name) matches, or None when
    the pattern uses syntax the compiler leaves to OPA (classes, alternatives, escapes)."""
    if any(c in _GLOB_SPECIAL - {"*", "?"} for c in pattern):
        return None
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _literal(pattern: str) -> bool:
    return not any(c in _GLOB_SPECIAL for c in pattern)


def _literal_models(model_rules: list[dict[str, Any]], prices: list[dict[str, Any]]) -> list[str]:
    """The model names written out literally in allow-lists and the pricing table: the names the
    exact-name tables cover (a request for another model takes the glob scans)."""
    names: set[str] = {p["model"] for p in prices if _literal(p["model"])}
    for rule in model_rules:
        patterns = rule.get("patterns")
        listed = patterns if isinstance(patterns, list) else [patterns]
        names.update(p for p in listed if isinstance(p, str) and _literal(p))
    return sorted(names)


def _glob_matches(pattern: str, name: str) -> bool | None:
    """glob.match(pattern, null, name), or None when the compiler cannot tell."""
    regex = _glob_regex(pattern)
    return None if regex is None else regex.fullmatch(name) is not None


def _allowed_names(policies: Mapping[str, list[str]], names: list[str]) -> dict[str, bool]:
    """name -> true for each name every allow-list policy lets through (models.rego's
    _fast_allowed, decided here); a name the compiler cannot decide is left out."""
    out: dict[str, bool] = {}
    for name in names:
        verdicts = [[_glob_matches(p, name) for p in patterns] for patterns in policies.values()]
        if any(None in v for v in verdicts):
            continue
        if all(any(v) for v in verdicts):
            out[name] = True
    return out


def _exact_prices(
    names: list[str], prices: list[dict[str, Any]], default: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """name -> pricing.rego's `nanos` for that model: the first listed price whose glob matches it,
    else the default; a name for which the compiler cannot decide a pattern before the match is
    left out (pricing.rego then scans)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        for price in prices:
            verdict = _glob_matches(price["model"], name)
            if verdict is None:
                break
            if verdict:
                out[name] = price
                break
        else:
            out[name] = default
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _price(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The price as pricing.rego returns it ("usd") and as whole numbers "i" and "o" over "d"."""
    usd = {k: entry[k] for k in ("input_per_million_usd", "output_per_million_usd")}
    exact = [Decimal(str(v)) for v in usd.values()]
    if any(v * 1_000_000_000 != (v * 1_000_000_000).to_integral_value() for v in exact):
        return None  # limits.rego rounds such a price; let it, on the generic path
    # The smallest power of ten that makes both prices whole: OPA's integer arithmetic stays on
    # machine words (its fast path) for realistic token counts, where nano-units overflowed it.
    places = max(max(0, -v.normalize().as_tuple().exponent) for v in exact)  # type: ignore[operator]
    divisor = 10**places
    return {"usd": usd, "i": int(exact[0] * divisor), "o": int(exact[1] * divisor), "d": divisor}


def _prices(config: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """pricing.rego's candidates in file order (valid entries only) and its default price."""
    table = config.get("pricing", [])
    if not isinstance(table, list):
        return None
    prices = []
    for entry in table:
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            continue
        if not (_number(entry.get("input_per_million_usd")) and _number(entry.get("output_per_million_usd"))):
            continue
        price = _price(entry)
        if price is None:
            return None
        prices.append({"model": entry["model"], **price})
    fallback = config.get("default_pricing")
    if not (
        isinstance(fallback, dict)
        and _number(fallback.get("input_per_million_usd"))
        and _number(fallback.get("output_per_million_usd"))
    ):
        fallback = {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
    default = _price(fallback)
    return None if default is None else (prices, default)


_CHECK_LISTS = ("time_windows", "access_rules", "confirmations")
# The Rego packages decision.rego's _others_quiet skips when the index says none of their rules
# applies (the three lists above by resource and operation, features by name).
SKIPPED_PACKAGES = ("time_windows", "access", "confirmations", "features")


def _check_entries(config: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """(resource, operation) of every check entry that may apply somewhere (action not allow).

    The Rego fast path skips time windows, access rules and confirmations for a
    request whose resource and operation no such entry names; anything else goes through them.
    """
    pairs: list[tuple[str, str]] = []
    for name in _CHECK_LISTS:
        entries = _dict_entries(config, name)
        if entries is None:
            return None
        for entry in entries:
            resource, operation = entry.get("resource", "*"), entry.get("operation", "*")
            if not isinstance(resource, str) or not isinstance(operation, str):
                return None
            if entry.get("action", "block") != "allow":
                pairs.append((resource, operation))
    return pairs


def _models(name: str, rules: list[dict[str, Any]]) -> dict[str, list[str]] | None:
    """Allow-list patterns by policy for the resource, or None when only the generic path can tell.

    models.rego: an applying rule (resource, action not allow) with allowed false is a deny-list,
    which the fast path leaves to the generic path; an allow-list policy is satisfied when one of
    its string patterns matches the model.
    """
    allow: dict[str, list[str]] = {}
    for rule in rules:
        if rule.get("resource", "*") not in (name, "*") or rule.get("action", "block") == "allow":
            continue
        if rule.get("allowed", True) is False:
            return None
        policy = rule.get("policy")
        if not isinstance(policy, str):
            return None
        patterns = rule.get("patterns")
        listed = patterns if isinstance(patterns, list) else [patterns] if isinstance(patterns, str) else []
        allow.setdefault(policy, []).extend(p for p in listed if isinstance(p, str))
    return allow


def _for_resource(
    name: str, templates: list[tuple[str, dict[str, Any]]], reservations: list[tuple[str, Any]]
) -> dict[str, Any]:
    applying = {name, "*"}
    limits = [
        {k: v for k, v in t.items() if k != "_key"} for resource, t in templates if resource in applying
    ]
    out: dict[str, Any] = {"limits": limits, "scoped": any(":" in t["k"] for t in limits)}
    per_request = [limit for resource, limit in reservations if resource in applying]
    if per_request:
        out["reservation"] = min(per_request)
    return out
