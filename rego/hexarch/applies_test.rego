# METADATA
# title: Tests of rule applicability
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.applies_test

import data.hexarch.lib.applies

test_resource_matching if {
	applies.resource_matches("*") with input as {"resources": []}
	applies.resource_matches("tinyllama") with input as {"resources": ["tinyllama_chat", "tinyllama"]}
	not applies.resource_matches("premium") with input as {"resources": ["tinyllama"]}
	applies.resource_matches("premium") with input as {}
	applies.resource_matches("premium") with input as {"resources": null}
}

test_operation_matching if {
	applies.operation_matches("*") with input as {"operation": "chat"}
	applies.operation_matches("chat") with input as {"operation": "chat"}
	not applies.operation_matches("delete") with input as {"operation": "chat"}
	applies.operation_matches("delete") with input as {}
	applies.operation_matches("delete") with input as {"operation": null}
}

test_applies_defaults_to_everything if {
	applies.applies({}) with input as {"resources": [], "operation": "chat"}
	not applies.applies({"resource": "x"}) with input as {"resources": [], "operation": "chat"}
	not applies.applies({"operation": "x"}) with input as {"resources": [], "operation": "chat"}
}

test_rule_action if {
	applies.rule_action({"action": "warn"}) == "warn"
	applies.rule_action({"action": "allow"}) == "allow"
	applies.rule_action({"action": "require_confirmation"}) == "require_confirmation"
	applies.rule_action({"action": "ignore"}) == "block"
	applies.rule_action({}) == "block"
	not applies.active({"action": "allow"})
	applies.active({"action": "warn"})
}

test_finding_defaults if {
	applies.finding({}, "c", 400, "m") == {"policy": "", "rule": 0, "code": "c", "status": 400, "message": "m", "action": "block"}
}

test_labels_and_join if {
	applies.operation_label({"operation": "*"}) == "requests"
	applies.operation_label({}) == "requests"
	applies.operation_label({"operation": "batch"}) == "operation batch"
	applies.join(["a", 1, true]) == "a, 1, true"
	applies.join([]) == ""
}
