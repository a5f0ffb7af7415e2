# METADATA
# title: Tests of the decision document
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.decision_test

import data.hexarch
import data.hexarch.lib.fixtures

_decide(doc, config) := result if {
	result := hexarch.decision with input as doc
		with data.hexarch.config as config
		with data.hexarch.custom as {}
		with time.now_ns as fixtures.at(1, 12, 0)
}

_bad_request := object.union(fixtures.input_doc, {
	"params": {"temperature": 1.5},
	"model": "gpt-4o",
})

test_example_request_is_allowed_with_its_limits if {
	d := _decide(fixtures.input_doc, fixtures.config)
	d.allow == true
	d.enforcement == "strict"
	d.violations == []
	d.warnings == []
	d.pricing == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}
	[l.id | some l in d.limits] == [
		"api_budget/0/month", "rate_limit/0/rpm",
		"token_management/0/request", "token_management/0/tph",
	]
	d.limits[0] == {
		"id": "api_budget/0/month", "policy": "api_budget", "unit": "usd_micros", "period": "month",
		"limit": 100000000, "cost": 30, "warn_at": 0.75, "action": "block",
		"scope": "global", "subject": "tinyllama",
	}
	d.limits[1] == {
		"id": "rate_limit/0/rpm", "policy": "rate_limit", "unit": "requests", "window_seconds": 60,
		"limit": 30, "cost": 1, "warn_at": null, "action": "block",
		"scope": "global", "subject": "tinyllama",
	}
}

test_strict_violations_block_and_are_sorted if {
	d := _decide(_bad_request, fixtures.config)
	d.allow == false
	d.violations == [
		{
			"policy": "model_selection", "rule": 0, "code": "model_not_allowed", "status": 403,
			"action": "block",
			"message": "model \"gpt-4o\" is not allowed by policy model_selection (allowed: tinyllama, tinyllama:*)",
		},
		{
			"policy": "quality_control", "rule": 0, "code": "invalid_parameter", "status": 400,
			"action": "block", "message": "temperature 1.5 is above the maximum 1.0",
		},
	]
	d.warnings == []
}

test_warn_enforcement_moves_violations_to_warnings if {
	d := _decide(_bad_request, object.union(fixtures.config, {"enforcement": "warn"}))
	d.allow == true
	d.enforcement == "warn"
	d.violations == []
	[[w.code, w.action, w.status] | some w in d.warnings] == [
		["model_not_allowed", "warn", 403],
		["invalid_parameter", "warn", 400],
	]
	every l in d.limits {
		l.action == "warn"
	}
}

test_monitor_enforcement_reports_but_allows if {
	d := _decide(_bad_request, object.union(fixtures.config, {"enforcement": "monitor"}))
	d.allow == true
	d.enforcement == "monitor"
	[[v.code, v.action] | some v in d.violations] == [["model_not_allowed", "block"], ["invalid_parameter", "block"]]
	[[w.code, w.action] | some w in d.warnings] == [["model_not_allowed", "warn"], ["invalid_parameter", "warn"]]
	count(d.limits) == 4
	every l in d.limits {
		l.action == "warn"
	}
}

test_unknown_enforcement_is_strict if {
	d := _decide(_bad_request, object.union(fixtures.config, {"enforcement": "relaxed"}))
	d.enforcement == "strict"
	d.allow == false
}

test_empty_input_is_defined_and_fails_closed if {
	d := _decide({}, fixtures.config)
	d.allow == false
	{v.code | some v in d.violations} == {"access_denied", "confirmation_required", "feature_disabled", "model_not_allowed", "time_restricted"}
	count(d.limits) == 4
	d.pricing == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
}

test_non_object_input_is_defined if {
	d := _decide("not an object", fixtures.config)
	d.allow == false
}

test_missing_config_fails_closed if {
	d := hexarch.decision with input as fixtures.input_doc
		with data.hexarch.config as null
		with data.hexarch.custom as {}
	d.allow == false
	[v.code | some v in d.violations] == ["config_missing"]
	d.violations[0].status == 503
	d.limits == []
}

test_empty_config_allows if {
	d := _decide(fixtures.input_doc, {})
	d.allow == true
	d.limits == []
	d.pricing == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
}

test_warning_rules_do_not_block if {
	bounds := [object.union(fixtures.config.param_bounds[0], {"action": "warn"})]
	d := _decide(_bad_request, object.union(fixtures.config, {"param_bounds": bounds, "model_rules": []}))
	d.allow == true
	d.violations == []
	d.warnings == [{
		"policy": "quality_control", "rule": 0, "code": "invalid_parameter", "status": 400,
		"action": "warn", "message": "temperature 1.5 is above the maximum 1.0",
	}]
}

test_custom_violations_block if {
	d := hexarch.decision with input as fixtures.input_doc
		with data.hexarch.config as fixtures.config
		with data.hexarch.custom as {"pii": {"violations": {{"message": "prompt contains an e-mail address"}}}}
		with time.now_ns as fixtures.at(1, 12, 0)
	d.allow == false
	d.violations == [{
		"policy": "pii", "rule": 0, "code": "custom_violation", "status": 403, "action": "block",
		"message": "prompt contains an e-mail address",
	}]
}

# The compiler's index (compiler/precompute.py) lets a quiet request skip the checks it names.
_index := {
	"by_resource": {"tinyllama": {
		"limits": [], "checks": {"delete": true},
		"models": {"model_selection": ["tinyllama", "tinyllama:*"]},
	}},
	"any": {"limits": [], "checks": {"*": true}},
	"features": {"vision": true},
	"prices": [], "default_price": {"usd": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}, "i": 500000000, "o": 1500000000},
}

_indexed := object.union(fixtures.config, {"index": _index})

_single(fields) := object.union(object.remove(fixtures.input_doc, ["resources"]), object.union({"resources": ["tinyllama"]}, fields))

test_index_quiet_request if {
	d := _decide(_single({}), _indexed)
	d.allow == true
	d.violations == []
	hexarch._others_quiet with input as _single({}) with data.hexarch.config as _indexed
}

test_index_still_checks_named_models_features_and_operations if {
	# A model outside the allow-list, a named feature, an operation an index entry names.
	d := _decide(_single({"model": "gpt-4o"}), _indexed)
	[v.code | some v in d.violations] == ["model_not_allowed"]
	e := _decide(_single({"feature": "vision"}), _indexed)
	[v.code | some v in e.violations] == ["feature_disabled"]
	f := _decide(_single({"operation": "delete", "resource_type": "model"}), _indexed)
	[v.code | some v in f.violations] == ["confirmation_required"]
}

# The index compiler/precompute.py writes for fixtures.config (by hand): what the one-body
# branch of the decision reads.
_price := {"model": "tinyllama*", "usd": {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}, "i": 1, "o": 2, "d": 10}

_entry(limits) := {
	"limits": limits, "scoped": false, "checks": {"batch": true, "delete": true},
	"ranges": [{"p": "temperature", "lo": 0.0, "hi": 1.0}], "lengths": [], "unchecked": [],
	"models": {"model_selection": ["tinyllama", "tinyllama:*"]}, "models_ok": {"tinyllama": true},
}

_full_index := {
	"enforcement": "strict",
	"by_resource": {
		"tinyllama": object.union(
			_entry([
				{"item": {"id": "api_budget/0/month", "policy": "api_budget", "unit": "usd_micros", "period": "month", "scope": "global", "subject": "tinyllama", "limit": 100000000, "warn_at": 0.75, "action": "block"}, "k": "usd"},
				{"item": {"id": "rate_limit/0/rpm", "policy": "rate_limit", "unit": "requests", "window_seconds": 60, "scope": "global", "subject": "tinyllama", "limit": 30, "cost": 1, "warn_at": null, "action": "block"}, "k": ""},
				{"item": {"id": "token_management/0/request", "policy": "token_management", "unit": "tokens", "window_seconds": 0, "scope": "global", "subject": "tinyllama", "limit": 128, "warn_at": 0.8, "action": "block"}, "k": "out"},
				{"item": {"id": "token_management/0/tph", "policy": "token_management", "unit": "tokens", "window_seconds": 3600, "scope": "global", "subject": "tinyllama", "limit": 10000, "warn_at": 0.8, "action": "block"}, "k": "tokens"},
			]),
			{"reservation": 128},
		),
		"stats": object.union(_entry([]), {"checks": {"*": true, "batch": true, "delete": true}}),
	},
	"any": _entry([]),
	"features": {"vision": true},
	"prices": [_price], "default_price": {"usd": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}, "i": 5, "o": 15, "d": 10},
	"exact_prices": {"tinyllama": _price},
}

_sidecar(fields) := object.union(object.union(fixtures.input_doc, {"resources": ["tinyllama", "*"]}), fields)

_fast_and_generic(doc) := [fast, generic] if {
	fast := _decide(doc, object.union(fixtures.config, {"index": _full_index}))
	generic := _decide(doc, fixtures.config)
}

test_one_body_decides_the_sidecars_request if {
	[fast, generic] := _fast_and_generic(_sidecar({}))
	fast == generic
	[l.cost | some l in fast.limits] == [30, 1, 128, 170]

	# Only the one-body branch reads index.enforcement.
	marked := object.union(fixtures.config, {"index": object.union(_full_index, {"enforcement": "marked"})})
	_decide(_sidecar({}), marked).enforcement == "marked"
}

test_one_body_hands_every_other_request_to_the_full_rules if {
	variants := [
		{"model": "gpt-4o"}, {"model": "tinyllama:1.1b"}, {"params": {"temperature": 1.5}},
		{"params": {"temperature": "warm"}}, {"params": {}}, {"params": "none"}, {"operation": "delete", "resource_type": "model"},
		{"operation": "batch"}, {"feature": "vision"}, {"feature": "voice"}, {"resources": ["stats", "*"]},
		{"resources": ["elsewhere", "*"]}, {"resources": ["tinyllama"]}, {"estimate": {"prompt_tokens": 2.5}},
		{"estimate": {}}, {"principal": {"id": "", "roles": []}},
	]
	every fields in variants {
		[fast, generic] := _fast_and_generic(_sidecar(fields))
		fast == generic
	}
}
