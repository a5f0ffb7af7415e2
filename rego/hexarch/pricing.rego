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
pricing := {
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
