package hexarch.lib.request

test_wrong_types_count_as_missing if {
	doc := {
		"resources": "tinyllama", "operation": 3, "confirmed": "true", "model": ["x"], "resource_type": "",
		"feature": false, "principal": {"id": "", "team": 7, "roles": "admin"}, "params": [],
		"estimate": {"prompt_tokens": "many", "max_output_tokens": null},
	}
	not resources_known with input as doc
	not operation_known with input as doc
	not confirmed with input as doc
	not model with input as doc
	not resource_type with input as doc
	not feature with input as doc
	not principal_id with input as doc
	principal_roles == set() with input as doc
	principal_subject == "anonymous" with input as doc
	team_subject == "anonymous" with input as doc
	params == {} with input as doc
	prompt_tokens == 0 with input as doc
	not max_output_tokens with input as doc
}

test_well_typed_values if {
	doc := {
		"resources": ["tinyllama", 5], "operation": "chat", "confirmed": true, "model": "tinyllama",
		"resource_type": "conversation", "feature": "vision",
		"principal": {"id": "alice", "team": "ml", "roles": ["admin", 1]}, "params": {"a": 1},
		"estimate": {"prompt_tokens": 41.5, "max_output_tokens": 127.2},
	}
	resource_set == {"tinyllama"} with input as doc
	operation == "chat" with input as doc
	confirmed with input as doc
	model == "tinyllama" with input as doc
	resource_type == "conversation" with input as doc
	feature == "vision" with input as doc
	principal_subject == "alice" with input as doc
	team_subject == "ml" with input as doc
	principal_roles == {"admin"} with input as doc
	params == {"a": 1} with input as doc
	prompt_tokens == 42 with input as doc
	max_output_tokens == 128 with input as doc
}
