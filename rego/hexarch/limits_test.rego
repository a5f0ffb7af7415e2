# METADATA
# title: Tests of limits and their costs
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.limits_test

import data.hexarch.lib.fixtures
import data.hexarch.lib.limits

_token(id, window, limit, fields) := object.union(
	{
		"id": id, "policy": "token_management", "rule": 0, "resource": "tinyllama",
		"window_seconds": window, "limit": limit, "action": "block", "warn_at": null, "scope": "global",
	},
	fields,
)

_by_id(config, doc) := result if {
	items := limits.limits with data.hexarch.config as config with input as doc
	result := {item.id: item | some item in items}
}

test_example_limits if {
	ls := limits.limits with data.hexarch.config as fixtures.config with input as fixtures.input_doc
	ls == [
		{
			"id": "api_budget/0/month", "policy": "api_budget", "unit": "usd_micros", "period": "month",
			"limit": 100000000, "cost": 30, "warn_at": 0.75, "action": "block",
			"scope": "global", "subject": "tinyllama",
		},
		{
			"id": "rate_limit/0/rpm", "policy": "rate_limit", "unit": "requests", "window_seconds": 60,
			"limit": 30, "cost": 1, "warn_at": null, "action": "block",
			"scope": "global", "subject": "tinyllama",
		},
		{
			"id": "token_management/0/request", "policy": "token_management", "unit": "tokens",
			"window_seconds": 0, "limit": 128, "cost": 128, "warn_at": 0.8, "action": "block",
			"scope": "global", "subject": "tinyllama",
		},
		{
			"id": "token_management/0/tph", "policy": "token_management", "unit": "tokens",
			"window_seconds": 3600, "limit": 10000, "cost": 170, "warn_at": 0.8, "action": "block",
			"scope": "global", "subject": "tinyllama",
		},
	]
}

test_budget_cost_is_rounded_up_micro_usd if {
	# 1000 * 0.5 + 333 * 1.5 = 999.5 -> 1000 micro-USD at the default price.
	doc := {"model": "gpt", "estimate": {"prompt_tokens": 1000, "max_output_tokens": 333}}
	ls := _by_id(fixtures.config, doc)
	ls["api_budget/0/month"].cost == 1000
	ls["token_management/0/tph"].cost == 1333
	ls["token_management/0/request"].cost == 333
}

test_reservation_falls_back_to_smallest_per_request_limit if {
	config := {"token_limits": [
		_token("a/0/request", 0, 256, {}),
		_token("b/0/request", 0, 64, {"policy": "b"}),
		_token("c/0/request", 0, 8, {"policy": "c", "resource": "other"}),
		_token("d/0/request", 0, 4, {"policy": "d", "action": "allow"}),
		_token("a/0/tph", 3600, 10000, {}),
	]}
	ls := _by_id(config, {"resources": ["tinyllama"], "estimate": {"prompt_tokens": 10}})
	ls["a/0/tph"].cost == 74
	ls["a/0/request"].cost == 64
	object.keys(ls) == {"a/0/request", "b/0/request", "a/0/tph"}
}

test_reservation_falls_back_to_default if {
	config := {"default_max_output_tokens": 500, "token_limits": [_token("a/0/tph", 3600, 10000, {})]}
	ls := _by_id(config, {"estimate": {"prompt_tokens": 10.2, "max_output_tokens": -1}})
	ls["a/0/tph"].cost == 511
	ls2 := _by_id({"token_limits": [_token("a/0/tph", 3600, 10000, {})]}, {})
	ls2["a/0/tph"].cost == 1024
}

test_scopes_pick_the_subject if {
	config := {"rate_limits": [
		_token("g/0/rpm", 60, 1, {"scope": "global"}),
		_token("p/0/rpm", 60, 1, {"scope": "principal"}),
		_token("t/0/rpm", 60, 1, {"scope": "team"}),
		_token("x/0/rpm", 60, 1, {"scope": "galaxy"}),
	]}
	ls := _by_id(config, {"principal": {"id": "alice", "team": "ml"}})
	[ls[id].subject | some id in ["g/0/rpm", "p/0/rpm", "t/0/rpm", "x/0/rpm"]] == ["tinyllama", "alice", "ml", "tinyllama"]
	ls["x/0/rpm"].scope == "global"
	anon := _by_id(config, {})
	[anon[id].subject | some id in ["p/0/rpm", "t/0/rpm"]] == ["anonymous", "anonymous"]
}

test_actions if {
	config := {"rate_limits": [
		_token("b/0/rpm", 60, 1, {}),
		_token("w/0/rpm", 60, 1, {"action": "warn"}),
		_token("a/0/rpm", 60, 1, {"action": "allow"}),
	]}
	ls := _by_id(config, {})
	{id: item.action | some id, item in ls} == {"b/0/rpm": "block", "w/0/rpm": "warn"}
	ms := _by_id(object.union(config, {"enforcement": "monitor"}), {})
	{id: item.action | some id, item in ms} == {"b/0/rpm": "warn", "w/0/rpm": "warn"}
}

test_other_resources_do_not_apply if {
	ls := _by_id(fixtures.config, {"resources": ["premium", "*"]})
	ls == {}
}

# The compiler's index (compiler/precompute.py): templates in order, each an item with every
# fixed field (a global limit's subject, a request limit's cost) and the key of its patch.
_index := {
	"by_resource": {"tinyllama": {
		"limits": [
			{
				"item": {"id": "b/0/month", "policy": "b", "unit": "usd_micros", "period": "month", "scope": "global", "subject": "tinyllama", "limit": 9, "warn_at": null, "action": "block"},
				"k": "usd",
			},
			{
				"item": {"id": "r/0/rpm", "policy": "r", "unit": "requests", "window_seconds": 60, "scope": "principal", "limit": 5, "cost": 1, "warn_at": null, "action": "warn"},
				"k": "principal:",
			},
			{
				"item": {"id": "t/0/request", "policy": "t", "unit": "tokens", "window_seconds": 0, "scope": "team", "limit": 50, "warn_at": null, "action": "block"},
				"k": "team:out",
			},
			{
				"item": {"id": "t/0/tph", "policy": "t", "unit": "tokens", "window_seconds": 3600, "scope": "global", "subject": "*", "limit": 900, "warn_at": null, "action": "block"},
				"k": "tokens",
			},
		],
		"reservation": 50,
		"scoped": true,
	}},
	"any": {
		"limits": [{
			"item": {"id": "t/0/tph", "policy": "t", "unit": "tokens", "window_seconds": 3600, "scope": "global", "subject": "*", "limit": 900, "warn_at": null, "action": "block"},
			"k": "tokens",
		}],
		"scoped": false,
	},
}

_doc(resources, estimate) := object.union(
	object.remove(fixtures.input_doc, ["resources", "estimate"]),
	{"resources": resources, "estimate": estimate},
)

_indexed := object.union(fixtures.config, {"index": _index})

test_index_fills_subjects_and_costs if {
	doc := _doc(["tinyllama"], {"prompt_tokens": 10})
	ls := limits.limits with data.hexarch.config as _indexed with input as doc
	[l.id | some l in ls] == ["b/0/month", "r/0/rpm", "t/0/request", "t/0/tph"]
	[l.subject | some l in ls] == ["tinyllama", doc.principal.id, doc.principal.team, "*"]

	# No stated output: the index's reservation (50) is the output, the prompt adds 10.
	[l.cost | some l in ls] == [ls[0].cost, 1, 50, 60]
	ls[1].action == "warn"
}

test_index_unnamed_resource_takes_any if {
	doc := _doc(["other"], {"prompt_tokens": 1, "max_output_tokens": 2})
	ls := limits.limits with data.hexarch.config as _indexed with input as doc
	ls == [{
		"id": "t/0/tph", "policy": "t", "unit": "tokens", "window_seconds": 3600, "scope": "global",
		"limit": 900, "warn_at": null, "action": "block", "subject": "*", "cost": 3,
	}]
}

test_index_without_reservation_uses_default if {
	doc := _doc([], {})
	r := limits.output_reservation with data.hexarch.config as _indexed with input as doc
	r == 1024
}

test_scoped_patches_only_for_scoped_entries if {
	costs := {"": {}, "out": {"cost": 2}}
	limits.scoped_patches({"scoped": false}, costs) == {}
	p := limits.scoped_patches({"scoped": true}, costs) with input as fixtures.input_doc

	p["principal:"] == {"subject": "alice"}
	p["team:out"] == {"subject": "ml", "cost": 2}

	# An entry without the flag gets every patch: a template is never dropped for want of one.
	limits.scoped_patches({}, costs) == p with input as fixtures.input_doc
}

test_index_not_used_for_two_resources if {
	doc := _doc(["tinyllama", "other"], {})
	fast := limits.limits with data.hexarch.config as _indexed with input as doc
	generic := limits.limits with data.hexarch.config as fixtures.config with input as doc
	fast == generic
}
