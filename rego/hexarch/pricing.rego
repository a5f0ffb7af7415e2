# METADATA
# title: Pricing
# description: >-
#   The price of the requested model: the first pricing entry whose glob matches input.model,
#   else the default pricing.
package hexarch.lib.pricing

import data.hexarch.lib.compiled
import data.hexarch.lib.request

_matching := [entry |
	some entry in compiled.pricing_table
	glob.match(entry.model, null, request.model)
	is_number(entry.input_per_million_usd)
	is_number(entry.output_per_million_usd)
]

# METADATA
# title: Pricing
# description: input_per_million_usd and output_per_million_usd for the requested model.
pricing := {
	"input_per_million_usd": _matching[0].input_per_million_usd,
	"output_per_million_usd": _matching[0].output_per_million_usd,
} if {
	count(_matching) > 0
} else := compiled.default_pricing
