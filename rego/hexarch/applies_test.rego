package hexarch.lib.applies

test_resource_matching if {
	resource_matches("*") with input as {"resources": []}
	resource_matches("tinyllama") with input as {"resources": ["tinyllama_chat", "tinyllama"]}
	not resource_matches("premium") with input as {"resources": ["tinyllama"]}
	resource_matches("premium") with input as {}
	resource_matches("premium") with input as {"resources": null}
}

test_operation_matching if {
	operation_matches("*") with input as {"operation": "chat"}
	operation_matches("chat") with input as {"operation": "chat"}
	not operation_matches("delete") with input as {"operation": "chat"}
	operation_matches("delete") with input as {}
	operation_matches("delete") with input as {"operation": null}
}

test_applies_defaults_to_everything if {
	applies({}) with input as {"resources": [], "operation": "chat"}
	not applies({"resource": "x"}) with input as {"resources": [], "operation": "chat"}
	not applies({"operation": "x"}) with input as {"resources": [], "operation": "chat"}
}

test_rule_action if {
	rule_action({"action": "warn"}) == "warn"
	rule_action({"action": "allow"}) == "allow"
	rule_action({"action": "require_confirmation"}) == "require_confirmation"
	rule_action({"action": "ignore"}) == "block"
	rule_action({}) == "block"
	not active({"action": "allow"})
	active({"action": "warn"})
}

test_finding_defaults if {
	finding({}, "c", 400, "m") == {"policy": "", "rule": 0, "code": "c", "status": 400, "message": "m", "action": "block"}
}

test_labels_and_join if {
	operation_label({"operation": "*"}) == "requests"
	operation_label({}) == "requests"
	operation_label({"operation": "batch"}) == "operation batch"
	join(["a", 1, true]) == "a, 1, true"
	join([]) == ""
}
