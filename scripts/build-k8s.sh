#!/usr/bin/env bash
# Builds etcd and kube-apiserver from the Go module proxy into .tools/bin (used only by the
# Kubernetes tests). Each is built in a scratch module under .tools/src/ whose go.mod pins the
# release and replaces the staging modules with their published versions of the same release
# (k8s.io/kubernetes is not meant to be required as a module; its go.mod points them at ./staging).
# Idempotent: a binary that already reports the pinned version is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=versions.env
source scripts/versions.env
log() { printf '[build-k8s +%ss] %s\n' "$SECONDS" "$*" >&2; }
mkdir -p .tools/bin .tools/src
command -v go >/dev/null || { log "Go is required to build etcd and kube-apiserver"; exit 1; }

# --- etcd ---------------------------------------------------------------------
etcd_version() { [ -x .tools/bin/etcd ] && .tools/bin/etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'; }
if [ "$(etcd_version || true)" != "${ETCD_VERSION#v}" ]; then
  log "building etcd ${ETCD_VERSION} (about 30 s)"
  src=.tools/src/etcd
  rm -rf "$src" && mkdir -p "$src"
  {
    echo "module hexarch.local/etcd"
    echo
    echo "go 1.24"
    echo
    echo "require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
    echo
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
      echo "replace go.etcd.io/etcd/$m => go.etcd.io/etcd/$m ${ETCD_VERSION}"
    done
  } >"$src/go.mod"
  printf 'package main\n\nimport _ "go.etcd.io/etcd/server/v3"\n\nfunc main() {}\n' >"$src/tools.go"
  (cd "$src" && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true)
  (cd "$src" && GOFLAGS=-mod=mod go build -o "$root/.tools/bin/etcd.new" go.etcd.io/etcd/server/v3)
  mv .tools/bin/etcd.new .tools/bin/etcd
fi
[ "$(etcd_version || true)" = "${ETCD_VERSION#v}" ] || { log "etcd at .tools/bin/etcd is not ${ETCD_VERSION}"; exit 1; }

# --- kube-apiserver -----------------------------------------------------------
kas_version() { [ -x .tools/bin/kube-apiserver ] && .tools/bin/kube-apiserver --version 2>/dev/null | sed -n 's/^Kubernetes //p'; }
if [ "$(kas_version || true)" != "${KUBERNETES_VERSION}" ]; then
  log "building kube-apiserver ${KUBERNETES_VERSION} (about 5 minutes on 2 cores)"
  src=.tools/src/kube-apiserver
  rm -rf "$src" && mkdir -p "$src"
  staging_version="v0.${KUBERNETES_VERSION#v1.}"
  gomod=$(cd "$src" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes ${KUBERNETES_VERSION}"; exit 1; }
  {
    echo "module hexarch.local/kube-apiserver"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    # every "k8s.io/<x> => ./staging/src/k8s.io/<x>" of kubernetes' own go.mod
    sed -n 's#^\s*\(replace \)\?\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\2#p' "$gomod" | sort -u |
      while read -r m; do echo "replace $m => $m ${staging_version}"; done
  } >"$src/go.mod"
  n=$(grep -c '^replace' "$src/go.mod")
  [ "$n" -gt 20 ] || { log "found only $n staging modules in kubernetes' go.mod"; exit 1; }
  printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' >"$src/tools.go"
  # The release version is stamped the way Kubernetes' own build does (hack/lib/version.sh).
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
  (cd "$src" && GOFLAGS=-mod=mod go build -ldflags "$ldflags" -o "$root/.tools/bin/kube-apiserver.new" \
    k8s.io/kubernetes/cmd/kube-apiserver)
  mv .tools/bin/kube-apiserver.new .tools/bin/kube-apiserver
fi
[ "$(kas_version || true)" = "${KUBERNETES_VERSION}" ] || { log "kube-apiserver at .tools/bin/kube-apiserver is not ${KUBERNETES_VERSION}"; exit 1; }
log "ready: etcd ${ETCD_VERSION}, kube-apiserver ${KUBERNETES_VERSION}"
