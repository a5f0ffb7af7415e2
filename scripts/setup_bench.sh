#!/usr/bin/env bash
# Bench-only tools, idempotently (`make bench` runs it; `make test` does not need it):
#   - the LiteLLM proxy, pinned in versions.env, in its own virtualenv (.tools/litellm-venv) so its
#     many dependencies never meet the project's
#   - matplotlib in .venv (the `bench` extra) for the latency plot
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=versions.env
source scripts/versions.env
log() { printf '[setup-bench] %s\n' "$*" >&2; }

venv=.tools/litellm-venv
have=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("litellm"))' 2>/dev/null || true)
if [ "$have" != "$LITELLM_VERSION" ]; then
  log "installing litellm[proxy]==${LITELLM_VERSION} into $venv (a few minutes the first time)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "litellm[proxy]==${LITELLM_VERSION}"
fi
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  log "installing the bench extra (matplotlib) into .venv"
  .venv/bin/python -m pip install -q -e '.[bench]'
fi
log "ready: litellm $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("litellm"))')"
