# METADATA
# title: Tests of feature flags
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.features_test

import data.hexarch.lib.features

_rule(fields) := object.union(
	{
		"policy": "features", "rule": 1, "feature": "vision", "enabled": true, "requires_approval": false,
		"approver_users": ["lead"], "approver_roles": ["admin"], "action": "block",
	},
	fields,
)

_codes(rule, doc) := codes if {
	codes := {f.code | some f in features.findings} with data.hexarch.config as {"features": [rule]}
		with input as doc
}

test_disabled_feature if {
	fs := features.findings with data.hexarch.config as {"features": [_rule({"enabled": false})]}
		with input as {"feature": "vision"}
	fs == {{
		"policy": "features", "rule": 1, "code": "feature_disabled", "status": 403, "action": "block",
		"message": "feature \"vision\" is disabled",
	}}
}

test_enabled_must_be_true if {
	_codes(object.remove(_rule({}), ["enabled"]), {"feature": "vision"}) == {"feature_disabled"}
}

test_enabled_feature_passes if {
	_codes(_rule({}), {"feature": "vision"}) == set()
}

test_other_or_no_feature_passes if {
	_codes(_rule({"enabled": false}), {"feature": "audio"}) == set()
	_codes(_rule({"enabled": false}), {"feature": null}) == set()
}

test_unstated_feature_meets_every_flag if {
	_codes(_rule({"enabled": false}), {}) == {"feature_disabled"}
	_codes(_rule({"requires_approval": true}), {"principal": {"id": "bob"}}) == {"feature_requires_approval"}
	_codes(_rule({"requires_approval": true}), {"principal": {"id": "lead"}}) == set()
	_codes(_rule({}), {}) == set()
}

test_approval_required if {
	r := _rule({"requires_approval": true})
	fs := features.findings with data.hexarch.config as {"features": [r]}
		with input as {"feature": "vision", "principal": {"id": "alice", "roles": ["dev"]}}
	[f.message | some f in fs] == ["feature \"vision\" requires approval; principal \"alice\" is not an approver"]
	_codes(r, {"feature": "vision"}) == {"feature_requires_approval"}
	fs2 := features.findings with data.hexarch.config as {"features": [r]} with input as {"feature": "vision"}
	[f.message | some f in fs2] == ["feature \"vision\" requires approval; an unidentified principal is not an approver"]
}

test_approvers_pass if {
	r := _rule({"requires_approval": true})
	_codes(r, {"feature": "vision", "principal": {"id": "lead"}}) == set()
	_codes(r, {"feature": "vision", "principal": {"id": "bob", "roles": ["admin"]}}) == set()
}

test_disabled_and_unapproved_report_both if {
	_codes(_rule({"enabled": false, "requires_approval": true}), {"feature": "vision"}) == {"feature_disabled", "feature_requires_approval"}
}
