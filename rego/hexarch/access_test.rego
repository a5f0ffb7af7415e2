# METADATA
# title: Tests of access control
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.access_test

import data.hexarch.lib.access

_rule := {
	"policy": "access_control", "rule": 0, "resource": "stats", "operation": "*",
	"users": ["ops-bot"], "roles": ["admin"], "action": "block",
}

_messages(rule, doc) := messages if {
	messages := [f.message | some f in access.findings] with data.hexarch.config as {"access_rules": [rule]}
		with input as doc
}

test_listed_user_is_permitted if {
	_messages(_rule, {"resources": ["stats"], "principal": {"id": "ops-bot"}}) == []
}

test_listed_role_is_permitted if {
	_messages(_rule, {"resources": ["stats"], "principal": {"id": "carol", "roles": ["dev", "admin"]}}) == []
}

test_other_principal_is_denied if {
	fs := access.findings with data.hexarch.config as {"access_rules": [_rule]}
		with input as {"resources": ["stats"], "principal": {"id": "alice", "roles": ["dev"]}}
	fs == {{
		"policy": "access_control", "rule": 0, "code": "access_denied", "status": 403, "action": "block",
		"message": "principal \"alice\" may not use resource stats",
	}}
}

test_missing_principal_is_denied if {
	_messages(_rule, {"resources": ["stats"]}) == ["an unidentified principal may not use resource stats"]
	_messages(_rule, {"resources": ["stats"], "principal": {"id": "", "roles": "admin"}}) != []
}

test_other_resources_are_not_restricted if {
	_messages(_rule, {"resources": ["tinyllama", "*"], "principal": {"id": "alice"}}) == []
}

test_missing_resources_apply_the_rule if {
	_messages(_rule, {"principal": {"id": "alice"}}) != []
}

test_operation_scoped_rule if {
	r := object.union(_rule, {"operation": "delete"})
	_messages(r, {"resources": ["stats"], "operation": "read", "principal": {"id": "alice"}}) == []
	_messages(r, {"resources": ["stats"], "operation": "delete", "principal": {"id": "alice"}}) == ["principal \"alice\" may not use operation delete on resource stats"]
}

test_self_admits_the_owner_of_the_resource if {
	r := object.union(_rule, {"users": [], "roles": [], "self": true})
	_messages(r, {"resources": ["stats"], "principal": {"id": "alice"}, "resource_owner": "alice"}) == []
	_messages(r, {"resources": ["stats"], "principal": {"id": "alice"}, "resource_owner": "bob"}) != []
}

test_self_fails_closed_without_an_owner if {
	r := object.union(_rule, {"users": [], "roles": [], "self": true})
	_messages(r, {"resources": ["stats"], "principal": {"id": "alice"}}) != []
	_messages(r, {"resources": ["stats"], "principal": {"id": "alice"}, "resource_owner": null}) != []
	_messages(r, {"resources": ["stats"], "principal": {"id": ""}, "resource_owner": ""}) != []
	_messages(r, {"resources": ["stats"], "principal": {}, "resource_owner": ""}) != []
}

test_self_is_not_a_role if {
	_messages(_rule, {"resources": ["stats"], "principal": {"id": "alice", "roles": ["self"]}, "resource_owner": "alice"}) != []
}
