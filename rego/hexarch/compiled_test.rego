package hexarch.lib.compiled

test_defaults_without_config if {
	not present with data.hexarch.config as null
	config == {} with data.hexarch.config as null
	enforcement == "strict" with data.hexarch.config as null
	timezone == "UTC" with data.hexarch.config as null
	default_max_output_tokens == 1024 with data.hexarch.config as null
	default_pricing == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5} with data.hexarch.config as null
	rate_limits == [] with data.hexarch.config as null
}

test_malformed_values_fall_back if {
	c := {"enforcement": "off", "timezone": 5, "default_max_output_tokens": -3, "rate_limits": {"id": "x"}}
	enforcement == "strict" with data.hexarch.config as c
	timezone == "UTC" with data.hexarch.config as c
	default_max_output_tokens == 1024 with data.hexarch.config as c
	rate_limits == [] with data.hexarch.config as c
	config == {} with data.hexarch.config as "oops"
}

test_configured_values if {
	c := {"enforcement": "monitor", "timezone": "Europe/Berlin", "default_max_output_tokens": 256}
	present with data.hexarch.config as c
	enforcement == "monitor" with data.hexarch.config as c
	timezone == "Europe/Berlin" with data.hexarch.config as c
	default_max_output_tokens == 256 with data.hexarch.config as c
}
