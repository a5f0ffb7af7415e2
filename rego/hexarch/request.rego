# METADATA
# title: Request view
# description: >-
#   Typed reads of the input document. A field of the wrong type counts as missing, and every
#   consumer treats missing as "the rule applies" or "the check fails", never as a pass.
package hexarch.lib.request

# METADATA
# title: Resources known
# description: True when input.resources is a list; otherwise every rule applies.
resources_known if is_array(input.resources)

# METADATA
# title: Resource set
# description: The request's resources as a set, for constant-time membership tests.
resource_set := {resource | some resource in input.resources; is_string(resource)}

# METADATA
# title: Operation known
# description: True when input.operation is a string; otherwise every rule applies.
operation_known if is_string(input.operation)

# METADATA
# title: Operation
# description: The request's operation, when known.
operation := input.operation if operation_known

# METADATA
# title: Confirmed
# description: True only when input.confirmed is exactly true.
confirmed if input.confirmed == true

# METADATA
# title: Model
# description: The requested model name, when it is a string.
model := input.model if is_string(input.model)

# METADATA
# title: Resource type
# description: The resource type of the operation, when it is a non-empty string.
resource_type := input.resource_type if {
	is_string(input.resource_type)
	input.resource_type != ""
}

# METADATA
# title: Feature
# description: The feature the request uses, when it is a string.
feature := input.feature if is_string(input.feature)

# METADATA
# title: Principal id
# description: The principal's id, when it is a non-empty string.
principal_id := input.principal.id if {
	is_string(input.principal.id)
	input.principal.id != ""
}

# METADATA
# title: Resource owner
# description: >-
#   The id of the principal owning the resource the request names (input.resource_owner), when it
#   is a non-empty string; @self access rules compare it with the principal id.
resource_owner := input.resource_owner if {
	is_string(input.resource_owner)
	input.resource_owner != ""
}

# METADATA
# title: Principal roles
# description: The principal's roles (strings only) as a set.
principal_roles := {role | some role in input.principal.roles; is_string(role)}

# METADATA
# title: Principal counter subject
# description: The principal id, or "anonymous", for principal-scoped limits.
principal_subject := principal_id if {
	principal_id
} else := "anonymous"

# METADATA
# title: Team counter subject
# description: The principal's team, or "anonymous", for team-scoped limits.
team_subject := input.principal.team if {
	is_string(input.principal.team)
	input.principal.team != ""
} else := "anonymous"

# METADATA
# title: Parameters
# description: input.params when it is an object, else an empty object.
params := input.params if {
	is_object(input.params)
} else := {}

# METADATA
# title: Prompt tokens
# description: Estimated prompt tokens (rounded up); 0 when missing or invalid.
prompt_tokens := ceil(input.estimate.prompt_tokens) if {
	is_number(input.estimate.prompt_tokens)
	input.estimate.prompt_tokens >= 0
} else := 0

# METADATA
# title: Requested output tokens
# description: input.estimate.max_output_tokens (rounded up), when it is a non-negative number.
max_output_tokens := ceil(input.estimate.max_output_tokens) if {
	is_number(input.estimate.max_output_tokens)
	input.estimate.max_output_tokens >= 0
}
