"""Examples that run against a Hexarch sidecar (`examples.tinyllama_guardrails`)."""
