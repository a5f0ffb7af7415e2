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

# Every rule below is on the path of every request, so each is one rule with inline input checks
# (no helper rules or functions per entry): OPA's cost is per rule and per expression evaluated.

# METADATA
# title: Output reservation
# description: >-
#   Output tokens reserved for the request: input.estimate.max_output_tokens (rounded up) when it
#   is a non-negative number, else the smallest applying per-request token limit, else
#   default_max_output_tokens.
output_reservation := ceil(input.estimate.max_output_tokens) if {
	is_number(input.estimate.max_output_tokens)
	input.estimate.max_output_tokens >= 0
} else := _fast.reservation if {
	# The compiler's index knows the smallest per-request limit of the resource.
	_fast.reservation
} else := compiled.default_max_output_tokens if {
	_fast
} else := min(_per_request_limits) if {
	count(_per_request_limits) > 0
} else := compiled.default_max_output_tokens

_per_request_limits := {entry.limit |
	some entry in data.hexarch.config.token_limits
	entry.window_seconds == 0
	is_number(entry.limit)
	applies.resources[object.get(entry, "resource", "*")]
	object.get(entry, "action", "block") != "allow"
}

# METADATA
# title: Token cost
# description: Prompt tokens plus the output reservation (windowed token limits).
token_cost := request.prompt_tokens + output_reservation

# METADATA
# title: Budget cost
# description: >-
#   Micro-USD the request may spend, rounded up (USD per million tokens times tokens), computed
#   exactly: prices become whole nano-units (the compiler allows at most 9 decimals), so 100
#   tokens at 0.6 cost 60, not the 61 that binary floating point gives.
usd_micros_cost := ((n - r) / d) + to_number(r > 0) if {
	# With the compiler's index the prices are already whole (times d): no function call.
	price := pricing.nanos
	d := price.d
	n := (request.prompt_tokens * price.i) + (output_reservation * price.o)
	r := n % d
} else := _ceil_div((request.prompt_tokens * _nanos(price.input_per_million_usd)) + (output_reservation * _nanos(price.output_per_million_usd)), 1000000000) if {
	price := pricing.pricing
}

_nanos(price) := round(price * 1000000000)

_ceil_div(n, d) := ((n - r) / d) + 1 if {
	r := n % d
	r > 0
} else := n / d

# METADATA
# title: Subjects
# description: >-
#   The counter subjects of principal- and team-scoped limits ("anonymous" for an unidentified
#   principal); an unknown scope is global, whose subject is the rule's resource.
subjects := {"principal": principal, "team": team} if {
	# The common case (both named) without a function call per field.
	principal := input.principal.id
	is_string(principal)
	principal != ""
	team := input.principal.team
	is_string(team)
	team != ""
} else := {"principal": request.principal_subject, "team": request.team_subject}

# warn and monitor enforcement never block on a limit; otherwise a limit blocks unless it warns.
_actions := {"warn": "warn"} if {
	compiled.enforcement == "strict"
} else := {"block": "warn", "warn": "warn", "require_confirmation": "warn"}

# One row per applying limit: [policy, rule, id, item], so sorting the rows orders the items.
# Rows are arrays (the compiler writes unique ids), not sets of objects.

# Per-request token limits (window 0) cost the output reservation; windowed ones the whole request.
_token_costs := {true: output_reservation, false: token_cost}

# The compiler's index entry for the request's resource: the templates of the applying limits,
# already in the decision's order (see applies.index_entry).
_fast := applies.index_entry

# What a template's key "k" adds to its item in this request (decision.rego's fast decision
# builds the same object in its own body).
_patches := object.union(costs, scoped_patches(_fast, costs)) if {
	costs := {"": {}, "out": {"cost": output_reservation}, "tokens": {"cost": token_cost}, "usd": {"cost": usd_micros_cost}}
}

# METADATA
# title: Scoped template patches
# description: >-
#   For an index entry with principal- or team-scoped templates, the patch of each key
#   "<scope>:<cost>": the subject, and the cost patch of that kind (costs["<cost>"]). Empty
#   otherwise, so a request with only global limits never evaluates its principal. The key is
#   built with concat, native in OPA's Wasm build (sprintf there is a call into the sidecar).
scoped_patches(entry, costs) := {} if {
	entry.scoped == false # not `not entry.scoped`: an entry without the flag gets every patch
} else := {concat(":", [scope, kind]): object.union(patch, {"subject": subject}) |
	some scope, subject in subjects
	some kind, patch in costs
}

# METADATA
# title: Limits
# description: Applying limits, sorted by policy, rule and id so the decision is stable.
limits := [object.union(template.item, _patches[template.k]) | some template in _fast.limits] if {
	_fast
} else := _generic

# The same without the index: every limit list filtered and sorted on each request.
_generic := [row[3] | some row in sort(array.concat(
	array.concat(
		[[entry.policy, entry.rule, entry.id, item] |
			some entry in data.hexarch.config.rate_limits
			applies.resources[object.get(entry, "resource", "*")]
			object.get(entry, "action", "block") != "allow"
			scope := object.get({"global": "global", "principal": "principal", "team": "team"}, entry.scope, "global")
			item := {
				"id": entry.id, "policy": entry.policy, "unit": "requests", "window_seconds": entry.window_seconds,
				"scope": scope, "subject": object.get(subjects, scope, object.get(entry, "resource", "*")), "limit": entry.limit,
				"cost": 1, "warn_at": entry.warn_at, "action": object.get(_actions, object.get(entry, "action", "block"), "block"),
			}
		],
		[[entry.policy, entry.rule, entry.id, item] |
			some entry in data.hexarch.config.token_limits
			applies.resources[object.get(entry, "resource", "*")]
			object.get(entry, "action", "block") != "allow"
			scope := object.get({"global": "global", "principal": "principal", "team": "team"}, entry.scope, "global")
			item := {
				"id": entry.id, "policy": entry.policy, "unit": "tokens", "window_seconds": entry.window_seconds,
				"scope": scope, "subject": object.get(subjects, scope, object.get(entry, "resource", "*")), "limit": entry.limit,
				"cost": _token_costs[entry.window_seconds == 0], "warn_at": entry.warn_at,
				"action": object.get(_actions, object.get(entry, "action", "block"), "block"),
			}
		],
	),
	[[entry.policy, entry.rule, entry.id, item] |
		some entry in data.hexarch.config.budgets
		applies.resources[object.get(entry, "resource", "*")]
		object.get(entry, "action", "block") != "allow"
		scope := object.get({"global": "global", "principal": "principal", "team": "team"}, entry.scope, "global")
		item := {
			"id": entry.id, "policy": entry.policy, "unit": "usd_micros", "period": entry.period,
			"scope": scope, "subject": object.get(subjects, scope, object.get(entry, "resource", "*")), "limit": entry.limit,
			"cost": usd_micros_cost, "warn_at": entry.warn_at, "action": object.get(_actions, object.get(entry, "action", "block"), "block"),
		}
	],
))]
