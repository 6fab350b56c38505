#!/usr/bin/env bash
# Builds the local control plane from the Go module proxy and caches it by version:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#   kwok, kwokctl                                                     (sigs.k8s.io/kwok)
# The first run takes 15-30 minutes on two cores; afterwards it only checks the cache.
# Prints the directory holding the binaries on its last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${HERE}/versions.env"

CACHE_ROOT="${FLYWHEEL_CACHE_DIR:-${HOME}/.cache/flywheel}"
BIN_DIR="${CACHE_ROOT}/controlplane/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}/bin"
BUILD_ROOT="${CACHE_ROOT}/build"
mkdir -p "${BIN_DIR}" "${BUILD_ROOT}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { echo "[controlplane] $*" >&2; }

# Only one build at a time: a second caller waits and then finds the cache filled.
exec 9>"${CACHE_ROOT}/controlplane.lock"
flock 9

command -v go >/dev/null || { log "Go is required (apt-get install golang or a Go toolchain >= 1.24)"; exit 1; }

have() { [[ -x "${BIN_DIR}/$1" ]]; }

build_kubernetes() {
  if have kube-apiserver && have kube-controller-manager && have kube-scheduler && have kubectl; then
    return
  fi
  local minor patch wrapper staging
  minor="$(cut -d. -f2 <<<"${KUBERNETES_VERSION}")"
  patch="$(cut -d. -f3 <<<"${KUBERNETES_VERSION}")"
  wrapper="${BUILD_ROOT}/kubernetes-${KUBERNETES_VERSION}"
  mkdir -p "${wrapper}"
  log "building Kubernetes ${KUBERNETES_VERSION} in ${wrapper}"
  # The published k8s.io/kubernetes go.mod points every staging module at ./staging,
  # which is ignored in a dependency: replace each with its published v0.MINOR.PATCH.
  local upstream_mod
  upstream_mod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  staging="$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "${upstream_mod}")"
  {
    echo "module flywheel.dev/hack/controlplane-kubernetes"
    echo
    echo "go 1.24.0"
    echo
    grep '^godebug' "${upstream_mod}" || true
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    echo "replace ("
    for module in ${staging}; do
      echo "	${module} => ${module} v0.${minor}.${patch}"
    done
    echo ")"
  } >"${wrapper}/go.mod"
  cat >"${wrapper}/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands we build so that go mod tidy keeps them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  (cd "${wrapper}" && go mod tidy)
  local stamp="" build_date
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
    stamp+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    stamp+=" -X ${pkg}.gitCommit=module-proxy-${KUBERNETES_VERSION}"
    stamp+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
  done
  local out="${wrapper}/out"
  mkdir -p "${out}"
  (cd "${wrapper}" && go build -trimpath -ldflags "-s -w ${stamp}" -o "${out}/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  mv "${out}"/* "${BIN_DIR}/"
}

build_etcd() {
  have etcd && return
  local wrapper="${BUILD_ROOT}/etcd-${ETCD_VERSION}"
  mkdir -p "${wrapper}"
  log "building etcd ${ETCD_VERSION} in ${wrapper}"
  # A module of its own: etcd's grpc/otel pins clash with those of Kubernetes.
  cat >"${wrapper}/go.mod" <<EOF
module flywheel.dev/hack/controlplane-etcd

go 1.23.0

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
  cat >"${wrapper}/tools.go" <<'EOF'
//go:build tools

// Package tools pins the etcd server command so that go mod tidy keeps it.
package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  (cd "${wrapper}" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "${wrapper}/etcd" go.etcd.io/etcd/server/v3)
  mv "${wrapper}/etcd" "${BIN_DIR}/etcd"
}

build_kwok() {
  have kwok && have kwokctl && return
  log "installing kwok and kwokctl ${KWOK_VERSION}"
  local gobin="${BUILD_ROOT}/kwok-${KWOK_VERSION}"
  mkdir -p "${gobin}"
  GOBIN="${gobin}" go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" "sigs.k8s.io/kwok/cmd/kwokctl@${KWOK_VERSION}"
  mv "${gobin}/kwok" "${gobin}/kwokctl" "${BIN_DIR}/"
}

build_kwok
build_etcd
build_kubernetes
log "control plane binaries ready"
echo "${BIN_DIR}"
