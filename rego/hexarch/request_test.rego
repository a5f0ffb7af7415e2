# METADATA
# title: Tests of the typed request view
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.request_test

import data.hexarch.lib.request

test_wrong_types_count_as_missing if {
	doc := {
		"resources": "tinyllama", "operation": 3, "confirmed": "true", "model": ["x"], "resource_type": "",
		"feature": false, "principal": {"id": "", "team": 7, "roles": "admin"}, "params": [],
		"estimate": {"prompt_tokens": "many", "max_output_tokens": null},
	}
	not request.resources_known with input as doc
	not request.operation_known with input as doc
	not request.confirmed with input as doc
	not request.model with input as doc
	not request.resource_type with input as doc
	not request.resource_owner with input as doc
	not request.resource_owner with input as {"resource_owner": 7}
	not request.feature with input as doc
	not request.principal_id with input as doc
	request.principal_roles == set() with input as doc
	request.principal_subject == "anonymous" with input as doc
	request.team_subject == "anonymous" with input as doc
	request.params == {} with input as doc
	request.prompt_tokens == 0 with input as doc
	not request.max_output_tokens with input as doc
}

test_well_typed_values if {
	doc := {
		"resources": ["tinyllama", 5], "operation": "chat", "confirmed": true, "model": "tinyllama",
		"resource_type": "conversation", "feature": "vision",
		"principal": {"id": "alice", "team": "ml", "roles": ["admin", 1]}, "params": {"a": 1},
		"estimate": {"prompt_tokens": 41.5, "max_output_tokens": 127.2},
	}
	request.resource_set == {"tinyllama"} with input as doc
	request.operation == "chat" with input as doc
	request.confirmed with input as doc
	request.model == "tinyllama" with input as doc
	request.resource_type == "conversation" with input as doc
	request.resource_owner == "alice" with input as object.union(doc, {"resource_owner": "alice"})
	request.feature == "vision" with input as doc
	request.principal_subject == "alice" with input as doc
	request.team_subject == "ml" with input as doc
	request.principal_roles == {"admin"} with input as doc
	request.params == {"a": 1} with input as doc
	request.prompt_tokens == 42 with input as doc
	request.max_output_tokens == 128 with input as doc
}
