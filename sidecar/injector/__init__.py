"""`hexarch injector`: the Kubernetes admission webhook that adds the sidecar and OPA to pods."""
