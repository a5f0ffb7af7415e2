# METADATA
# title: Feature flags
# description: >-
#   A feature rule applies when input.feature names its feature, or when the input has no feature
#   field at all (null says "no feature"; a missing field must not let a request past a flag). A
#   feature that is not enabled is feature_disabled; one that requires approval is
#   feature_requires_approval unless the principal is an approver (by user id or role). Both 403.
package hexarch.lib.features

import data.hexarch.lib.applies
import data.hexarch.lib.request

_active := [rule |
	some rule in data.hexarch.config.features
	_concerns(rule)
	applies.active(rule)
]

_concerns(rule) if rule.feature == input.feature

_concerns(_) if not _feature_stated

# Any value, null included, states the feature; only an absent field leaves it unknown.
_feature_stated if input.feature == input.feature

# METADATA
# title: Feature findings
# description: Findings with codes feature_disabled and feature_requires_approval (403).
findings := set() if {
	# No applying rule (the common case): skip every check body.
	count(_active) == 0
} else := _findings

_findings contains applies.finding(rule, "feature_disabled", 403, message) if {
	some rule in _active
	not enabled(rule)
	message := sprintf("feature %q is disabled", [rule.feature])
}

_findings contains applies.finding(rule, "feature_requires_approval", 403, message) if {
	some rule in _active
	rule.requires_approval == true
	not approver(rule)
	message := sprintf("feature %q requires approval; %v is not an approver", [rule.feature, _who])
}

# METADATA
# title: Enabled
# description: True only when the feature's enabled flag is exactly true (missing means disabled).
enabled(rule) if rule.enabled == true

# METADATA
# title: Approver
# description: True when the principal is an approver by user id or by role.
approver(rule) if request.principal_id in rule.approver_users

approver(rule) if {
	some role in request.principal_roles
	role in rule.approver_roles
}

_who := sprintf("principal %q", [request.principal_id]) if {
	request.principal_id
} else := "an unidentified principal"
