# METADATA
# title: Tests of the compiled configuration accessors
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.compiled_test

import data.hexarch.lib.compiled

test_defaults_without_config if {
	not compiled.present with data.hexarch.config as null
	compiled.config == {} with data.hexarch.config as null
	compiled.enforcement == "strict" with data.hexarch.config as null
	compiled.timezone == "UTC" with data.hexarch.config as null
	compiled.default_max_output_tokens == 1024 with data.hexarch.config as null
	compiled.default_pricing == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5} with data.hexarch.config as null
	compiled.rate_limits == [] with data.hexarch.config as null
}

test_malformed_values_fall_back if {
	c := {"enforcement": "off", "timezone": 5, "default_max_output_tokens": -3, "rate_limits": {"id": "x"}}
	compiled.enforcement == "strict" with data.hexarch.config as c
	compiled.timezone == "UTC" with data.hexarch.config as c
	compiled.default_max_output_tokens == 1024 with data.hexarch.config as c
	compiled.rate_limits == [] with data.hexarch.config as c
	compiled.config == {} with data.hexarch.config as "oops"
}

test_configured_values if {
	c := {"enforcement": "monitor", "timezone": "Europe/Berlin", "default_max_output_tokens": 256}
	compiled.present with data.hexarch.config as c
	compiled.enforcement == "monitor" with data.hexarch.config as c
	compiled.timezone == "Europe/Berlin" with data.hexarch.config as c
	compiled.default_max_output_tokens == 256 with data.hexarch.config as c
}
