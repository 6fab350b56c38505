#!/usr/bin/env bash
# Build the operator image from the Dockerfile without a Docker engine (buildah) and without a
# registry: the base (`PYTHON_IMAGE`) is a Debian bookworm built here with debootstrap, cached as
# an OCI archive under ~/.cache/flywheel (keyed by its recipe), so only the first build pays for it
# and later builds only rebuild the layers whose inputs changed.
#   hack/build-image.sh [TAG]             (default localhost/flywheel-operator:dev)
#   hack/build-image.sh --podman-args     (print the storage flags podman needs to see the image)
# Idempotent; prints the image id on stdout (progress on stderr). Needs root, buildah, podman and
# debootstrap (hack/setup.sh installs them).
#
# Storage: a store of its own under the cache (overlay; FLYWHEEL_STORAGE_DRIVER=vfs where overlay
# cannot be mounted), so that the machine's default store and its driver are left alone.
# Isolation chroot: RUN steps need no OCI runtime. tests/e2e/test_image.py runs the image from the
# same store with podman.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FLYWHEEL_CACHE_DIR:-$HOME/.cache/flywheel}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DRIVER=${FLYWHEEL_STORAGE_DRIVER:-overlay}
STORAGE=(--root "$CACHE/containers/$DRIVER" --runroot "/run/flywheel-containers/$DRIVER" --storage-driver "$DRIVER")

if [[ ${1:-} == --podman-args ]]; then
  echo "${STORAGE[*]}"
  exit 0
fi
TAG=${1:-localhost/flywheel-operator:dev}

log() { echo "build-image: $*" >&2; }

build_base() {
  local rootfs
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/flywheel-base.XXXXXX")
  trap 'rm -rf "$rootfs"' RETURN
  # mktemp made it 0700, and the tarball's "." becomes the image's "/": uid 10001 could not
  # reach anything below it.
  chmod 0755 "$rootfs"
  log "debootstrap bookworm from $MIRROR"
  debootstrap --variant=minbase --include=python3.11,python3-venv,passwd,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >&2
  # What the official python image gives the Dockerfile: `python` on PATH, `python -m venv`.
  ln -sf python3.11 "$rootfs/usr/bin/python"
  # The trust anchors this machine adds (its egress proxy's CA): pip in the build stage reaches
  # PyPI through that proxy. Only the base built here carries them, never a released image.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >&2
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # The environment the official python image declares; an imported tarball has none, and the
  # Dockerfile extends PATH.
  tar -C "$rootfs" -c . | podman "${STORAGE[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >&2
  mkdir -p "$CACHE"
  podman "${STORAGE[@]}" save --format oci-archive -o "$ARCHIVE.partial" "$BASE" >&2
  mv "$ARCHIVE.partial" "$ARCHIVE"
}

# The cache key: the recipe above (its text, comments aside) and the trust anchors it copies in.
# A changed recipe gets a new tag and a new archive.
KEY=$({ declare -f build_base; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } \
  | sha256sum | cut -c1-12)
BASE=localhost/flywheel-base:bookworm-$KEY
ARCHIVE=$CACHE/flywheel-base-bookworm-$KEY.oci.tar

if podman "${STORAGE[@]}" image exists "$BASE"; then
  log "base $BASE present"
elif [[ -f $ARCHIVE ]]; then
  log "base from $ARCHIVE"
  podman "${STORAGE[@]}" load -i "$ARCHIVE" >&2
else
  build_base
fi

log "buildah bud -> $TAG"
buildah "${STORAGE[@]}" bud --isolation chroot --network host --layers --quiet \
  --build-arg PYTHON_IMAGE="$BASE" -t "$TAG" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
podman "${STORAGE[@]}" image inspect --format '{{.Id}}' "$TAG"
