# METADATA
# title: Test fixtures
# description: >-
#   The example compiled configuration of docs/architecture.md, an example input and clock helpers
#   shared by the library's tests. Only tests read this package.
package hexarch.lib.fixtures

# METADATA
# title: Example configuration
# description: The compiled data document of docs/architecture.md, with the tph entry spelled out.
config := {
	"enforcement": "strict",
	"timezone": "UTC",
	"default_max_output_tokens": 1024,
	"pricing": [{"model": "tinyllama*", "input_per_million_usd": 0.1, "output_per_million_usd": 0.2}],
	"default_pricing": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5},
	"rate_limits": [{
		"id": "rate_limit/0/rpm", "policy": "rate_limit", "rule": 0, "resource": "tinyllama",
		"window_seconds": 60, "limit": 30, "action": "block", "warn_at": null, "scope": "global",
	}],
	"token_limits": [
		{
			"id": "token_management/0/request", "policy": "token_management", "rule": 0,
			"resource": "tinyllama", "window_seconds": 0, "limit": 128, "action": "block",
			"warn_at": 0.8, "scope": "global",
		},
		{
			"id": "token_management/0/tph", "policy": "token_management", "rule": 0,
			"resource": "tinyllama", "window_seconds": 3600, "limit": 10000, "action": "block",
			"warn_at": 0.8, "scope": "global",
		},
	],
	"budgets": [{
		"id": "api_budget/0/month", "policy": "api_budget", "rule": 0, "resource": "tinyllama",
		"period": "month", "limit": 100000000, "action": "block", "warn_at": 0.75, "scope": "global",
	}],
	"param_bounds": [{
		"policy": "quality_control", "rule": 0, "parameter": "temperature", "min": 0.0, "max": 1.0,
		"max_length": null, "allowed_values": null, "resource": "*", "operation": "*", "action": "block",
	}],
	"model_rules": [{
		"policy": "model_selection", "rule": 0, "patterns": ["tinyllama", "tinyllama:*"],
		"allowed": true, "resource": "*", "action": "block",
	}],
	"time_windows": [{
		"policy": "time_based", "rule": 0, "operation": "batch", "resource": "*",
		"allowed_hours": [[1320, 360]], "forbidden_hours": [], "allowed_days": [], "forbidden_days": [],
		"action": "block",
	}],
	"access_rules": [{
		"policy": "access_control", "rule": 0, "resource": "stats", "operation": "*",
		"users": ["ops-bot"], "roles": ["admin"], "action": "block",
	}],
	"confirmations": [{
		"policy": "confirmations", "rule": 0, "operation": "delete", "resource": "*",
		"resource_types": ["conversation", "model"], "action": "require_confirmation",
	}],
	"features": [{
		"policy": "features", "rule": 1, "feature": "vision", "enabled": false, "requires_approval": false,
		"approver_users": [], "approver_roles": ["admin"], "action": "block",
	}],
}

# METADATA
# title: Example input
# description: The input document of DESIGN.md (a well-behaved chat request).
input_doc := {
	"request": {"id": "req-1", "method": "POST", "path": "/v1/chat/completions", "api": "openai.chat"},
	"principal": {"id": "alice", "team": "ml", "roles": ["dev"], "tier": "pro", "authenticated": true},
	"resources": ["tinyllama_chat", "tinyllama", "*"],
	"operation": "chat", "resource_type": null, "feature": null, "confirmed": false,
	"model": "tinyllama",
	"params": {"temperature": 0.7, "max_tokens": 128, "num_predict": 128, "system": "be brief", "stream": false},
	"estimate": {"prompt_tokens": 42, "max_output_tokens": 128},
}

# METADATA
# title: Clock
# description: time.now_ns() value for a weekday (0 = Monday 2024-01-01) at hour:minute UTC.
at(day, hour, minute) := ((1704067200 + ((((day * 1440) + (hour * 60)) + minute) * 60)) * 1000) * 1000000
