package hexarch.custom.no_secrets

violations contains v if {
	contains(input.params.system, "BEGIN PRIVATE KEY")
	v := {"policy": "no_secrets", "rule": 0, "code": "secret_in_prompt", "message": "a private key in the system prompt", "action": "block", "status": 400}
}
