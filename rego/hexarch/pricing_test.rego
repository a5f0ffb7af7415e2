# METADATA
# title: Tests of pricing
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.pricing_test

import data.hexarch.lib.pricing

_config := {
	"pricing": [
		{"model": "tinyllama*", "input_per_million_usd": 0.1, "output_per_million_usd": 0.2},
		{"model": "*", "input_per_million_usd": 1, "output_per_million_usd": 2},
	],
	"default_pricing": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5},
}

test_first_matching_entry_wins if {
	p := pricing.pricing with data.hexarch.config as _config with input as {"model": "tinyllama:1.1b"}
	p == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}
	q := pricing.pricing with data.hexarch.config as _config with input as {"model": "gpt-4o"}
	q == {"input_per_million_usd": 1, "output_per_million_usd": 2}
}

test_default_pricing_without_match if {
	p := pricing.pricing with data.hexarch.config as {"pricing": [_config.pricing[0]], "default_pricing": _config.default_pricing}
		with input as {"model": "phi3"}
	p == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
	q := pricing.pricing with data.hexarch.config as _config with input as {}
	q == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
}

test_builtin_default_without_config if {
	p := pricing.pricing with data.hexarch.config as {"default_pricing": {"input_per_million_usd": "free"}} with input as {"model": "x"}
	p == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
	q := pricing.pricing with data.hexarch.config as {"default_pricing": {"input_per_million_usd": 2, "output_per_million_usd": 3, "note": "x"}}
		with input as {"model": "x"}
	q == {"input_per_million_usd": 2, "output_per_million_usd": 3}
}

_indexed := object.union(_config, {"index": {
	"prices": [{"model": "tinyllama*", "usd": {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}, "i": 1, "o": 2, "d": 10}],
	"default_price": {"usd": {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}, "i": 5, "o": 15, "d": 10},
	"exact_prices": {"tinyllama": {"usd": {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}, "i": 1, "o": 2, "d": 10, "exact": true}},
}})

test_index_prices_by_glob if {
	p := pricing.pricing with data.hexarch.config as _indexed with input as {"model": "tinyllama:1.1b"}
	p == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}
	n := pricing.nanos with data.hexarch.config as _indexed with input as {"model": "tinyllama:1.1b"}
	[n.i, n.o, n.d] == [1, 2, 10]
	not n.exact
}

test_index_prices_a_literal_name_by_lookup if {
	n := pricing.nanos with data.hexarch.config as _indexed with input as {"model": "tinyllama"}
	n.exact
	p := pricing.pricing with data.hexarch.config as _indexed with input as {"model": "tinyllama"}
	p == {"input_per_million_usd": 0.1, "output_per_million_usd": 0.2}
}

test_index_default_price if {
	p := pricing.pricing with data.hexarch.config as _indexed with input as {"model": "gpt-4o"}
	p == {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
	q := pricing.pricing with data.hexarch.config as _indexed with input as {"model": 5}
	q == p
}
