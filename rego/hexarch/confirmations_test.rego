# METADATA
# title: Tests of confirmations
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.confirmations_test

import data.hexarch.lib.confirmations

_rule(fields) := object.union(
	{
		"policy": "confirmations", "rule": 0, "operation": "delete", "resource": "*",
		"resource_types": ["conversation", "model"], "action": "require_confirmation",
	},
	fields,
)

_messages(rule, doc) := messages if {
	messages := [f.message | some f in confirmations.findings] with data.hexarch.config as {"confirmations": [rule]}
		with input as doc
}

test_listed_type_needs_confirmation if {
	fs := confirmations.findings with data.hexarch.config as {"confirmations": [_rule({})]}
		with input as {"operation": "delete", "resource_type": "conversation"}
	fs == {{
		"policy": "confirmations", "rule": 0, "code": "confirmation_required", "status": 428,
		"action": "require_confirmation",
		"message": "operation delete on a \"conversation\" requires confirmation (send the request again confirmed)",
	}}
}

test_confirmed_request_passes if {
	_messages(_rule({}), {"operation": "delete", "resource_type": "model", "confirmed": true}) == []
}

test_confirmed_must_be_true if {
	_messages(_rule({}), {"operation": "delete", "resource_type": "model", "confirmed": "yes"}) != []
}

test_other_type_does_not_need_confirmation if {
	_messages(_rule({}), {"operation": "delete", "resource_type": "file"}) == []
}

test_missing_type_needs_confirmation if {
	_messages(_rule({}), {"operation": "delete", "resource_type": null}) == ["operation delete requires confirmation (send the request again confirmed)"]
	_messages(_rule({}), {"operation": "delete"}) != []
}

test_any_type if {
	_messages(_rule({"resource_types": ["*"]}), {"operation": "delete", "resource_type": "file"}) != []
	_messages(_rule({"resource_types": []}), {"operation": "delete", "resource_type": "file"}) != []
}

test_other_operation_passes if {
	_messages(_rule({}), {"operation": "chat", "resource_type": "model"}) == []
}

test_missing_operation_needs_confirmation if {
	_messages(_rule({}), {}) != []
}
