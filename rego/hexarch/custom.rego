# METADATA
# title: Custom policies
# description: >-
#   Violations added by user Rego files (package hexarch.custom.<id>, rule violations). Entries are
#   normalised to the violation shape and always block (strict semantics); the enforcement mode
#   still applies to them like to every other violation. No custom policies means no violations.
package hexarch.lib.custom

# METADATA
# title: Custom violations
# description: Every entry of data.hexarch.custom[id].violations, as a blocking violation.
violations contains normalize(id, entry) if {
	some id, policy in data.hexarch.custom
	some entry in policy.violations
}

# METADATA
# title: Normalise a custom violation
# description: >-
#   An object keeps its policy, rule, code, message and status (defaults: the custom id, 0,
#   custom_violation, the entry itself, 403); any other value becomes the message.
normalize(id, entry) := {
	"policy": object.get(entry, "policy", id),
	"rule": object.get(entry, "rule", 0),
	"code": object.get(entry, "code", "custom_violation"),
	"message": object.get(entry, "message", sprintf("%v", [entry])),
	"action": "block",
	"status": object.get(entry, "status", 403),
} if {
	is_object(entry)
} else := {
	"policy": id,
	"rule": 0,
	"code": "custom_violation",
	"message": sprintf("%v", [entry]),
	"action": "block",
	"status": 403,
}
