# METADATA
# title: Hexarch decision
# description: >-
#   The decision document the sidecar asks for on every request (data.hexarch.decision): whether
#   the request is allowed, the violations and warnings of every rule, the limits the sidecar
#   must enforce with their costs, and the model's pricing. It is defined for every input.
package hexarch

import data.hexarch.lib.access
import data.hexarch.lib.applies
import data.hexarch.lib.compiled
import data.hexarch.lib.confirmations
import data.hexarch.lib.custom
import data.hexarch.lib.features
import data.hexarch.lib.findings
import data.hexarch.lib.limits as limit_rules
import data.hexarch.lib.models
import data.hexarch.lib.params
import data.hexarch.lib.pricing as price_rules
import data.hexarch.lib.request
import data.hexarch.lib.time_windows

# METADATA
# title: Enforcement
# description: strict (violations block), warn (violations become warnings) or monitor (report only).
enforcement := compiled.enforcement

# A bundle without compiled data fails closed (503, like an unavailable policy engine).
_config_violations contains {
	"policy": "hexarch",
	"rule": 0,
	"code": "config_missing",
	"message": "the policy bundle has no compiled configuration (data.hexarch.config)",
	"action": "block",
	"status": 503,
} if {
	not compiled.present
}

# The compiler always writes enforcement: testing that one field first avoids reading the whole
# configuration document on every request.
_violations := findings.violations if {
	data.hexarch.config.enforcement
} else := findings.violations if {
	compiled.present
} else := findings.violations | _config_violations

# METADATA
# title: Allow
# description: >-
#   strict: true when there is no violation; warn and monitor: always true.
default allow := false

allow if {
	compiled.enforcement == "strict"
	count(_violations) == 0
}

allow if compiled.enforcement != "strict"

# METADATA
# title: Violations
# description: >-
#   Blocking findings, sorted by policy, rule, code and message. Empty under warn enforcement
#   (they move to warnings); still reported under monitor, where they do not block.
violations := [] if {
	count(_violations) == 0
} else := [] if {
	compiled.enforcement == "warn"
} else := _sorted(_violations)

# METADATA
# title: Warnings
# description: >-
#   Warning findings, sorted. Under warn and monitor enforcement every violation is also a
#   warning, with action warn.
warnings := [] if {
	# No finding at all (the common case): nothing to merge or sort.
	count(findings.warnings) == 0
	count(_violations) == 0
} else := _sorted(findings.warnings) if {
	compiled.enforcement == "strict"
} else := _sorted(findings.warnings | _softened)

_softened := {object.union(violation, {"action": "warn"}) | some violation in _violations}

# METADATA
# title: Limits
# description: The limits the sidecar enforces for this request (see package hexarch.lib.limits).
limits := limit_rules.limits

# METADATA
# title: Pricing
# description: USD per million input and output tokens for the requested model.
pricing := price_rules.pricing

# METADATA
# title: Decision
# description: The decision document of DESIGN.md, always an object.
decision := {
	"allow": true,
	"enforcement": index.enforcement,
	"violations": [],
	"warnings": [],
	"limits": [object.union(template.item, patches[template.k]) | some template in entry.limits],
	"pricing": price.usd,
} if {
	# The common case in one body with local variables, through the compiler's index: every rule
	# evaluated costs OPA a few microseconds of its own (docs/performance.md, "The decision in
	# OPA"). The same as the quiet branch below, which the tests compare it with.
	index := data.hexarch.config.index
	entry := applies.index_entry

	# No time window, access rule, confirmation or feature rule concerns the request (_others_quiet).
	is_string(input.operation)
	not entry.checks[input.operation]
	not entry.checks["*"]
	input.feature == input.feature # a stated feature (null included), that no rule names
	not index.features[input.feature]

	# Every parameter bound that may apply passes (absent parameters pass); else params.rego says.
	params := input.params
	is_object(params)
	every bound in entry.ranges {
		value := object.get(params, bound.p, bound.lo)
		is_number(value)
		value >= bound.lo
		value <= bound.hi
	}
	every bound in entry.lengths {
		value := object.get(params, bound.p, "")
		is_string(value)
		count(value) <= bound.n
	}
	every name in entry.unchecked {
		not params[name] == params[name] # absent (x == x holds for every present value)
	}

	count(models.findings) == 0
	count([true | some policy in data.hexarch.custom; some _ in policy.violations]) == 0

	# The costs, as limits.rego computes them, in whole units of 1/d micro-USD.
	price := price_rules.nanos
	out := limit_rules.output_reservation
	prompt := request.prompt_tokens
	n := (prompt * price.i) + (out * price.o)
	r := n % price.d
	costs := {"": {}, "out": {"cost": out}, "tokens": {"cost": prompt + out}, "usd": {"cost": ((n - r) / price.d) + to_number(r > 0)}}
	patches := object.union(costs, limit_rules.scoped_patches(entry, costs))
} else := {
	"allow": true,
	"enforcement": compiled.enforcement,
	"violations": [],
	"warnings": [],
	"limits": limit_rules.limits,
	"pricing": price_rules.pricing,
} if {
	_quiet
} else := {
	"allow": allow,
	"enforcement": compiled.enforcement,
	"violations": violations,
	"warnings": warnings,
	"limits": limit_rules.limits,
	"pricing": price_rules.pricing,
}

# The common case: configuration present, no check found anything and no custom policy objects.
# Then, in every enforcement mode, the request is allowed with no violations and no warnings, and
# none of the rules that merge, soften and sort findings needs to run.
_quiet if {
	data.hexarch.config.enforcement
	count(params.findings) == 0
	count(models.findings) == 0
	_others_quiet
	count(custom.violations) == 0
}

# Time windows, access rules, confirmations and features find nothing: the compiler's index says
# no such rule applies to the request's resource, operation and feature, or each check ran.
_others_quiet if {
	checks := applies.index_entry.checks
	is_string(input.operation)
	not checks[input.operation]
	not checks["*"]
	input.feature == input.feature # a stated feature (null included), that no rule names
	not data.hexarch.config.index.features[input.feature]
} else if {
	count(time_windows.findings) == 0
	count(access.findings) == 0
	count(confirmations.findings) == 0
	count(features.findings) == 0
}

_sorted(items) := [row[6] | some row in sort([_sort_key(item) | some item in items])]

_sort_key(item) := [
	object.get(item, "policy", ""),
	object.get(item, "rule", 0),
	object.get(item, "code", ""),
	object.get(item, "message", ""),
	object.get(item, "action", ""),
	object.get(item, "status", 0),
	item,
]
