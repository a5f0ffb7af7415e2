# METADATA
# title: Tests of rule actions
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.findings_test

import data.hexarch.lib.findings

_bound(action) := {
	"policy": "quality_control", "rule": 0, "parameter": "temperature", "min": null, "max": 1,
	"max_length": null, "allowed_values": null, "resource": "*", "operation": "*", "action": action,
}

_hot := {"params": {"temperature": 2}}

# Violations and warnings for a configuration and input, without custom policies.
_violations(config, doc) := result if {
	result := findings.violations with data.hexarch.custom as {}
		with data.hexarch.config as config
		with input as doc
}

_warnings(config, doc) := result if {
	result := findings.warnings with data.hexarch.custom as {}
		with data.hexarch.config as config
		with input as doc
}

test_block_action_is_a_violation if {
	vs := _violations({"param_bounds": [_bound("block")]}, _hot)
	[[v.code, v.status, v.action] | some v in vs] == [["invalid_parameter", 400, "block"]]
	ws := _warnings({"param_bounds": [_bound("block")]}, _hot)
	ws == set()
}

test_unknown_action_blocks if {
	vs := _violations({"param_bounds": [_bound("warn_at_80%")]}, _hot)
	[v.action | some v in vs] == ["block"]
}

test_warn_action_is_a_warning if {
	ws := _warnings({"param_bounds": [_bound("warn")]}, _hot)
	[[w.code, w.status, w.action] | some w in ws] == [["invalid_parameter", 400, "warn"]]
	vs := _violations({"param_bounds": [_bound("warn")]}, _hot)
	vs == set()
}

test_require_confirmation_action if {
	vs := _violations({"param_bounds": [_bound("require_confirmation")]}, _hot)
	vs == {{
		"policy": "quality_control", "rule": 0, "code": "confirmation_required", "status": 428,
		"action": "require_confirmation",
		"message": "temperature 2 is above the maximum 1; confirm the request to proceed",
	}}
	confirmed := _violations({"param_bounds": [_bound("require_confirmation")]}, object.union(_hot, {"confirmed": true}))
	confirmed == set()
}

test_confirmation_rule_with_block_action if {
	rule := {
		"policy": "confirmations", "rule": 0, "operation": "delete", "resource": "*",
		"resource_types": ["*"], "action": "block",
	}
	vs := _violations({"confirmations": [rule]}, {"operation": "delete"})
	[[v.code, v.status, v.action] | some v in vs] == [["confirmation_required", 428, "block"]]
}

test_custom_violations_are_included if {
	vs := findings.violations with data.hexarch.config as {}
		with data.hexarch.custom as {"pii": {"violations": ["no e-mail addresses"]}}
		with input as {}
	vs == {{
		"policy": "pii", "rule": 0, "code": "custom_violation", "status": 403, "action": "block",
		"message": "no e-mail addresses",
	}}
}
