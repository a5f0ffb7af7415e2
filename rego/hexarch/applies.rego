# METADATA
# title: Rule applicability
# description: >-
#   Which compiled rules apply to the request (resource and operation matching), the normalised
#   action of a rule, and the finding record every check package emits.
package hexarch.lib.applies

import data.hexarch.lib.request

# METADATA
# title: Resource matches
# description: >-
#   True when the rule's resource is "*", is one of input.resources, or input.resources is
#   missing (a missing field makes every rule apply).
resource_matches(resource) if resource in _matching_resources

resource_matches(_) if not request.resources_known

_matching_resources := request.resource_set | {"*"}

# METADATA
# title: Operation matches
# description: >-
#   True when the rule's operation is "*", equals input.operation, or input.operation is missing.
operation_matches("*")

operation_matches(operation) if operation == request.operation

operation_matches(_) if not request.operation_known

# METADATA
# title: Applying resources
# description: >-
#   The set of rule resources that apply: "*" and input.resources; when input.resources is
#   missing, "*" and every resource the compiled data names (so every rule applies). Hot paths
#   test `resources[object.get(rule, "resource", "*")]`, one lookup in a set computed once per
#   request instead of a function call per rule.
resources := {resource | some resource in input.resources} | {"*"} if {
	is_array(input.resources)
} else := {"*"} | {resource |
	some section in data.hexarch.config
	is_array(section) # the rule lists, not the compiler's index
	some entry in section
	resource := entry.resource
}

# METADATA
# title: Applying operations
# description: >-
#   The set of rule operations that apply: "*" and input.operation; when input.operation is
#   missing, "*" and every operation the compiled data names (so every rule applies).
operations := {"*", input.operation} if {
	is_string(input.operation)
} else := {"*"} | {operation |
	some section in data.hexarch.config
	is_array(section) # the rule lists, not the compiler's index
	some entry in section
	operation := entry.operation
}

# METADATA
# title: Index entry
# description: >-
#   The compiler's index entry (data.hexarch.config.index, compiler/precompute.py) for a request
#   naming at most one resource besides "*" (the sidecar always adds "*", and names the upstream
#   and the model, often the same name): the entry of that resource, or of "*" when no rule names
#   it. Undefined for other requests and for data without an index (the generic paths then decide).
index_entry := entry if {
	# The sidecar's own shape, [name, "*"]: one lookup, no sets.
	[name, "*"] = input.resources
	entry := data.hexarch.config.index.by_resource[name]
} else := data.hexarch.config.index.any if {
	# A name no rule names: only "*" rules apply (as below).
	[_, "*"] = input.resources
} else := entry if {
	is_array(input.resources)
	count(_named) == 1
	some name in _named
	entry := data.hexarch.config.index.by_resource[name]
} else := data.hexarch.config.index.any if {
	is_array(input.resources)
	count(_named) < 2
}

# The request's resources other than "*", which every rule set includes anyway.
_named := resources - {"*"}

# METADATA
# title: Rule applies
# description: True when the rule's resource and operation (default "*") match the request.
applies(rule) if {
	resource_matches(object.get(rule, "resource", "*"))
	operation_matches(object.get(rule, "operation", "*"))
}

# METADATA
# title: Rule action
# description: >-
#   block, warn, allow or require_confirmation; a missing or unknown action is block, so a
#   malformed entry never weakens a rule.
rule_action(rule) := action if {
	action := rule.action
	action in {"block", "warn", "allow", "require_confirmation"}
} else := "block"

# METADATA
# title: Rule active
# description: >-
#   True when the rule applies and its action is not allow (allow adds nothing). The hot path of
#   every check, so it is written out rather than calling applies and rule_action.
active(rule) if {
	not rule.action == "allow"
	resource_matches(object.get(rule, "resource", "*"))
	operation_matches(object.get(rule, "operation", "*"))
}

# METADATA
# title: Finding
# description: >-
#   The record a check emits for a failed rule; findings.rego turns it into a violation or a
#   warning according to the action.
finding(rule, code, status, message) := {
	"policy": object.get(rule, "policy", ""),
	"rule": object.get(rule, "rule", 0),
	"code": code,
	"message": message,
	"status": status,
	"action": rule_action(rule),
}

# METADATA
# title: Operation label
# description: Subject of a message about a rule's operation ("operation batch" or "requests").
operation_label(rule) := sprintf("operation %v", [rule.operation]) if {
	rule.operation != "*"
} else := "requests"

# METADATA
# title: Join for messages
# description: Items of any type joined with ", " (always defined, unlike concat on non-strings).
join(items) := concat(", ", [sprintf("%v", [item]) | some item in items])
