# METADATA
# title: Access control
# description: >-
#   An applying access rule is violated unless input.principal.id is one of its users, one of
#   input.principal.roles is one of its roles, or the rule lists @self ("self": true) and the
#   principal owns the resource the request names (input.resource_owner == input.principal.id).
#   A missing principal is never permitted.
package hexarch.lib.access

import data.hexarch.lib.applies
import data.hexarch.lib.request

# METADATA
# title: Access findings
# description: Findings with code access_denied (403).
findings contains applies.finding(rule, "access_denied", 403, _message(rule)) if {
	some rule in data.hexarch.config.access_rules
	applies.resources[object.get(rule, "resource", "*")]
	applies.operations[object.get(rule, "operation", "*")]
	object.get(rule, "action", "block") != "allow"
	not permitted(rule)
}

# METADATA
# title: Permitted
# description: >-
#   True when the principal is listed by id, holds one of the listed roles, or (@self) owns the
#   resource named in the request.
permitted(rule) if request.principal_id in rule.users

permitted(rule) if {
	some role in request.principal_roles
	role in rule.roles
}

permitted(rule) if {
	rule.self == true
	request.principal_id == request.resource_owner
}

_target(rule) := sprintf("resource %v", [object.get(rule, "resource", "*")]) if {
	object.get(rule, "operation", "*") == "*"
} else := sprintf("%v on resource %v", [applies.operation_label(rule), object.get(rule, "resource", "*")])

_message(rule) := sprintf("principal %q may not use %v", [request.principal_id, _target(rule)]) if {
	request.principal_id
} else := sprintf("an unidentified principal may not use %v", [_target(rule)])
