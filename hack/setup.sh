#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, the virtualenv with
# Flywheel installed, and the cached local control plane. Warm runs take seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
log() { echo "[setup] $*" >&2; }

# redis-server and postgresql for the real stores, prometheus (server and promtool) and
# prometheus-alertmanager for the monitoring and intake tests,
# runuser (util-linux) to run PostgreSQL as its own user, git and curl for the builds;
# buildah, debootstrap, podman with runc (and netavark, its network backend) to build and run the
# operator image without a Docker engine or a registry (hack/build-image.sh, tests/e2e/test_image.py).
DEBIAN_PACKAGES=(redis-server postgresql prometheus prometheus-alertmanager util-linux ca-certificates git curl python3-venv
                 buildah debootstrap podman runc netavark)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  ${SUDO} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; we start our own on free ports instead.
  ${SUDO} systemctl disable --now redis-server postgresql prometheus prometheus-alertmanager >/dev/null 2>&1 || true
fi

if ! command -v go >/dev/null; then
  log "Go >= 1.24 is required to build the control plane (this machine image ships it in /usr/local/go)"
  exit 1
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  log "creating virtualenv ${VENV}"
  python3 -m venv "${VENV}"
fi
stamp="${VENV}/.flywheel-installed"
# The exact versions of requirements/test.txt (hash-checked), then Flywheel itself on top.
fingerprint="$(cat pyproject.toml requirements/test.txt | sha256sum | cut -d' ' -f1)"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${fingerprint}" ]]; then
  log "installing Flywheel and its locked test dependencies into ${VENV}"
  "${VENV}/bin/pip" install -q --upgrade pip
  "${VENV}/bin/pip" install -q --require-hashes -r requirements/test.txt
  "${VENV}/bin/pip" install -q --no-deps -e .
  echo "${fingerprint}" >"${stamp}"
fi

bash hack/build-controlplane.sh >/dev/null
log "ready"
