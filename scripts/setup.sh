#!/usr/bin/env bash
# Installs everything Hexarch needs on a fresh machine, idempotently:
#   - a virtualenv in .venv with the project (editable) and its dev extras
#   - the pinned OPA release, built as a Go module into .tools/bin
#   - helm, the compose-go loader (scripts/compose-config), etcd and kube-apiserver, pinned in
#     scripts/versions.env and built into .tools/bin (scripts/build-k8s.sh for the last two)
#   - redis-server from Debian, when it is not on PATH
# Fast when everything is already there: each step checks before it works.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=versions.env
source scripts/versions.env

# each line carries the seconds since set-up began, so CI's output shows where the time went
log() { printf '[setup +%ss] %s\n' "$SECONDS" "$*" >&2; }

# --- Python -----------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.hexarch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing Python packages"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# --- OPA (pinned, built from the Go module proxy) -----------------------------
mkdir -p .tools/bin
opa_bin=.tools/bin/opa
# The version is read into a variable, not piped into `grep -q`: under pipefail, grep
# leaving early sends SIGPIPE to `opa version` and fails the check now and then.
opa_version() { [ -x "$opa_bin" ] && "$opa_bin" version 2>/dev/null | sed -n 's/^Version: //p'; }
if [ "$(opa_version || true)" != "${OPA_VERSION#v}" ]; then
  command -v go >/dev/null || { log "Go is required to build OPA ${OPA_VERSION}"; exit 1; }
  log "building OPA ${OPA_VERSION} (takes about two minutes the first time)"
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/opa@${OPA_VERSION}"
fi
built=$(opa_version || true)
[ "$built" = "${OPA_VERSION#v}" ] || { log "OPA at $opa_bin reports version '${built}', expected ${OPA_VERSION}"; exit 1; }

# --- helm and the compose-go loader (pinned, built from the Go module proxy) ------
# `go install` builds carry no release version string, so a stamp file beside each binary records
# the version it was built from; a changed pin in versions.env rebuilds.
go_tool() {  # go_tool NAME VERSION BUILD-COMMAND...
  local name=$1 version=$2; shift 2
  local stamp=".tools/bin/.${name}-version"
  if [ -x ".tools/bin/${name}" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then return; fi
  command -v go >/dev/null || { log "Go is required to build ${name} ${version}"; exit 1; }
  log "building ${name} ${version}"
  "$@"
  [ -x ".tools/bin/${name}" ] || { log "building ${name} did not produce .tools/bin/${name}"; exit 1; }
  echo "$version" >"$stamp"
}
build_helm() {
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install \
    -ldflags "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
}
build_compose_config() {
  local src=.tools/src/compose-config
  rm -rf "$src" && mkdir -p "$src"
  cp scripts/compose-config/main.go "$src/"
  printf 'module hexarch.local/compose-config\n\ngo 1.24\n\nrequire github.com/compose-spec/compose-go/v2 %s\n' \
    "$COMPOSE_GO_VERSION" >"$src/go.mod"
  (cd "$src" && GOFLAGS=-mod=mod go mod tidy && go build -o "$root/.tools/bin/compose-config" .)
}
go_tool helm "$HELM_VERSION" build_helm
go_tool compose-config "$COMPOSE_GO_VERSION" build_compose_config

# --- etcd and kube-apiserver, for tests/k8s (about 5 minutes the first time) -------
bash scripts/build-k8s.sh

# --- redis-server (Debian) ----------------------------------------------------
if ! command -v redis-server >/dev/null; then
  log "installing redis-server from Debian"
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); else sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server >/dev/null
fi
command -v redis-server >/dev/null || { log "redis-server is still missing"; exit 1; }

log "ready: OPA ${built}, helm ${HELM_VERSION}, compose-go ${COMPOSE_GO_VERSION}, kube-apiserver ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}, $(redis-server --version | cut -d' ' -f1-3), $(.venv/bin/python --version)"
