# METADATA
# title: Findings to violations and warnings
# description: >-
#   Applies each rule's action to the findings of every check: block gives a violation, warn a
#   warning (same code and status, action warn), require_confirmation a 428
#   confirmation_required violation unless input.confirmed is true. Enforcement modes are applied
#   later, in package hexarch.
package hexarch.lib.findings

import data.hexarch.lib.access
import data.hexarch.lib.confirmations
import data.hexarch.lib.custom
import data.hexarch.lib.features
import data.hexarch.lib.models
import data.hexarch.lib.params
import data.hexarch.lib.request
import data.hexarch.lib.time_windows

# METADATA
# title: All findings
# description: The union of the findings of every check package.
all := ((((params.findings | models.findings) | time_windows.findings) | access.findings) | confirmations.findings) | features.findings

# METADATA
# title: Violations
# description: Findings whose action blocks, plus custom policy violations (strict semantics).
violations := custom.violations if {
	# Nothing found (the common case): only custom policies can add violations.
	count(all) == 0
} else := _blocking | custom.violations

_blocking contains finding if {
	some finding in all
	finding.action == "block"
}

_blocking contains object.union(finding, confirmation) if {
	some finding in all
	finding.action == "require_confirmation"
	not request.confirmed
	confirmation := {
		"code": "confirmation_required",
		"status": 428,
		"message": _confirmation_message(finding),
	}
}

# METADATA
# title: Warnings
# description: Findings whose rule action is warn.
warnings := set() if {
	count(all) == 0
} else := _warnings

_warnings contains finding if {
	some finding in all
	finding.action == "warn"
}

_confirmation_message(finding) := finding.message if {
	finding.code == "confirmation_required"
} else := sprintf("%v; confirm the request to proceed", [finding.message])
