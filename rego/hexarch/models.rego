# METADATA
# title: Model allow and deny lists
# description: >-
#   For each policy with applying allow-list rules the model must match one of their patterns;
#   any applying deny-list rule whose pattern matches denies. Globs use glob.match with no
#   delimiters ("*" any run, "?" one character). glob.match reads an empty delimiter list as
#   ["."]; only null means none, so "tinyllama:*" matches "tinyllama:1.1b".
package hexarch.lib.models

import data.hexarch.lib.applies
import data.hexarch.lib.request

_active := [rule |
	some rule in data.hexarch.config.model_rules
	applies.resources[object.get(rule, "resource", "*")]
	object.get(rule, "action", "block") != "allow"
]

_allow_rules := [rule | some rule in _active; object.get(rule, "allowed", true) != false]

_patterns(rule) := rule.patterns if {
	is_array(rule.patterns)
} else := [rule.patterns] if {
	is_string(rule.patterns)
} else := []

# Only a string model can match: a missing or non-string model matches nothing (allow-lists fail;
# deny-lists fail closed through _denied). glob.match is only ever given strings, so decisions
# also hold under opa eval --strict-builtin-errors.
_matches(rule) if {
	some pattern in _patterns(rule)
	is_string(pattern)
	glob.match(pattern, null, request.model)
}

# Matching is written out for the compiled shape (a list of patterns) and for a single string,
# instead of calling _matches: one comprehension costs less than two function calls per rule.
_unsatisfied_policies := ({rule.policy | some rule in _active; object.get(rule, "allowed", true) != false} - {rule.policy |
	some rule in _active
	object.get(rule, "allowed", true) != false
	is_array(rule.patterns)
	some pattern in rule.patterns
	is_string(pattern)
	glob.match(pattern, null, request.model)
}) - {rule.policy |
	some rule in _active
	object.get(rule, "allowed", true) != false
	is_string(rule.patterns)
	glob.match(rule.patterns, null, request.model)
}

# The allow rules of a policy form one list, so one rule speaks for it: the strictest applying
# one (block, then require_confirmation, then warn), the lowest-numbered among equals. A warn rule
# listed first must not soften a block rule beside it.
_speaking_allow_rule(policy) := sort([[_strictness(rule), object.get(rule, "rule", 0), rule] |
	some rule in _allow_rules
	rule.policy == policy
])[0][2]

_strictness(rule) := object.get({"require_confirmation": 1, "warn": 2}, object.get(rule, "action", "block"), 0)

_allowed_patterns(policy) := applies.join(sort({pattern |
	some rule in _allow_rules
	rule.policy == policy
	some pattern in _patterns(rule)
}))

# METADATA
# title: Model findings
# description: Findings with code model_not_allowed (403).
findings := set() if {
	# A model the allow-lists name literally, which the compiler found allowed by every policy.
	applies.index_entry.models_ok[input.model]
} else := set() if {
	_fast_allowed
} else := _findings

# The compiler's index lists, per resource without applying deny-lists, the allow-list patterns
# of each policy: the model passes when every policy has a matching pattern.
_fast_allowed if {
	policies := applies.index_entry.models
	is_string(input.model)
	every patterns in policies {
		some pattern in patterns
		glob.match(pattern, null, input.model)
	}
}

_findings contains applies.finding(rule, "model_not_allowed", 403, message) if {
	some policy in _unsatisfied_policies
	rule := _speaking_allow_rule(policy)
	message := _allow_list_message(policy)
}

_findings contains applies.finding(rule, "model_not_allowed", 403, _deny_message(rule)) if {
	some rule in _active
	object.get(rule, "allowed", true) == false
	_denied(rule)
}

_denied(rule) if _matches(rule)

# Without a model name a deny-list cannot be checked, so it fails closed like an allow-list.
_denied(_) if not request.model

# glob.match fails on a pattern it cannot parse (like "[a-]"), which would match nothing and let
# every model through a deny-list; such a pattern denies instead.
_denied(rule) if {
	some pattern in _patterns(rule)
	not _parses(pattern)
}

_parses(pattern) if {
	is_string(pattern)
	is_boolean(glob.match(pattern, null, ""))
}

_allow_list_message(policy) := sprintf(
	"model %q is not allowed by policy %v (allowed: %v)",
	[request.model, policy, _allowed_patterns(policy)],
) if {
	request.model
} else := sprintf(
	"the request names no model; policy %v allows only: %v",
	[policy, _allowed_patterns(policy)],
)

_deny_message(rule) := sprintf("model %q is not allowed by policy %v (denied: %v)", [
	request.model,
	rule.policy,
	applies.join(_patterns(rule)),
]) if {
	request.model
} else := sprintf("the request names no model; policy %v denies: %v", [
	rule.policy,
	applies.join(_patterns(rule)),
])
