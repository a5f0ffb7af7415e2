# METADATA
# title: Compiled configuration
# description: >-
#   Safe, defaulted reads of data.hexarch.config (the document the compiler's lower stage writes).
#   Every other package reads the configuration through these rules, so a missing or malformed
#   section degrades to the strictest sensible default instead of an undefined decision.
package hexarch.lib.compiled

# METADATA
# title: Configuration present
# description: True when data.hexarch.config is an object (a bundle without it fails closed).
present if is_object(data.hexarch.config)

# METADATA
# title: Configuration
# description: data.hexarch.config, or an empty object when it is missing.
config := data.hexarch.config if {
	present
} else := {}

# Each list is read straight from data (not through `config`, which would materialise the whole
# document on every request) and used as it is: the compiler writes only objects into them.
_entries(name) := data.hexarch.config[name] if {
	is_array(data.hexarch.config[name])
} else := []

# METADATA
# title: Rate limits
# description: Compiled request-rate limit entries.
rate_limits := _entries("rate_limits")

# METADATA
# title: Token limits
# description: Compiled token limit entries (window_seconds 0 is per request).
token_limits := _entries("token_limits")

# METADATA
# title: Budgets
# description: Compiled USD budget entries (limits in micro-USD).
budgets := _entries("budgets")

# METADATA
# title: Parameter bounds
# description: Compiled parameter bound entries.
param_bounds := _entries("param_bounds")

# METADATA
# title: Model rules
# description: Compiled model allow/deny list entries.
model_rules := _entries("model_rules")

# METADATA
# title: Time windows
# description: Compiled time window entries (minutes after midnight, lower-case day names).
time_windows := _entries("time_windows")

# METADATA
# title: Access rules
# description: Compiled access control entries.
access_rules := _entries("access_rules")

# METADATA
# title: Confirmations
# description: Compiled confirmation-required entries.
confirmations := _entries("confirmations")

# METADATA
# title: Features
# description: Compiled feature flag entries.
features := _entries("features")

# METADATA
# title: Pricing table
# description: Compiled per-model pricing entries, in file order (first match wins).
pricing_table := _entries("pricing")

# METADATA
# title: Enforcement mode
# description: strict, warn or monitor; anything else (or nothing) is strict.
enforcement := mode if {
	mode := data.hexarch.config.enforcement
	mode in {"strict", "warn", "monitor"}
} else := "strict"

# METADATA
# title: Timezone
# description: IANA timezone in which time windows are read; UTC when absent.
timezone := tz if {
	tz := data.hexarch.config.timezone
	is_string(tz)
} else := "UTC"

# METADATA
# title: Default output reservation
# description: Tokens reserved for the output when neither the request nor a per-request limit says.
default_max_output_tokens := tokens if {
	tokens := data.hexarch.config.default_max_output_tokens
	is_number(tokens)
	tokens >= 0
} else := 1024

# METADATA
# title: Default pricing
# description: Price for models no pricing entry matches (0.5 / 1.5 USD per million when absent).
default_pricing := {
	"input_per_million_usd": price.input_per_million_usd,
	"output_per_million_usd": price.output_per_million_usd,
} if {
	price := data.hexarch.config.default_pricing
	is_number(price.input_per_million_usd)
	is_number(price.output_per_million_usd)
} else := {"input_per_million_usd": 0.5, "output_per_million_usd": 1.5}
