# METADATA
# title: Pricing
# description: >-
#   The price of the requested model: the first pricing entry whose glob matches input.model,
#   else the default pricing.
package hexarch.lib.pricing

import data.hexarch.lib.compiled
import data.hexarch.lib.request

# METADATA
# title: Pricing
# description: input_per_million_usd and output_per_million_usd for the requested model.
pricing := price.usd if {
	price := nanos
} else := {
	"input_per_million_usd": entry.input_per_million_usd,
	"output_per_million_usd": entry.output_per_million_usd,
} if {
	# Only a string model is priced by name; glob.match is only given strings, so the decision
	# also holds under opa eval --strict-builtin-errors.
	model := request.model
	entry := [entry |
		some entry in data.hexarch.config.pricing
		is_string(entry.model)
		glob.match(entry.model, null, model)
		is_number(entry.input_per_million_usd)
		is_number(entry.output_per_million_usd)
	][0]
} else := compiled.default_pricing

# METADATA
# title: Price in whole units
# description: >-
#   From the compiler's index (compiler/precompute.py): the first listed price whose glob matches
#   the model, else the default, as {"usd": pricing, "i": input and "o": output USD per million
#   tokens times "d", a power of ten that makes both whole}. Undefined without an index.
nanos := price if {
	# A model the policy names literally: the compiler found its price (one lookup, no glob).
	price := data.hexarch.config.index.exact_prices[input.model]
} else := [price |
	some price in data.hexarch.config.index.prices
	glob.match(price.model, null, request.model)
][0] if {
	is_string(input.model)
} else := data.hexarch.config.index.default_price
