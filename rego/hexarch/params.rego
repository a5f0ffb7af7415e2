# METADATA
# title: Parameter bounds
# description: >-
#   min, max, max_length and allowed_values checks on input.params. A bound applies only when the
#   parameter is present; a value of the wrong type for a bound is a violation.
package hexarch.lib.params

import data.hexarch.lib.applies

# The parameter lookup comes first: most bounds name a parameter the request does not send.
# input.params of another type than object yields no value here (nothing to check).
_checked := [[bound, value] |
	some bound in data.hexarch.config.param_bounds
	value := input.params[bound.parameter]
	applies.resources[object.get(bound, "resource", "*")]
	applies.operations[object.get(bound, "operation", "*")]
	object.get(bound, "action", "block") != "allow"
]

_finding(bound, message) := applies.finding(bound, "invalid_parameter", 400, message)

# METADATA
# title: Parameter findings
# description: One finding per failed bound of a present parameter (code invalid_parameter, 400).
findings := set() if {
	# The compiler's index lists, per parameter, the bounds that may apply to the resource; plain
	# numeric ranges are checked inline, anything else ({}) fails here and takes the full checks.
	bounds := applies.index_entry.params
	is_object(input.params)
	every name, value in input.params {
		every bound in object.get(bounds, name, []) {
			is_number(value)
			value >= bound.lo
			value <= bound.hi
		}
	}
} else := _findings

_findings contains _finding(bound, _below_message(bound.parameter, value, minimum)) if {
	some [bound, value] in _checked
	minimum := bound.min
	minimum != null
	not _at_least(value, minimum)
}

_findings contains _finding(bound, _above_message(bound.parameter, value, maximum)) if {
	some [bound, value] in _checked
	maximum := bound.max
	maximum != null
	not _at_most(value, maximum)
}

_findings contains _finding(bound, _length_message(bound.parameter, value, limit)) if {
	some [bound, value] in _checked
	limit := bound.max_length
	limit != null
	not _length_within(value, limit)
}

_findings contains _finding(bound, _choice_message(bound.parameter, value, allowed)) if {
	some [bound, value] in _checked
	allowed := bound.allowed_values
	allowed != null
	not _one_of(value, allowed)
}

# Checks sit in helper rules: an erroring built-in inline under "not" makes the "not" false, and a
# check must never pass because it could not be evaluated.
_one_of(value, allowed) if value in allowed

_at_least(value, minimum) if {
	is_number(value)
	is_number(minimum)
	value >= minimum
}

_at_most(value, maximum) if {
	is_number(value)
	is_number(maximum)
	value <= maximum
}

_length(value) := count(value) if is_string(value)

_length(value) := count(value) if is_array(value)

_length_within(value, limit) if {
	is_number(limit)
	_length(value) <= limit
}

_below_message(name, value, minimum) := msg if {
	is_number(value)
	msg := sprintf("%v %v is below the minimum %v", [name, value, _show_bound(minimum, value)])
} else := _type_message(name, value, "a number")

_above_message(name, value, maximum) := msg if {
	is_number(value)
	msg := sprintf("%v %v is above the maximum %v", [name, value, _show_bound(maximum, value)])
} else := _type_message(name, value, "a number")

_length_message(name, value, limit) := msg if {
	is_string(value)
	msg := sprintf("%v is %v characters long, above the maximum length %v", [name, count(value), limit])
} else := msg if {
	is_array(value)
	msg := sprintf("%v has %v items, above the maximum length %v", [name, count(value), limit])
} else := _type_message(name, value, "a string or a list")

_choice_message(name, value, allowed) := sprintf(
	"%v %v is not one of the allowed values %v",
	[name, _show(value), applies.join([_show(choice) | some choice in allowed])],
)

_type_message(name, value, wanted) := sprintf("%v must be %v, got %v", [name, wanted, type_name(value)])

# A bound is shown as "1.0" next to a fractional value, so "1.5 is above the maximum 1.0" reads right.
_show_bound(bound, value) := sprintf("%v.0", [bound]) if {
	is_number(bound)
	is_number(value)
	bound == floor(bound)
	value != floor(value)
} else := sprintf("%v", [bound])

# Values are quoted when strings and cut short, so a long prompt never floods a message.
_show(value) := sprintf("%q", [value]) if {
	is_string(value)
	count(value) <= 64
} else := sprintf("%q...", [substring(value, 0, 64)]) if {
	is_string(value)
} else := sprintf("%v", [value])
