"""Hexarch sidecar: asks OPA for a decision on every model call, keeps exact counters in Redis."""
