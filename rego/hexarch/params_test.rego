# METADATA
# title: Tests of parameter bounds
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.params_test

import data.hexarch.lib.fixtures
import data.hexarch.lib.params

_bound(fields) := object.union(
	{
		"policy": "quality_control", "rule": 0, "parameter": "temperature", "min": null, "max": null,
		"max_length": null, "allowed_values": null, "resource": "*", "operation": "*", "action": "block",
	},
	fields,
)

_messages(bounds, values) := messages if {
	messages := {f.message | some f in params.findings} with data.hexarch.config as {"param_bounds": bounds}
		with input as object.union(fixtures.input_doc, {"params": values})
}

test_value_inside_bounds_passes if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": 0.7}) == set()
}

test_bounds_are_inclusive if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": 1}) == set()
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": 0}) == set()
}

test_above_maximum if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": 1.5}) == {"temperature 1.5 is above the maximum 1.0"}
}

test_below_minimum if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": -0.5}) == {"temperature -0.5 is below the minimum 0.0"}
}

test_integer_bounds_read_as_integers if {
	b := _bound({"parameter": "max_tokens", "min": 1, "max": 2048})
	_messages([b], {"max_tokens": 4096}) == {"max_tokens 4096 is above the maximum 2048"}
	_messages([b], {"max_tokens": 0}) == {"max_tokens 0 is below the minimum 1"}
}

test_wrong_type_is_a_violation if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"temperature": "hot"}) == {"temperature must be a number, got string"}
	_messages([_bound({"max": 1.0})], {"temperature": null}) == {"temperature must be a number, got null"}
	_messages([_bound({"min": 0})], {"temperature": true}) == {"temperature must be a number, got boolean"}
}

test_absent_parameter_is_not_checked if {
	_messages([_bound({"min": 0.0, "max": 1.0})], {"top_p": 3}) == set()
	m := {f | some f in params.findings} with data.hexarch.config as {"param_bounds": [_bound({"max": 1})]}
		with input as {}
	m == set()
}

test_max_length_counts_characters_and_items if {
	b := _bound({"parameter": "system", "max_length": 3})
	_messages([b], {"system": "héé"}) == set()
	_messages([b], {"system": "abcd"}) == {"system is 4 characters long, above the maximum length 3"}
	_messages([b], {"system": ["a", "b"]}) == set()
	_messages([b], {"system": [1, 2, 3, 4]}) == {"system has 4 items, above the maximum length 3"}
	_messages([b], {"system": 12}) == {"system must be a string or a list, got number"}
}

test_allowed_values if {
	b := _bound({"parameter": "format", "allowed_values": ["json", "text"]})
	_messages([b], {"format": "json"}) == set()
	_messages([b], {"format": "xml"}) == {"format \"xml\" is not one of the allowed values \"json\", \"text\""}
	_messages([_bound({"parameter": "n", "allowed_values": [1, 2]})], {"n": 3}) == {"n 3 is not one of the allowed values 1, 2"}
}

test_long_values_are_cut_in_messages if {
	long := concat("", [x | some _ in numbers.range(1, 70); x := "a"])
	msg := _messages([_bound({"parameter": "mode", "allowed_values": ["short"]})], {"mode": long})
	msg == {sprintf("mode \"%v\"... is not one of the allowed values \"short\"", [substring(long, 0, 64)])}
}

test_resource_and_operation_scope_the_bound if {
	b := _bound({"max": 1.0, "resource": "other_model"})
	_messages([b], {"temperature": 2}) == set()
	c := _bound({"max": 1.0, "operation": "embed"})
	_messages([c], {"temperature": 2}) == set()
}

test_finding_shape if {
	fs := params.findings with data.hexarch.config as {"param_bounds": [_bound({"max": 1.0, "action": "warn"})]}
		with input as {"params": {"temperature": 2}}
	fs == {{
		"policy": "quality_control", "rule": 0, "code": "invalid_parameter", "status": 400,
		"action": "warn", "message": "temperature 2 is above the maximum 1",
	}}
}

test_allow_action_adds_nothing if {
	_messages([_bound({"max": 1.0, "action": "allow"})], {"temperature": 2}) == set()
}

# The compiler's index (compiler/precompute.py): plain numeric ranges checked inline.
_index_config(params) := {
	"param_bounds": [
		{"policy": "q", "rule": 0, "parameter": "temperature", "min": 0, "max": 1, "max_length": null, "allowed_values": null, "action": "block"},
		{"policy": "q", "rule": 1, "parameter": "system", "min": null, "max": null, "max_length": 3, "allowed_values": null, "action": "block"},
	],
	"index": {"any": {"limits": [], "params": params}},
}

_ranges := {"temperature": [{"lo": 0, "hi": 1}], "system": [{}]}

test_index_range_passes_inline if {
	f := params.findings with data.hexarch.config as _index_config(_ranges)
		with input as {"resources": [], "operation": "chat", "params": {"temperature": 0.5, "top_k": 3}}
	f == set()
}

test_index_failures_take_the_full_checks if {
	f := params.findings with data.hexarch.config as _index_config(_ranges)
		with input as {"resources": [], "operation": "chat", "params": {"temperature": 1.5, "system": "long"}}
	{x.message | some x in f} == {"temperature 1.5 is above the maximum 1.0", "system is 4 characters long, above the maximum length 3"}
}
