# METADATA
# title: Confirmations
# description: >-
#   Operations that need explicit confirmation. A rule applies when its operation (and resource)
#   match and its resource_types contain "*" or input.resource_type, or input.resource_type is
#   missing; it is satisfied only by input.confirmed == true.
package hexarch.lib.confirmations

import data.hexarch.lib.applies
import data.hexarch.lib.request

# METADATA
# title: Confirmation findings
# description: Findings with code confirmation_required (428).
findings contains applies.finding(rule, "confirmation_required", 428, _message(rule)) if {
	some rule in data.hexarch.config.confirmations
	applies.operations[object.get(rule, "operation", "*")]
	applies.resources[object.get(rule, "resource", "*")]
	object.get(rule, "action", "block") != "allow"
	type_matches(rule)
	not request.confirmed
}

_types(rule) := object.get(rule, "resource_types", ["*"])

# METADATA
# title: Resource type matches
# description: >-
#   True when the rule names any type ("*" or no types), the request's resource type is listed,
#   or the request names no resource type (missing never lets a request through).
type_matches(rule) if "*" in _types(rule)

type_matches(rule) if count(_types(rule)) == 0

type_matches(_) if not request.resource_type

type_matches(rule) if request.resource_type in _types(rule)

_message(rule) := sprintf("%v on a %q requires confirmation (send the request again confirmed)", [
	applies.operation_label(rule),
	request.resource_type,
]) if {
	request.resource_type
} else := sprintf("%v requires confirmation (send the request again confirmed)", [
	applies.operation_label(rule),
])
