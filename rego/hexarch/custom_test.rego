# METADATA
# title: Tests of custom policy violations
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.custom_test

import data.hexarch.lib.custom

test_no_custom_policies if {
	count(custom.violations) == 0 with data.hexarch.custom as {}
}

test_object_entries_keep_their_fields if {
	vs := custom.violations with data.hexarch.custom as {"pii": {"violations": {{
		"policy": "privacy", "rule": 3, "code": "pii_detected",
		"message": "prompt contains a phone number", "status": 400,
	}}}}
	vs == {{
		"policy": "privacy", "rule": 3, "code": "pii_detected", "action": "block",
		"message": "prompt contains a phone number", "status": 400,
	}}
}

test_entries_get_defaults if {
	vs := custom.violations with data.hexarch.custom as {
		"a": {"violations": [{"reason": "x"}]},
		"b": {"violations": {"plain text"}},
		"c": {"other_rule": true},
	}
	vs == {
		{
			"policy": "a", "rule": 0, "code": "custom_violation", "action": "block",
			"message": "{\"reason\": \"x\"}", "status": 403,
		},
		{
			"policy": "b", "rule": 0, "code": "custom_violation", "action": "block",
			"message": "plain text", "status": 403,
		},
	}
}
