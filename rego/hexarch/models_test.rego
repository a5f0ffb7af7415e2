# METADATA
# title: Tests of model allow and deny lists
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.models_test

import data.hexarch.lib.models

_rule(fields) := object.union(
	{"policy": "model_selection", "rule": 0, "patterns": ["tinyllama", "tinyllama:*"], "allowed": true, "resource": "*", "action": "block"},
	fields,
)

_codes(rules, doc) := codes if {
	codes := [[f.policy, f.rule, f.code] | some f in models.findings] with data.hexarch.config as {"model_rules": rules}
		with input as doc
}

test_allow_list_match_passes if {
	_codes([_rule({})], {"model": "tinyllama"}) == []
	_codes([_rule({})], {"model": "tinyllama:1.1b"}) == []
}

test_allow_list_miss_is_denied if {
	fs := models.findings with data.hexarch.config as {"model_rules": [_rule({})]} with input as {"model": "gpt-4o"}
	fs == {{
		"policy": "model_selection", "rule": 0, "code": "model_not_allowed", "status": 403, "action": "block",
		"message": "model \"gpt-4o\" is not allowed by policy model_selection (allowed: tinyllama, tinyllama:*)",
	}}
}

test_glob_has_no_delimiters_and_question_mark_is_one_char if {
	r := _rule({"patterns": ["llama-?b", "org/*"]})
	_codes([r], {"model": "llama-7b"}) == []
	_codes([r], {"model": "org/team/model.v2"}) == []
	_codes([r], {"model": "llama-13b"}) == [["model_selection", 0, "model_not_allowed"]]
}

test_missing_model_fails_allow_list if {
	fs := models.findings with data.hexarch.config as {"model_rules": [_rule({})]} with input as {}
	[f.message | some f in fs] == ["the request names no model; policy model_selection allows only: tinyllama, tinyllama:*"]
	_codes([_rule({})], {"model": 42}) == [["model_selection", 0, "model_not_allowed"]]
}

test_allow_rules_of_one_policy_are_a_union if {
	rules := [_rule({"rule": 2, "patterns": ["phi*"]}), _rule({"rule": 1, "patterns": ["tinyllama"]})]
	_codes(rules, {"model": "phi3"}) == []
	_codes(rules, {"model": "gpt"}) == [["model_selection", 1, "model_not_allowed"]]
}

test_each_policy_must_allow if {
	rules := [_rule({"policy": "a", "patterns": ["*"]}), _rule({"policy": "b", "patterns": ["tiny*"]})]
	_codes(rules, {"model": "tinyllama"}) == []
	_codes(rules, {"model": "phi3"}) == [["b", 0, "model_not_allowed"]]
}

test_deny_list if {
	r := _rule({"policy": "no_gpt", "patterns": ["gpt-*"], "allowed": false})
	_codes([r], {"model": "tinyllama"}) == []
	fs := models.findings with data.hexarch.config as {"model_rules": [r]} with input as {"model": "gpt-4o"}
	[f.message | some f in fs] == ["model \"gpt-4o\" is not allowed by policy no_gpt (denied: gpt-*)"]
}

test_deny_list_fails_closed_without_model if {
	r := _rule({"policy": "no_gpt", "patterns": "gpt-*", "allowed": false})
	fs := models.findings with data.hexarch.config as {"model_rules": [r]} with input as {}
	[f.message | some f in fs] == ["the request names no model; policy no_gpt denies: gpt-*"]
}

test_rules_for_other_resources_do_not_apply if {
	r := _rule({"resource": "premium"})
	_codes([r], {"model": "gpt", "resources": ["tinyllama", "*"]}) == []
	_codes([r], {"model": "gpt", "resources": ["premium"]}) == [["model_selection", 0, "model_not_allowed"]]
	_codes([r], {"model": "gpt"}) == [["model_selection", 0, "model_not_allowed"]]
}

test_allow_action_rules_are_ignored if {
	_codes([_rule({"action": "allow"})], {"model": "gpt"}) == []
}

test_malformed_patterns_match_nothing if {
	_codes([_rule({"patterns": 7})], {"model": "gpt"}) == [["model_selection", 0, "model_not_allowed"]]
}

test_deny_pattern_opa_cannot_parse_fails_closed if {
	r := _rule({"policy": "no_bad", "patterns": ["[a-]x"], "allowed": false})
	_codes([r], {"model": "ax"}) == [["no_bad", 0, "model_not_allowed"]]
	_codes([r], {"model": "tinyllama"}) == [["no_bad", 0, "model_not_allowed"]]
	_codes([_rule({"policy": "no_gpt", "patterns": ["gpt-*", "o[1-3]"], "allowed": false})], {"model": "tinyllama"}) == []
}

test_the_strictest_allow_rule_speaks_for_the_policy if {
	rules := [
		{"policy": "m", "rule": 0, "allowed": true, "patterns": ["tiny*"], "action": "warn", "resource": "*"},
		{"policy": "m", "rule": 1, "allowed": true, "patterns": ["gpt-*"], "action": "block", "resource": "*"},
		{"policy": "m", "rule": 2, "allowed": true, "patterns": ["o1*"], "action": "require_confirmation", "resource": "*"},
	]
	fs := models.findings with data.hexarch.config as {"model_rules": rules} with input as {"model": "mistral"}
	{[f.rule, f.action] | some f in fs} == {[1, "block"]}
	nothing_blocks := models.findings with data.hexarch.config as {"model_rules": [rules[0], rules[2]]}
		with input as {"model": "mistral"}
	{[f.rule, f.action] | some f in nothing_blocks} == {[2, "require_confirmation"]}
	models.findings with data.hexarch.config as {"model_rules": rules} with input as {"model": "gpt-4"} == set()
}

# The compiler's index: a literal name it found allowed by every policy needs no glob.match (the
# index below is deliberately wrong about "gpt-4o", to show that the lookup decides).
test_index_allows_a_listed_literal_name_by_lookup if {
	config := {"model_rules": [_rule({})], "index": {"any": {"limits": [], "models": {"model_selection": ["tinyllama"]}, "models_ok": {"gpt-4o": true}}}}
	fs := models.findings with data.hexarch.config as config with input as {"model": "gpt-4o", "resources": ["x", "*"]}
	fs == set()
	gs := models.findings with data.hexarch.config as config with input as {"model": "mistral", "resources": ["x", "*"]}
	[g.code | some g in gs] == ["model_not_allowed"]
}
