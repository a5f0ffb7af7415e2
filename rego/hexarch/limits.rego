# METADATA
# title: Limits
# description: >-
#   The rate, token and budget limits that apply to the request, with what the request costs
#   against each. OPA only emits them; the sidecar enforces them atomically in Redis.
package hexarch.lib.limits

import data.hexarch.lib.applies
import data.hexarch.lib.compiled
import data.hexarch.lib.pricing
import data.hexarch.lib.request

# METADATA
# title: Output reservation
# description: >-
#   Output tokens reserved for the request: input.estimate.max_output_tokens when present, else
#   the smallest applying per-request token limit, else default_max_output_tokens.
output_reservation := request.max_output_tokens if {
	is_number(request.max_output_tokens)
} else := min(_per_request_limits) if {
	count(_per_request_limits) > 0
} else := compiled.default_max_output_tokens

_per_request_limits := {entry.limit |
	some entry in compiled.token_limits
	entry.window_seconds == 0
	is_number(entry.limit)
	applies.active(entry)
}

# METADATA
# title: Token cost
# description: Prompt tokens plus the output reservation (windowed token limits).
token_cost := request.prompt_tokens + output_reservation

# METADATA
# title: Budget cost
# description: Micro-USD the request may spend, rounded up (USD per million tokens times tokens).
usd_micros_cost := ceil(_input_usd_micros + _output_usd_micros)

# USD per million tokens times tokens is micro-USD.
_input_usd_micros := request.prompt_tokens * pricing.pricing.input_per_million_usd

_output_usd_micros := output_reservation * pricing.pricing.output_per_million_usd

_scope(entry) := entry.scope if {
	entry.scope in {"global", "principal", "team"}
} else := "global"

_subject("principal", _) := request.principal_subject

_subject("team", _) := request.team_subject

_subject("global", entry) := object.get(entry, "resource", "*")

# warn and monitor enforcement never block on a limit; otherwise a limit blocks unless it warns.
_action(entry) := "block" if {
	compiled.enforcement == "strict"
	applies.rule_action(entry) != "warn"
} else := "warn"

_token_cost(entry) := output_reservation if {
	entry.window_seconds == 0
} else := token_cost

# One row per applying limit: [policy, rule, id, item], so sorting the rows orders the items.
_rows contains [policy, object.get(entry, "rule", 0), entry.id, item] if {
	some entry in compiled.rate_limits
	applies.active(entry)
	policy := object.get(entry, "policy", "")
	scope := _scope(entry)
	item := {
		"id": entry.id, "policy": policy, "unit": "requests", "window_seconds": entry.window_seconds,
		"scope": scope, "subject": _subject(scope, entry), "limit": entry.limit, "cost": 1,
		"warn_at": object.get(entry, "warn_at", null), "action": _action(entry),
	}
}

_rows contains [policy, object.get(entry, "rule", 0), entry.id, item] if {
	some entry in compiled.token_limits
	applies.active(entry)
	policy := object.get(entry, "policy", "")
	scope := _scope(entry)
	item := {
		"id": entry.id, "policy": policy, "unit": "tokens", "window_seconds": entry.window_seconds,
		"scope": scope, "subject": _subject(scope, entry), "limit": entry.limit, "cost": _token_cost(entry),
		"warn_at": object.get(entry, "warn_at", null), "action": _action(entry),
	}
}

_rows contains [policy, object.get(entry, "rule", 0), entry.id, item] if {
	some entry in compiled.budgets
	applies.active(entry)
	policy := object.get(entry, "policy", "")
	scope := _scope(entry)
	item := {
		"id": entry.id, "policy": policy, "unit": "usd_micros", "period": entry.period,
		"scope": scope, "subject": _subject(scope, entry), "limit": entry.limit, "cost": usd_micros_cost,
		"warn_at": object.get(entry, "warn_at", null), "action": _action(entry),
	}
}

# METADATA
# title: Limits
# description: Applying limits, sorted by policy, rule and id so the decision is stable.
limits := [row[3] | some row in sort(_rows)]
