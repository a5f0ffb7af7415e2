# The two commands of the README:
#   make run   - set up (idempotent) and start the local stack: Redis, OPA, the sidecar and the demo model
#   make test  - set up (idempotent) and run the whole suite: ruff, mypy, opa fmt/check/test, pytest
VENV := .venv/bin
POLICY ?= examples/hexarch.yaml
PORT ?= 8080
OPA := .tools/bin/opa
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup run test lint rego-check pytest bench bench-decision

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/hexarch up --policy $(POLICY) --demo --port $(PORT)

lint:
	$(VENV)/ruff check compiler sidecar tests bench hexarch_guardrails examples
	$(VENV)/ruff format --check compiler sidecar tests bench hexarch_guardrails examples
	$(VENV)/mypy

rego-check:
	$(OPA) fmt --fail --list rego
	$(OPA) check --strict rego
	$(VENV)/python scripts/rego_coverage.py --min 90 rego

pytest:
	$(VENV)/pytest -q

test: setup lint rego-check pytest

# The side-by-side benchmark (docs/performance.md): installs the pinned LiteLLM proxy and matplotlib
# first, writes bench/results/bench.json and bench.png. BENCH_ARGS="--soak" adds the 5-minute soak.
bench: setup
	@bash scripts/setup_bench.sh
	$(VENV)/python -m bench.latency $(BENCH_ARGS)

# What one decision costs OPA (`opa bench`, both store modes; docs/performance.md).
bench-decision: setup
	$(VENV)/python -m bench.opa_decision
